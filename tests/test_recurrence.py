"""The hand-written backward pass (`training.model.recurrence`) against autodiff of the reference scan
and against finite differences: every cell, full and padded batches, resets (packed rows) and a
carried state, so that the fast layer changes nothing but speed."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from training.model.cells import CELLS
from training.model.models import RecurrentLayer

pytestmark = pytest.mark.newest_jax  # also run on Python 3.13's jax (.ci/run)

B, T, D, H = 3, 9, 5, 4
CASES = {
  "full": (jnp.ones((B, T), bool), None),
  "padded": (jnp.arange(T)[None, :] < jnp.array([T, 4, 0])[:, None], None),
  "packed": (
    jnp.arange(T)[None, :] < jnp.array([T, 7, 5])[:, None],
    jnp.zeros((B, T), bool).at[0, 3].set(True).at[1, 2].set(True).at[1, 5].set(True),
  ),
}


def setup(cell, seed=0, dtype=jnp.float32):
  inputs = jax.random.normal(jax.random.PRNGKey(seed), (B, T, D), dtype)
  carry = jax.random.normal(jax.random.PRNGKey(seed + 1), (CELLS[cell].num_states, B, H), dtype)
  params = RecurrentLayer(cell, H).init(
    jax.random.PRNGKey(seed + 2), inputs, jnp.ones((B, T), bool), carry
  )["params"]
  # Random biases, so that each bias's gradient is checked where it enters.
  params = {
    k: v + jax.random.normal(jax.random.PRNGKey(seed + 3), v.shape, dtype)
    if k.startswith("b")
    else v.astype(dtype)
    for k, v in params.items()
  }
  return params, inputs, carry


def loss_fn(cell, backward, mask, resets, remat=False):
  layer = RecurrentLayer(cell, H, backward=backward, remat=remat)

  def loss(params, inputs, carry):
    outputs, final = layer.apply({"params": params}, inputs, mask, carry, resets)
    # Weights that differ by position and unit, so that every output's gradient matters.
    weights = jnp.sin(jnp.arange(outputs.size, dtype=outputs.dtype)).reshape(outputs.shape)
    return jnp.sum(weights * jnp.tanh(outputs)) + jnp.sum(jnp.cos(final))

  return loss


@pytest.mark.parametrize("remat", [False, True])
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_fused_backward_equals_autodiff(cell, case, remat):
  mask, resets = CASES[case]
  params, inputs, carry = setup(cell)
  fused = jax.value_and_grad(loss_fn(cell, "fused", mask, resets, remat), argnums=(0, 1, 2))(
    params, inputs, carry
  )
  reference = jax.value_and_grad(loss_fn(cell, "autodiff", mask, resets), argnums=(0, 1, 2))(
    params, inputs, carry
  )
  np.testing.assert_allclose(fused[0], reference[0], rtol=1e-6)
  for got, want in zip(jax.tree.leaves(fused[1]), jax.tree.leaves(reference[1])):
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)
  # Some gradient reaches every parameter, the inputs and the carry (no silent zeros).
  assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(fused[1]))


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_fused_backward_matches_finite_differences(cell, case):
  mask, resets = CASES[case]
  with jax.enable_x64(True):
    params, inputs, carry = setup(cell, seed=4, dtype=jnp.float64)
    check_grads(
      loss_fn(cell, "fused", mask, resets),
      (params, inputs, carry),
      order=1,
      modes=["rev"],
      eps=1e-6,
      atol=1e-6,
      rtol=1e-6,
    )


def test_full_batches_take_the_path_without_masking_and_agree_with_the_masked_one():
  from training.model.recurrence import scan_layer

  params, inputs, carry = setup("lstm")
  x_proj = CELLS["lstm"].split(jnp.swapaxes(inputs @ params["W_x"] + params["b"], 0, 1))
  recurrent = {"W_h": params["W_h"]}
  mask = jnp.ones((T, B), bool)

  def loss(run_mask):
    return lambda r, x, c: jnp.sum(
      jnp.sin(scan_layer("lstm", 1, False, r, x, run_mask, None, c)[0])
    )

  unmasked = jax.grad(loss(None), argnums=(0, 1, 2))(recurrent, x_proj, carry)
  masked = jax.grad(loss(mask), argnums=(0, 1, 2))(recurrent, x_proj, carry)
  for a, b in zip(jax.tree.leaves(unmasked), jax.tree.leaves(masked)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  # The fast path really drops the masking: its program has fewer select operations.
  count = lambda run_mask: str(
    jax.make_jaxpr(jax.grad(loss(run_mask)))(recurrent, x_proj, carry)
  ).count("select_n")
  assert count(None) < count(mask)


def test_remat_keeps_less_for_the_backward_pass():
  """Compiled memory of one layer's gradient over a long window, with and without --remat."""
  inputs = jnp.ones((4, 512, 8))
  mask = jnp.ones((4, 512), bool)
  carry = jnp.zeros((2, 4, 64))
  params = RecurrentLayer("lstm", 64).init(jax.random.PRNGKey(0), inputs, mask, carry)["params"]

  def temp_bytes(remat):
    layer = RecurrentLayer("lstm", 64, remat=remat)
    grad = jax.jit(jax.grad(lambda p: jnp.sum(layer.apply({"params": p}, inputs, mask, carry)[0])))
    return grad.lower(params).compile().memory_analysis().temp_size_in_bytes

  assert temp_bytes(True) < 0.8 * temp_bytes(False)
