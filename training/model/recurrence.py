"""A recurrent layer's time loop with a hand-written backward pass.

`jax.grad` of a `lax.scan` keeps the gradient of every loop-invariant input in the backward
loop's carry: each backward step multiplies [H, B] x [B, G*H] into a G*H x H accumulator for
`W_h` and reads and writes it. Fused RNN libraries (oneDNN, cuDNN) do the opposite, and so does
this module: the backward loop only propagates the state's gradient and stores each step's
gradient at the recurrent projection `h @ W_h`; the weight and bias gradients are then one large
matmul (and one sum) over all T x B rows, after the loop. The input projection `x @ W_x + b` is
outside the loop already (`models.RecurrentLayer`), so its gradients are one matmul each too.

Each backward step recomputes the cell's gate arithmetic from the saved state and recurrent
projection (`jax.vjp` of `Cell.core`) instead of saving every gate: it costs a few elementwise
operations and works unchanged for every cell.

`scan_layer` computes exactly what the autodiff scan computes (masks and resets included) and
its gradients equal autodiff's (tests/test_recurrence.py).
"""

import functools

import jax
import jax.numpy as jnp

from training.model.cells import CELLS


def _recurrent_gates(cell, recurrent, h):
  """h @ W_h (+ b_h), split by gate."""
  h_proj = h @ recurrent["W_h"]
  return cell.split(h_proj + recurrent["b_h"] if cell.has_recurrent_bias else h_proj)


def _forward_step(cell, recurrent, remat, state, x):
  """One masked, resettable step; returns (new state, (output, residuals for backward))."""
  x_gates, mask_t, reset_t = x
  if reset_t is not None:
    state = tuple(jnp.where(reset_t[:, None], 0.0, s) for s in state)
  h_gates = _recurrent_gates(cell, recurrent, state[0])
  updated = cell.core(state, x_gates, h_gates)
  if mask_t is not None:
    new_state = tuple(jnp.where(mask_t[:, None], u, s) for u, s in zip(updated, state))
    output = jnp.where(mask_t[:, None], new_state[0], 0.0)
  else:
    new_state, output = updated, updated[0]
  # With remat only the state is kept: the backward pass recomputes h @ W_h (one matmul per
  # step) instead of holding G*H numbers per row and step.
  return new_state, (output, (state, None if remat else h_gates))


def _run(cell_name, unroll, remat, recurrent, x_gates, mask, resets, carry):
  cell = CELLS[cell_name]
  final, (outputs, residuals) = jax.lax.scan(
    functools.partial(_forward_step, cell, recurrent, remat),
    tuple(carry),
    (tuple(x_gates), mask, resets),
    unroll=unroll,
  )
  return (outputs, jnp.stack(final)), residuals


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def scan_layer(
  cell_name: str, unroll: int, remat: bool, recurrent: dict, x_gates, mask, resets, carry
):
  """Runs a recurrent layer over time (time-major).

  recurrent: {"W_h": [H, G*H]} (+ "b_h" for the GRU); x_gates: the input projection with its
  bias, split by gate (a tuple of G arrays [T, B, H]; see `Cell.core`); mask [T, B] bool or None
  (None: every step is real, the fast path that skips the masking); resets [T, B] bool or None;
  carry [S, B, H]. Returns (outputs [T, B, H], final carry [S, B, H]). Masked steps keep the
  state and output zeros; a reset zeroes the state before its step. `remat`: keep less for the
  backward pass (the states only) and recompute the rest there.
  """
  return _run(cell_name, unroll, remat, recurrent, x_gates, mask, resets, carry)[0]


def _scan_layer_fwd(cell_name, unroll, remat, recurrent, x_gates, mask, resets, carry):
  outputs, residuals = _run(cell_name, unroll, remat, recurrent, x_gates, mask, resets, carry)
  return outputs, (recurrent, tuple(x_gates), mask, resets, residuals)


def _rows(x):
  """[T, B, K] -> [T * B, K]: a free reshape, so that each weight gradient is one plain matmul."""
  return x.reshape(-1, x.shape[-1])


def _scan_layer_bwd(cell_name, unroll, remat, saved, cotangents):
  cell = CELLS[cell_name]
  recurrent, x_gates, mask, resets, (states, h_gates) = saved
  d_outputs, d_final = cotangents
  w_h_t = recurrent["W_h"].T

  def backward_step(d_state, x):
    d_output, x_gates_t, mask_t, reset_t, state, h_gates_t = x
    if remat:
      h_gates_t = _recurrent_gates(cell, recurrent, state[0])
    d_state = list(d_state)
    if mask_t is not None:
      keep = mask_t[:, None]
      d_state[0] = d_state[0] + jnp.where(keep, d_output, 0.0)
      d_updated = tuple(jnp.where(keep, d, 0.0) for d in d_state)
      d_passed = [jnp.where(keep, 0.0, d) for d in d_state]  # a masked step passes its state on
    else:
      d_state[0] = d_state[0] + d_output
      d_updated, d_passed = tuple(d_state), [jnp.zeros_like(d) for d in d_state]
    if cell.summed_projections:
      # The cell reads only x_proj + h_proj: one gradient serves both.
      zeros = tuple(jnp.zeros_like(g) for g in h_gates_t)
      summed = tuple(x + h for x, h in zip(x_gates_t, h_gates_t))
      _, core_vjp = jax.vjp(lambda s, pre: cell.core(s, pre, zeros), state, summed)
      d_core_state, d_h_gates = core_vjp(d_updated)
      d_x_gates = d_h_gates
    else:
      _, core_vjp = jax.vjp(cell.core, state, x_gates_t, h_gates_t)
      d_core_state, d_x_gates, d_h_gates = core_vjp(d_updated)
    d_in = [p + c for p, c in zip(d_passed, d_core_state)]
    d_in[0] = d_in[0] + jnp.concatenate(d_h_gates, axis=-1) @ w_h_t
    if reset_t is not None:
      d_in = [jnp.where(reset_t[:, None], 0.0, d) for d in d_in]
    per_step = (d_h_gates,) if cell.summed_projections else (d_x_gates, d_h_gates)
    return tuple(d_in), per_step

  d_carry, per_step = jax.lax.scan(
    backward_step,
    tuple(d_final),
    (d_outputs, x_gates, mask, resets, states, h_gates),
    reverse=True,
    unroll=unroll,
  )
  d_h_gates = per_step[-1]
  d_x_gates = d_h_gates if cell.summed_projections else per_step[0]
  # The weight gradients: one matmul per gate over all T x B rows, instead of one per step.
  h_prev = _rows(states[0]).T
  d_recurrent = {"W_h": jnp.concatenate([h_prev @ _rows(d) for d in d_h_gates], axis=-1)}
  if cell.has_recurrent_bias:
    d_recurrent["b_h"] = jnp.concatenate([d.sum(axis=(0, 1)) for d in d_h_gates])
  return d_recurrent, tuple(d_x_gates), None, None, jnp.stack(d_carry)


scan_layer.defvjp(_scan_layer_fwd, _scan_layer_bwd)
