"""Recurrent models: an embedding and a stack of scanned recurrent layers, and two heads.

- `LanguageModel`: logits [B, T, V] at every position (per-token objective); takes and
  returns the carried state so that training can continue it across windows.
- `SequenceClassifier`: logits [B, C] from each sequence's last real state (or the mean of
  its states), through an MLP head.

Both keep the shared part under the name `encoder`, so that a language model's encoder can
initialise a classifier (pretraining, then fine-tuning per sequence).

The carried state of a stack is one array `carry [L, S, B, H]`: layer, state part (h, or h
and c), batch row, unit. One array is simple to checkpoint and to shard on its batch axis.
"""

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from training.cells import CELLS
from training.recurrence import scan_layer


def zero_carry(cell: str, num_layers: int, batch_size: int, hidden_size: int) -> jax.Array:
  """The initial state: zeros [L, S, B, H]."""
  return jnp.zeros((num_layers, CELLS[cell].num_states, batch_size, hidden_size), jnp.float32)


class RecurrentLayer(nn.Module):
  """One recurrent layer scanned over time, with masking and optional state resets."""
  cell: str
  hidden_size: int
  unroll: int = 1
  backward: str = "fused"  # "fused": the hand-written backward pass; "autodiff": jax.grad of the scan
  time_major: bool = False  # inputs, mask, resets and outputs as [T, B, ...] (the Encoder's layout)
  remat: bool = False  # keep less for the backward pass, recompute the rest (long windows)

  @nn.compact
  def __call__(self, inputs, mask, carry, resets=None):
    """inputs [B, T, D], mask [B, T] bool, carry [S, B, H], resets [B, T] bool or None (time
    axis first when `time_major`).

    Where `mask` is False the step leaves the state as it was and outputs zeros, so a padded
    batch computes exactly what its unpadded rows would. Where `resets` is True the state is
    zeroed before that step (a new sequence starts inside the row). Returns
    (outputs [B, T, H] (or [T, B, H]), final carry [S, B, H]).
    """
    cell = CELLS[self.cell]
    width = cell.num_gates * self.hidden_size
    w_x = self.param("W_x", nn.initializers.lecun_normal(), (inputs.shape[-1], width))
    b = self.param("b", lambda _rng: cell.input_bias(self.hidden_size, cell.num_gates))
    recurrent = {"W_h": self.param("W_h", nn.initializers.orthogonal(), (self.hidden_size, width))}
    if cell.has_recurrent_bias:
      recurrent["b_h"] = self.param("b_h", nn.initializers.zeros_init(), (width,))

    to_time_major = (lambda x: x) if self.time_major else (lambda x: None if x is None else jnp.swapaxes(x, 0, 1))
    mask, resets = to_time_major(mask), to_time_major(resets)
    # Hoisted out of the time loop: one [T*B, D] x [D, H] matmul per gate instead of T small
    # ones, made time-major and split by gate as the loop reads it (see `Cell.core`).
    layout = "tbd,dh->tbh" if self.time_major else "btd,dh->tbh"
    x_gates = tuple(jnp.einsum(layout, inputs, w) + b_gate
                    for w, b_gate in zip(cell.split(w_x), cell.split(b)))
    if self.backward == "autodiff":
      outputs, final = autodiff_scan(cell, self.unroll, recurrent, x_gates, mask, resets, carry, self.remat)
    else:
      run = functools.partial(scan_layer, self.cell, self.unroll, self.remat, recurrent, x_gates)
      # Full windows (every per-token window but a stream's last) take the path without masking.
      has_padding = ~jnp.all(mask) if resets is None else ~jnp.all(mask) | jnp.any(resets)
      outputs, final = jax.lax.cond(has_padding, lambda: run(mask, resets, carry),
                                    lambda: run(None, None, carry))
    return to_time_major(outputs), final


def autodiff_scan(cell, unroll, recurrent, x_gates, mask, resets, carry, remat=False):
  """The reference time loop (time-major), differentiated by `jax.grad`."""

  def step(state, x):
    x_gates_t, mask_t, reset_t = x
    if reset_t is not None:
      state = tuple(jnp.where(reset_t[:, None], 0.0, s) for s in state)
    updated = cell.step(recurrent, state, jnp.concatenate(x_gates_t, axis=-1))
    state = tuple(jnp.where(mask_t[:, None], u, s) for u, s in zip(updated, state))
    return state, jnp.where(mask_t[:, None], state[0], 0.0)

  final, outputs = jax.lax.scan(jax.checkpoint(step) if remat else step, tuple(carry), (x_gates, mask, resets),
                                unroll=unroll)
  return outputs, jnp.stack(final)


class Encoder(nn.Module):
  """Token embedding and a stack of recurrent layers, with dropout between them."""
  vocab_size: int
  embed_size: int
  hidden_size: int
  num_layers: int
  cell: str
  dropout_rate: float = 0.0
  unroll: int = 1
  backward: str = "fused"
  remat: bool = False

  @nn.compact
  def __call__(self, tokens, mask, carry, resets=None, *, train: bool):
    """tokens [B, T] int, mask [B, T] bool, carry [L, S, B, H] -> (outputs [B, T, H], carry)."""
    # Time-major from the embedding to the last layer: the time loop reads [T, B, ...], and
    # only the last layer's outputs are turned back.
    tokens, mask = tokens.T, mask.T
    resets = None if resets is None else resets.T
    x = nn.Embed(self.vocab_size, self.embed_size, name="embed")(tokens)
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    final = []
    for layer in range(self.num_layers):
      x, layer_carry = RecurrentLayer(self.cell, self.hidden_size, self.unroll, self.backward, time_major=True,
                                      remat=self.remat, name=f"layer_{layer}")(x, mask, carry[layer], resets)
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
      final.append(layer_carry)
    return jnp.swapaxes(x, 0, 1), jnp.stack(final)


class LanguageModel(nn.Module):
  """Next-token logits at every position."""
  vocab_size: int
  embed_size: int
  hidden_size: int
  num_layers: int
  cell: str
  dropout_rate: float = 0.0
  unroll: int = 1
  backward: str = "fused"
  remat: bool = False

  @nn.compact
  def __call__(self, tokens, mask, carry, resets=None, *, train: bool):
    """Returns (logits [B, T, V], carry [L, S, B, H])."""
    outputs, carry = Encoder(self.vocab_size, self.embed_size, self.hidden_size, self.num_layers,
                             self.cell, self.dropout_rate, self.unroll, self.backward, self.remat,
                             name="encoder")(
                                 tokens, mask, carry, resets, train=train)
    return nn.Dense(self.vocab_size, name="lm_head")(outputs), carry


class SequenceClassifier(nn.Module):
  """Class logits per sequence from its last real state (or mean state) and an MLP head.

  A row may hold several sequences (packing): `segment_ids [B, T]` numbers them 1..S (0 for
  padding), the state restarts where a new one begins, and `segment_ends [B, S]` says where
  each ends. An unpacked row is one segment.
  """
  vocab_size: int
  embed_size: int
  hidden_size: int
  num_layers: int
  cell: str
  num_classes: int
  head_widths: Sequence[int] = (128,)
  pooling: str = "last"  # "last" or "mean"
  dropout_rate: float = 0.0
  unroll: int = 1
  backward: str = "fused"
  remat: bool = False

  @nn.compact
  def __call__(self, tokens, mask, segment_ids, segment_ends, *, train: bool):
    """tokens, mask, segment_ids [B, T]; segment_ends [B, S] -> logits [B, S, C]."""
    carry = zero_carry(self.cell, self.num_layers, tokens.shape[0], self.hidden_size)
    previous = jnp.pad(segment_ids, ((0, 0), (1, 0)))[:, :-1]
    resets = (segment_ids != previous) & mask  # a new sequence starts (never on padding)
    outputs, _ = Encoder(self.vocab_size, self.embed_size, self.hidden_size, self.num_layers,
                         self.cell, self.dropout_rate, self.unroll, self.backward, self.remat, name="encoder")(
                             tokens, mask, carry, resets, train=train)
    features = pool(outputs, segment_ids, segment_ends, self.pooling)
    for i, width in enumerate(self.head_widths):
      features = nn.relu(nn.Dense(width, name=f"head_{i}")(features))
      features = nn.Dropout(self.dropout_rate, deterministic=not train)(features)
    return nn.Dense(self.num_classes, name="head_out")(features)


def pool(outputs, segment_ids, segment_ends, pooling: str):
  """Per-sequence features [B, S, H] from outputs [B, T, H]: each sequence's last state, or the
  mean of its states."""
  if pooling == "last":
    return jnp.take_along_axis(outputs, segment_ends[..., None], axis=1)
  if pooling == "mean":
    slots = jnp.arange(1, segment_ends.shape[1] + 1)
    members = (segment_ids[..., None] == slots).astype(outputs.dtype)  # [B, T, S]
    sums = jnp.einsum("bts,bth->bsh", members, outputs)
    return sums / jnp.maximum(members.sum(axis=1), 1.0)[..., None]
  raise ValueError(f"unknown pooling {pooling!r}")
