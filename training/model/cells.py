"""Recurrent cells as pure functions of their parameters.

Each cell is split so that the layer can hoist work out of the time loop:
- `W_x`, `b`: the input projection `x @ W_x + b`, which needs no recurrence, so the layer
  computes it for all time steps in one large matmul before the scan;
- `step(recurrent_params, carry, x_proj_t) -> carry`: the part that must run step by step,
  itself the recurrent projection `h @ W_h` and `core(carry, x_gates, h_gates)`, the gate
  arithmetic, which the hand-written backward pass (`training.model.recurrence`) differentiates alone.

The carry is a tuple of [B, H] arrays (`(h,)`, or `(h, c)` for the LSTM); the cell's output
is always `carry[0]`. Gate layouts follow PyTorch's `nn.RNN`/`nn.LSTM`/`nn.GRU` (LSTM gates
i, f, g, o; GRU gates r, z, n), so weights can be compared with or copied from PyTorch.
"""

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp


def elman_core(carry, x_gates, h_gates):
  """h' = tanh(W_x x + b + W_h h)."""
  del carry
  return (jnp.tanh(x_gates[0] + h_gates[0]),)


def lstm_core(carry, x_gates, h_gates):
  """The standard LSTM: four gates from one fused matmul, c' = f c + i g, h' = o tanh(c')."""
  _, c = carry
  i, f, g, o = (x + h for x, h in zip(x_gates, h_gates))
  c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
  h = jax.nn.sigmoid(o) * jnp.tanh(c)
  return (h, c)


def gru_core(carry, x_gates, h_gates):
  """GRU as in PyTorch/cuDNN: the reset gate scales the recurrent part of the candidate."""
  (h,) = carry
  (x_r, x_z, x_n), (h_r, h_z, h_n) = x_gates, h_gates
  r = jax.nn.sigmoid(x_r + h_r)
  z = jax.nn.sigmoid(x_z + h_z)
  n = jnp.tanh(x_n + r * h_n)
  return ((1.0 - z) * n + z * h,)


def _zeros_bias(hidden_size, num_gates):
  return jnp.zeros(num_gates * hidden_size, jnp.float32)


def _lstm_bias(hidden_size, num_gates):
  # Forget gate (the second block) starts at 1 so that the cell remembers by default
  # (Gers et al. 2000; Jozefowicz et al. 2015).
  return _zeros_bias(hidden_size, num_gates).at[hidden_size : 2 * hidden_size].set(1.0)


def chrono_bias(cell_name: str, hidden_size: int, rng: jax.Array, max_length: int) -> jax.Array:
  """The input bias of a gated cell initialised for dependencies of up to `max_length` steps
  (chrono initialisation, Tallec & Ollivier 2018): each unit's keep gate starts at
  b = log(u), u ~ U[1, max_length - 1], so that it keeps sigmoid(b) = u / (1 + u) of its state
  per step and its memory lasts about u steps; the units spread over every time scale up to
  `max_length`. Where a constant bias of 1 keeps 0.73 per step, a signal 40 steps back reaches
  the end at 0.73^40 = 3e-6 of its size, and the gradient back to it is as small.

  LSTM: the forget gate gets log(u) and the input gate -log(u) (a unit that keeps much writes
  little); GRU (h' = (1 - z) n + z h): the update gate z gets log(u), the others 0. The Elman
  RNN has no gate to set."""
  if cell_name not in ("lstm", "gru"):
    raise ValueError(f"chrono initialisation needs a gated cell (lstm, gru), not {cell_name!r}")
  keep = jnp.log(jax.random.uniform(rng, (hidden_size,), jnp.float32, 1.0, max_length - 1.0))
  bias = _zeros_bias(hidden_size, CELLS[cell_name].num_gates)
  if cell_name == "lstm":  # gates i, f, g, o
    return bias.at[:hidden_size].set(-keep).at[hidden_size : 2 * hidden_size].set(keep)
  return bias.at[hidden_size : 2 * hidden_size].set(keep)  # gates r, z, n


@dataclasses.dataclass(frozen=True)
class Cell:
  name: str
  num_gates: int  # the projections are [*, num_gates * H]
  num_states: int  # arrays in the carry: 1 (h) or 2 (h, c)
  # core(carry, x_gates, h_gates) -> carry: the gate arithmetic of one step, given both
  # projections split by gate (tuples of num_gates [B, H] arrays; h_proj = h @ W_h, + b_h for the
  # GRU). Split, not [B, G*H]: XLA:CPU runs a fused loop over column slices of a row several
  # times slower than over whole arrays.
  core: Callable
  input_bias: Callable[[int, int], jax.Array]
  has_recurrent_bias: bool  # only the GRU's candidate needs a bias inside r * (...)
  summed_projections: bool  # the core reads only x_proj + h_proj (Elman, LSTM; not the GRU)

  def step(self, params, carry, x_proj):
    """One whole step: carry -> carry."""
    h_proj = carry[0] @ params["W_h"]
    if self.has_recurrent_bias:
      h_proj = h_proj + params["b_h"]
    return self.core(carry, self.split(x_proj), self.split(h_proj))

  def split(self, projection):
    """[..., G*H] -> a tuple of G arrays [..., H], one per gate."""
    return tuple(jnp.split(projection, self.num_gates, axis=-1))


CELLS = {
  "rnn": Cell("rnn", 1, 1, elman_core, _zeros_bias, False, True),
  "lstm": Cell("lstm", 4, 2, lstm_core, _lstm_bias, False, True),
  "gru": Cell("gru", 3, 1, gru_core, _zeros_bias, True, False),
}
