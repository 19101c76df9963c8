"""Recurrent cells as pure functions of their parameters.

Each cell is split in two so that the layer can hoist work out of the time loop:
- `W_x`, `b`: the input projection `x @ W_x + b`, which needs no recurrence, so the layer
  computes it for all time steps in one large matmul before the scan;
- `step(recurrent_params, carry, x_proj_t) -> carry`: the part that must run step by step.

The carry is a tuple of [B, H] arrays (`(h,)`, or `(h, c)` for the LSTM); the cell's output
is always `carry[0]`. Gate layouts follow PyTorch's `nn.RNN`/`nn.LSTM`/`nn.GRU` (LSTM gates
i, f, g, o; GRU gates r, z, n), so weights can be compared with or copied from PyTorch.
"""

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp


def elman_step(params, carry, x_proj):
  """h' = tanh(W_x x + b + W_h h)."""
  (h,) = carry
  return (jnp.tanh(x_proj + h @ params["W_h"]),)


def lstm_step(params, carry, x_proj):
  """The standard LSTM: four gates from one fused matmul, c' = f c + i g, h' = o tanh(c')."""
  h, c = carry
  gates = x_proj + h @ params["W_h"]
  i, f, g, o = jnp.split(gates, 4, axis=-1)
  c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
  h = jax.nn.sigmoid(o) * jnp.tanh(c)
  return (h, c)


def gru_step(params, carry, x_proj):
  """GRU as in PyTorch/cuDNN: the reset gate scales the recurrent part of the candidate."""
  (h,) = carry
  h_proj = h @ params["W_h"] + params["b_h"]
  x_r, x_z, x_n = jnp.split(x_proj, 3, axis=-1)
  h_r, h_z, h_n = jnp.split(h_proj, 3, axis=-1)
  r = jax.nn.sigmoid(x_r + h_r)
  z = jax.nn.sigmoid(x_z + h_z)
  n = jnp.tanh(x_n + r * h_n)
  return ((1.0 - z) * n + z * h,)


def _zeros_bias(hidden_size, num_gates):
  return jnp.zeros(num_gates * hidden_size, jnp.float32)


def _lstm_bias(hidden_size, num_gates):
  # Forget gate (the second block) starts at 1 so that the cell remembers by default
  # (Gers et al. 2000; Jozefowicz et al. 2015).
  return _zeros_bias(hidden_size, num_gates).at[hidden_size:2 * hidden_size].set(1.0)


@dataclasses.dataclass(frozen=True)
class Cell:
  name: str
  num_gates: int  # the projections are [*, num_gates * H]
  num_states: int  # arrays in the carry: 1 (h) or 2 (h, c)
  step: Callable
  input_bias: Callable[[int, int], jax.Array]
  has_recurrent_bias: bool  # only the GRU's candidate needs a bias inside r * (...)


CELLS = {
    "rnn": Cell("rnn", 1, 1, elman_step, _zeros_bias, False),
    "lstm": Cell("lstm", 4, 2, lstm_step, _lstm_bias, False),
    "gru": Cell("gru", 3, 1, gru_step, _zeros_bias, True),
}
