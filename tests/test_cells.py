"""Scanned recurrent layers against a step-by-step NumPy reference, and their gradients
against finite differences."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from training.model.cells import CELLS
from training.model.models import RecurrentLayer

pytestmark = pytest.mark.newest_jax  # also run on Python 3.13's jax (.ci/run)

B, T, D, H = 3, 7, 5, 4


def sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def reference_step(cell, p, h, c, x):
  """The textbook equations, one time step, written independently of training.model.cells."""
  if cell == "rnn":
    return np.tanh(x @ p["W_x"] + p["b"] + h @ p["W_h"]), c
  if cell == "lstm":
    z = x @ p["W_x"] + p["b"] + h @ p["W_h"]
    i, f, g, o = z[:, :H], z[:, H : 2 * H], z[:, 2 * H : 3 * H], z[:, 3 * H :]
    c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
    return sigmoid(o) * np.tanh(c), c
  xp, hp = x @ p["W_x"] + p["b"], h @ p["W_h"] + p["b_h"]
  r = sigmoid(xp[:, :H] + hp[:, :H])
  z = sigmoid(xp[:, H : 2 * H] + hp[:, H : 2 * H])
  n = np.tanh(xp[:, 2 * H :] + r * hp[:, 2 * H :])
  return (1 - z) * n + z * h, c


def init_layer(cell, seed=0):
  layer = RecurrentLayer(cell, H)
  carry = jnp.zeros((CELLS[cell].num_states, B, H))
  inputs = jax.random.normal(jax.random.PRNGKey(seed + 1), (B, T, D))
  mask = jnp.ones((B, T), bool)
  params = layer.init(jax.random.PRNGKey(seed), inputs, mask, carry)["params"]
  # Random biases, so that the test also checks where each bias enters.
  params = {
    k: (v + jax.random.normal(jax.random.PRNGKey(seed + 2), v.shape) if k.startswith("b") else v)
    for k, v in params.items()
  }
  return layer, params, inputs, carry


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_scanned_layer_matches_step_by_step_reference(cell):
  layer, params, inputs, carry = init_layer(cell)
  mask = jnp.ones((B, T), bool)
  outputs, final = layer.apply({"params": params}, inputs, mask, carry)

  p = {k: np.asarray(v, np.float64) for k, v in params.items()}
  x = np.asarray(inputs, np.float64)
  h, c = np.zeros((B, H)), np.zeros((B, H))
  expected = []
  for t in range(T):
    h, c = reference_step(cell, p, h, c, x[:, t])
    expected.append(h)
  np.testing.assert_allclose(outputs, np.stack(expected, 1), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(final[0], h, rtol=1e-5, atol=1e-5)
  if cell == "lstm":
    np.testing.assert_allclose(final[1], c, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_gradients_match_finite_differences(cell):
  layer, params, inputs, carry = init_layer(cell, seed=3)
  mask = jnp.arange(T)[None, :] < jnp.array([T, 4, 1])[:, None]  # masking is differentiated too
  with jax.enable_x64(True):
    params64 = jax.tree.map(lambda v: jnp.asarray(v, jnp.float64), params)

    def loss(params, inputs):
      outputs, final = layer.apply(
        {"params": params}, inputs, mask, jnp.zeros(carry.shape, jnp.float64)
      )
      return jnp.sum(jnp.sin(outputs)) + jnp.sum(final**2)

    check_grads(
      loss,
      (params64, jnp.asarray(inputs, jnp.float64)),
      order=1,
      modes=["rev"],
      eps=1e-6,
      atol=1e-6,
      rtol=1e-6,
    )


def test_lstm_starts_with_forget_bias_one_and_others_zero():
  _, params, _, _ = init_layer("lstm")
  bias = RecurrentLayer("lstm", H).init(
    jax.random.PRNGKey(0), jnp.zeros((1, 1, D)), jnp.ones((1, 1), bool), jnp.zeros((2, 1, H))
  )["params"]["b"]
  np.testing.assert_array_equal(bias[H : 2 * H], 1.0)
  np.testing.assert_array_equal(jnp.concatenate([bias[:H], bias[2 * H :]]), 0.0)
  assert params["W_h"].shape == (H, 4 * H) and params["W_x"].shape == (D, 4 * H)  # one fused matmul


CHRONO = 100  # --chrono_init: dependencies up to 100 steps


def chrono_layer_params(cell, hidden_size, seed=0):
  num_states = CELLS[cell].num_states
  layer = RecurrentLayer(cell, hidden_size, chrono_max_length=CHRONO)
  return layer.init(
    jax.random.PRNGKey(seed),
    jnp.zeros((1, 1, D)),
    jnp.ones((1, 1), bool),
    jnp.zeros((num_states, 1, hidden_size)),
  )["params"]


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_chrono_initialisation_spreads_the_keep_gates_over_time_scales(cell):
  """Tallec & Ollivier 2018: the keep gate's bias log(u), u ~ U[1, N - 1]; the LSTM's input gate
  -log(u); every other bias 0."""
  wide = 512
  params = chrono_layer_params(cell, wide)
  gates = np.split(np.asarray(params["b"]), CELLS[cell].num_gates)
  keep = gates[1]  # the LSTM's forget gate (i, f, g, o); the GRU's update gate z (r, z, n)
  u = np.exp(keep)  # the unit keeps u / (1 + u) of its state per step: a memory of about u steps
  assert 1.0 - 1e-5 <= u.min() and u.max() <= CHRONO - 1 + 1e-3
  # Spread over the whole range: uniform on [1, 99] has mean 50 and quartiles 25.5 and 74.5
  # (the mean of 512 draws is within 1.3 of 50 with a standard deviation of 1.25).
  assert abs(u.mean() - CHRONO / 2) < 6
  np.testing.assert_allclose(np.percentile(u, [25, 75]), [25.5, 74.5], atol=8)
  if cell == "lstm":
    np.testing.assert_array_equal(gates[0], -keep)  # a unit that keeps much writes little
    np.testing.assert_array_equal(np.concatenate(gates[2:]), 0.0)
  else:
    np.testing.assert_array_equal(np.concatenate([gates[0], gates[2]]), 0.0)
    np.testing.assert_array_equal(params["b_h"], 0.0)
  # Drawn from the layer's parameter key: the same seed the same biases, another seed others.
  np.testing.assert_array_equal(chrono_layer_params(cell, wide)["b"], params["b"])
  assert not np.array_equal(chrono_layer_params(cell, wide, seed=1)["b"], params["b"])


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_chrono_initialisation_lets_the_gradient_reach_forty_steps_back(cell):
  """What it is for: with constant biases the gradient of the last output with respect to an
  input 40 steps back is 1e-5 (LSTM) or 1e-9 (GRU) of the last step's at initialisation; drawn
  for dependencies up to 100 steps it is about a tenth."""
  steps, wide, num_states = 41, 64, CELLS[cell].num_states
  inputs = jax.random.normal(jax.random.PRNGKey(1), (8, steps, D))
  mask, carry = jnp.ones((8, steps), bool), jnp.zeros((num_states, 8, wide))

  def gradient_ratio(chrono_max_length):
    layer = RecurrentLayer(cell, wide, chrono_max_length=chrono_max_length)
    params = layer.init(jax.random.PRNGKey(0), inputs, mask, carry)["params"]
    last_output = lambda x: jnp.sum(layer.apply({"params": params}, x, mask, carry)[0][:, -1])
    norms = jnp.linalg.norm(jax.grad(last_output)(inputs), axis=-1).mean(axis=0)  # per step
    return float(norms[0] / norms[-1])

  constant, chrono = gradient_ratio(0), gradient_ratio(CHRONO)
  assert constant < 1e-4 and chrono > 1e-2, (constant, chrono)


def test_chrono_initialisation_needs_gates():
  with pytest.raises(ValueError, match="needs a gated cell"):
    chrono_layer_params("rnn", H)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_masked_steps_leave_state_and_output_untouched(cell):
  layer, params, inputs, carry = init_layer(cell)
  lengths = jnp.array([T, 3, 0])
  mask = jnp.arange(T)[None, :] < lengths[:, None]
  outputs, final = layer.apply({"params": params}, inputs, mask, carry)
  for row, length in enumerate(lengths.tolist()):
    alone, alone_final = layer.apply(
      {"params": params},
      inputs[row : row + 1, :length],
      jnp.ones((1, length), bool),
      carry[:, row : row + 1],
    )
    np.testing.assert_allclose(outputs[row, :length], alone[0], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(outputs[row, length:], 0.0)
    np.testing.assert_allclose(final[:, row], alone_final[:, 0], rtol=1e-6, atol=1e-6)


def test_reset_restarts_the_state_inside_a_row():
  layer, params, inputs, carry = init_layer("lstm")
  mask = jnp.ones((B, T), bool)
  resets = jnp.zeros((B, T), bool).at[:, 4].set(True)
  outputs, _ = layer.apply({"params": params}, inputs, mask, carry, resets)
  fresh, _ = layer.apply({"params": params}, inputs[:, 4:], mask[:, 4:], carry)
  np.testing.assert_allclose(outputs[:, 4:], fresh, rtol=1e-6, atol=1e-6)
