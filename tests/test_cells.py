"""Scanned recurrent layers against a step-by-step NumPy reference, and their gradients
against finite differences."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from training.cells import CELLS
from training.models import RecurrentLayer

B, T, D, H = 3, 7, 5, 4


def sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def reference_step(cell, p, h, c, x):
  """The textbook equations, one time step, written independently of training.cells."""
  if cell == "rnn":
    return np.tanh(x @ p["W_x"] + p["b"] + h @ p["W_h"]), c
  if cell == "lstm":
    z = x @ p["W_x"] + p["b"] + h @ p["W_h"]
    i, f, g, o = z[:, :H], z[:, H:2 * H], z[:, 2 * H:3 * H], z[:, 3 * H:]
    c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
    return sigmoid(o) * np.tanh(c), c
  xp, hp = x @ p["W_x"] + p["b"], h @ p["W_h"] + p["b_h"]
  r = sigmoid(xp[:, :H] + hp[:, :H])
  z = sigmoid(xp[:, H:2 * H] + hp[:, H:2 * H])
  n = np.tanh(xp[:, 2 * H:] + r * hp[:, 2 * H:])
  return (1 - z) * n + z * h, c


def init_layer(cell, seed=0):
  layer = RecurrentLayer(cell, H)
  carry = jnp.zeros((CELLS[cell].num_states, B, H))
  inputs = jax.random.normal(jax.random.PRNGKey(seed + 1), (B, T, D))
  mask = jnp.ones((B, T), bool)
  params = layer.init(jax.random.PRNGKey(seed), inputs, mask, carry)["params"]
  # Random biases, so that the test also checks where each bias enters.
  params = {k: (v + jax.random.normal(jax.random.PRNGKey(seed + 2), v.shape) if k.startswith("b") else v)
            for k, v in params.items()}
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
      outputs, final = layer.apply({"params": params}, inputs, mask, jnp.zeros(carry.shape, jnp.float64))
      return jnp.sum(jnp.sin(outputs)) + jnp.sum(final ** 2)

    check_grads(loss, (params64, jnp.asarray(inputs, jnp.float64)), order=1, modes=["rev"],
                eps=1e-6, atol=1e-6, rtol=1e-6)


def test_lstm_starts_with_forget_bias_one_and_others_zero():
  _, params, _, _ = init_layer("lstm")
  bias = RecurrentLayer("lstm", H).init(jax.random.PRNGKey(0), jnp.zeros((1, 1, D)), jnp.ones((1, 1), bool),
                                        jnp.zeros((2, 1, H)))["params"]["b"]
  np.testing.assert_array_equal(bias[H:2 * H], 1.0)
  np.testing.assert_array_equal(jnp.concatenate([bias[:H], bias[2 * H:]]), 0.0)
  assert params["W_h"].shape == (H, 4 * H) and params["W_x"].shape == (D, 4 * H)  # one fused matmul


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_masked_steps_leave_state_and_output_untouched(cell):
  layer, params, inputs, carry = init_layer(cell)
  lengths = jnp.array([T, 3, 0])
  mask = jnp.arange(T)[None, :] < lengths[:, None]
  outputs, final = layer.apply({"params": params}, inputs, mask, carry)
  for row, length in enumerate(lengths.tolist()):
    alone, alone_final = layer.apply({"params": params}, inputs[row:row + 1, :length],
                                     jnp.ones((1, length), bool), carry[:, row:row + 1])
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
