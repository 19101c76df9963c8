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

import dataclasses
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from training.model.cells import CELLS, chrono_bias
from training.model.recurrence import scan_layer

# Each embedding table of `Encoder` and the name under which `Module.perturb` exposes its output
# (the "perturbations" collection: the gradient with respect to each input step, and
# adversarial training, training/loop/adversarial.py).
EMBEDDING_PERTURBATIONS = {"embed": "embedded", "backward_embed": "backward_embedded"}


def zero_carry(cell: str, num_layers: int, batch_size: int, hidden_size: int) -> jax.Array:
  """The initial state: zeros [L, S, B, H]."""
  return jnp.zeros((num_layers, CELLS[cell].num_states, batch_size, hidden_size), jnp.float32)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Every choice of a model's architecture, in one object that the encoder, the language model
  and the classifier share (as Flax's lm1b passes one `TransformerConfig`). `training.model.build`
  makes it from a run's `Config`; an exported file keeps its fields (`model_spec`)."""

  vocab_size: int
  embed_size: int
  hidden_size: int
  num_layers: int
  cell: str  # "lstm", "gru" or "rnn"
  _: dataclasses.KW_ONLY
  dropout_rate: float = 0.0
  # Each token's whole embedding is zeroed with this probability in training: the word is dropped
  # from the text (word dropout, Iyyer et al. 2015), where `dropout_rate` drops single units.
  word_dropout_rate: float = 0.0
  # `dropout_rate`'s units are dropped for a whole sequence (window), the same at every time step,
  # rather than drawn anew at each (variational dropout, Gal & Ghahramani 2016).
  variational_dropout: bool = False
  unroll: int = 1
  backward: str = "fused"  # the time loop's gradient: "fused" (hand-written) or "autodiff"
  remat: bool = False
  kernel: str = "scan"  # the LSTM's time loop (training.model.kernels.time_loop)
  path: str = "auto"  # (see RecurrentLayer)
  chrono_max_length: int = 0  # (see RecurrentLayer)
  tie_embeddings: bool = False
  # Tokens the next-token softmax predicts, the most frequent first (rarer ones are read but
  # predicted as <unk>; see `objectives.token_cross_entropy`); 0: all `vocab_size`.
  softmax_vocab_size: int = 0
  # Classifiers only.
  num_classes: int = 0
  head_widths: Sequence[int] = (128,)
  pooling: str = "last"  # "last", "mean", "max" or "concat" (all three)
  bidirectional: bool = False  # (see Encoder)
  backward_embedding: bool = False  # (see Encoder)
  next_token_head: bool = False  # (see SequenceClassifier)
  read_backward: bool = False  # (see SequenceClassifier)

  def __post_init__(self):
    # (a list from JSON or msgpack)
    object.__setattr__(self, "head_widths", tuple(self.head_widths))


class RecurrentLayer(nn.Module):
  """One recurrent layer scanned over time, with masking and optional state resets."""

  cell: str
  hidden_size: int
  unroll: int = 1
  backward: str = (
    "fused"  # "fused": the hand-written backward pass; "autodiff": jax.grad of the scan
  )
  time_major: bool = False  # inputs, mask, resets and outputs as [T, B, ...] (the Encoder's layout)
  remat: bool = False  # keep less for the backward pass, recompute the rest (long windows)
  kernel: str = (
    "scan"  # "onednn": oneDNN's fused LSTM where a batch allows it (training.model.kernels)
  )
  # Whether the caller reads the final carry. A classifier does not, which lets oneDNN's kernel
  # (which knows no masks) also take right-padded batches: their outputs are exact, their final
  # carry is not.
  final_carry_used: bool = True
  # Which time loop: "fast" (oneDNN's kernel, or the scan without masking) needs a batch that
  # `fast_path_applies` to; "general" (the masked scan, with resets) takes any. "auto" picks
  # per batch with a `lax.cond`, which under autodiff keeps the residuals of both loops (zeros
  # for the one not taken); a train step therefore picks once for the whole model
  # (`train_state.train_step`).
  path: str = "auto"
  # > 0: the gates' biases are drawn for dependencies up to this many steps (`cells.chrono_bias`);
  # 0: the cell's constant biases.
  chrono_max_length: int = 0

  @nn.compact
  def __call__(self, inputs, mask, carry, resets=None):
    """inputs [B, T, D], mask [B, T] bool, carry [S, B, H], resets [B, T] bool or None (time
    axis first when `time_major`).

    Where `mask` is False the step leaves the state as it was and outputs zeros, so a padded
    batch computes exactly what its unpadded rows would. Where `resets` is True the state is
    zeroed before that step (a new sequence starts inside the row). Returns
    (outputs [B, T, H] (or [T, B, H]), final carry [S, B, H]; unspecified for rows with padding
    when not `final_carry_used`).
    """
    cell = CELLS[self.cell]
    width = cell.num_gates * self.hidden_size
    w_x = self.param("W_x", nn.initializers.lecun_normal(), (inputs.shape[-1], width))
    if self.chrono_max_length:
      b = self.param(
        "b", lambda rng: chrono_bias(self.cell, self.hidden_size, rng, self.chrono_max_length)
      )
    else:
      b = self.param("b", lambda _rng: cell.input_bias(self.hidden_size, cell.num_gates))
    recurrent = {"W_h": self.param("W_h", nn.initializers.orthogonal(), (self.hidden_size, width))}
    if cell.has_recurrent_bias:
      recurrent["b_h"] = self.param("b_h", nn.initializers.zeros_init(), (width,))

    to_time_major = (
      (lambda x: x) if self.time_major else (lambda x: None if x is None else jnp.swapaxes(x, 0, 1))
    )
    inputs, mask, resets = to_time_major(inputs), to_time_major(mask), to_time_major(resets)

    def x_gates():
      # Hoisted out of the time loop: one [T*B, D] x [D, H] matmul per gate instead of T small
      # ones, time-major and split by gate as the loop reads it (see `Cell.core`).
      return tuple(
        jnp.einsum("tbd,dh->tbh", inputs, w) + b_gate
        for w, b_gate in zip(cell.split(w_x), cell.split(b))
      )

    if self.backward == "autodiff":
      outputs, final = autodiff_scan(
        cell, self.unroll, recurrent, x_gates(), mask, resets, carry, self.remat
      )
      return to_time_major(outputs), final
    run = lambda mask, resets, carry: scan_layer(
      self.cell, self.unroll, self.remat, recurrent, x_gates(), mask, resets, carry
    )
    general = lambda: run(mask, resets, carry)
    if self.kernel == "onednn":
      loop = lambda carry: _onednn_lstm(inputs, w_x, recurrent["W_h"], b, carry)
    else:
      loop = lambda carry: run(None, None, carry)
    fast = lambda: _without_masks(loop, mask, resets, carry)
    if self.path == "fast":
      outputs, final = fast()
    elif self.path == "general":
      outputs, final = general()
    else:
      outputs, final = jax.lax.cond(
        fast_path_applies(mask, resets, self.final_carry_used), fast, general
      )
    return to_time_major(outputs), final


def fast_path_applies(mask, resets, final_carry_used: bool):
  """Whether a time loop that knows no masks (the fast one: oneDNN's kernel, or the scan without
  masking) computes this time-major batch (mask [T, B], resets [T, B] or None) exactly: no state
  reset after the first step (one at the first step is a zero initial state), and no padding,
  or, when the final carry is not read, padding only after each row's last real step (every
  language-model window but a stream's last; a classifier's bucketed rows)."""
  no_later_resets = True if resets is None else ~jnp.any(resets[1:])
  if final_carry_used:
    return no_later_resets & jnp.all(mask)
  lengths = mask.sum(axis=0)
  right_padded = jnp.all(mask == (jnp.arange(mask.shape[0])[:, None] < lengths[None, :]))
  return no_later_resets & right_padded


def _without_masks(loop, mask, resets, carry):
  """`loop(carry)` -> (outputs [T, B, H], final carry) run as if every step were real, on a
  batch that `fast_path_applies` to. Padded steps (after a row's end) output zeros, as in the
  masked scan; their zero gradient reaches no real step, since every real step comes before."""
  if resets is not None:
    carry = jnp.where(resets[0][None, :, None], 0.0, carry)
  outputs, final = loop(carry)
  return jnp.where(mask[:, :, None], outputs, 0.0), final


def _onednn_lstm(inputs, w_x, w_h, b, carry):
  from training.model.kernels import (
    onednn,  # registers its FFI targets: only for a model that uses it
  )

  outputs, h, c = onednn.lstm(inputs, w_x, w_h, b, carry[0], carry[1])
  return outputs, jnp.stack([h, c])


def segment_resets(segment_ids, mask):
  """[B, T] bool: where a new sequence starts in a (possibly packed) row (never on padding)."""
  previous = jnp.pad(segment_ids, ((0, 0), (1, 0)))[:, :-1]
  return (segment_ids != previous) & mask


def autodiff_scan(cell, unroll, recurrent, x_gates, mask, resets, carry, remat=False):
  """The reference time loop (time-major), differentiated by `jax.grad`."""

  def step(state, x):
    x_gates_t, mask_t, reset_t = x
    if reset_t is not None:
      state = tuple(jnp.where(reset_t[:, None], 0.0, s) for s in state)
    updated = cell.step(recurrent, state, jnp.concatenate(x_gates_t, axis=-1))
    state = tuple(jnp.where(mask_t[:, None], u, s) for u, s in zip(updated, state))
    return state, jnp.where(mask_t[:, None], state[0], 0.0)

  final, outputs = jax.lax.scan(
    jax.checkpoint(step) if remat else step, tuple(carry), (x_gates, mask, resets), unroll=unroll
  )
  return outputs, jnp.stack(final)


class Encoder(nn.Module):
  """Token embedding and a stack of recurrent layers, with dropout between them.

  `bidirectional`: a second stack (`backward_layer_*`) reads each sequence from its last real
  token to its first, also inside packed rows (each sequence is reversed in place, see
  `reversal_index`), and its outputs are concatenated to the forward stack's: [B, T, 2H]. The
  forward stack keeps the names and shapes of a language model's encoder, so a unidirectional
  LM initialises it whole (`--init_from`). `backward_embedding`: the backward stack reads an
  embedding of its own (`backward_embed`), so that a backward language model's embedding and
  layers can start it together (`--init_backward_from`).
  """

  config: ModelConfig

  final_carry_used: bool = True  # (see RecurrentLayer)

  @nn.compact
  def __call__(self, tokens, mask, carry, resets=None, *, train: bool, reversal=None):
    """tokens [B, T] int, mask [B, T] bool, carry [L, S, B, H], reversal [B, T] (bidirectional)
    -> (outputs [B, T, H] (2H when bidirectional), carry of the forward stack)."""
    # Time-major from the embedding to the last layer: the time loop reads [T, B, ...], and
    # only the last layer's outputs are turned back.
    tokens, mask = tokens.T, mask.T
    resets = None if resets is None else resets.T
    x = self._embed("embed", tokens, train)
    outputs, final = self._stack("layer", x, mask, carry, resets, train)
    if self.config.bidirectional:
      # A sequence reversed in place occupies the same positions, so mask and resets still hold.
      reverse = lambda a: jnp.take_along_axis(
        a, reversal.T.reshape(reversal.T.shape + (1,) * (a.ndim - 2)), axis=0
      )
      backward_x = (
        self._embed("backward_embed", tokens, train) if self.config.backward_embedding else x
      )
      backward_outputs, _ = self._stack(
        "backward_layer", reverse(backward_x), mask, jnp.zeros_like(carry), resets, train
      )
      outputs = jnp.concatenate([outputs, reverse(backward_outputs)], axis=-1)
    return jnp.swapaxes(outputs, 0, 1), final

  def _embed(self, name: str, tokens, train: bool):
    """tokens [T, B] -> embeddings [T, B, E], with word and unit dropout."""
    x = nn.Embed(self.config.vocab_size, self.config.embed_size, name=name)(tokens)
    # The identity unless a "perturbations" collection is passed: then jax.grad with respect to
    # it is the gradient with respect to each input step (bench/dependency_distance.py), and a
    # value in it moves the embeddings (training/loop/adversarial.py).
    x = self.perturb(EMBEDDING_PERTURBATIONS[name], x)
    if (
      self.config.word_dropout_rate
    ):  # one draw per token, shared by its embedding's units (x: [T, B, E])
      x = nn.Dropout(
        self.config.word_dropout_rate,
        broadcast_dims=(2,),
        deterministic=not train,
        name=name.replace("embed", "word_dropout"),
      )(x)
    return self._dropout(x, train)

  def _dropout(self, x, train: bool):
    # x: [T, B, F]; variational: one draw per row and unit, shared over time (axis 0).
    return nn.Dropout(
      self.config.dropout_rate,
      broadcast_dims=(0,) if self.config.variational_dropout else (),
      deterministic=not train,
    )(x)

  def _stack(self, prefix, x, mask, carry, resets, train):
    final = []
    for layer in range(self.config.num_layers):
      layer_module = RecurrentLayer(
        self.config.cell,
        self.config.hidden_size,
        self.config.unroll,
        self.config.backward,
        time_major=True,
        remat=self.config.remat,
        kernel=self.config.kernel,
        final_carry_used=self.final_carry_used,
        path=self.config.path,
        chrono_max_length=self.config.chrono_max_length,
        name=f"{prefix}_{layer}",
      )
      x, layer_carry = layer_module(x, mask, carry[layer], resets)
      x = self._dropout(x, train)
      final.append(layer_carry)
    return x, jnp.stack(final)


class NextTokenHead(nn.Module):
  """Next-token logits from recurrent outputs: a dense layer, or (`tie`) the embedding matrix
  transposed, after a projection to its width when the widths differ (Press & Wolf 2017).
  `vocab_size` tokens are predicted: the first rows of the embedding when tied (the vocabulary
  is most frequent first, so a smaller softmax than the embedding predicts the commonest)."""

  vocab_size: int
  tie: bool = False

  @nn.compact
  def __call__(self, outputs, embedding):
    bias = self.param("bias", nn.initializers.zeros_init(), (self.vocab_size,))
    if not self.tie:  # the parameters of an `nn.Dense` (those of earlier checkpoints)
      kernel = self.param(
        "kernel", nn.initializers.lecun_normal(), (outputs.shape[-1], self.vocab_size)
      )
      return outputs @ kernel + bias
    if outputs.shape[-1] != embedding.shape[-1]:
      outputs = nn.Dense(embedding.shape[-1], name="projection")(outputs)
    return outputs @ embedding[: self.vocab_size].T + bias


def next_token_logits(
  module: nn.Module, encoder: Encoder, outputs, tie: bool, softmax_vocab_size: int = 0
):
  """`module`'s `lm_head` applied to `outputs`, with the encoder's embedding when tied. The
  softmax covers the `softmax_vocab_size` most frequent tokens (0: all the encoder reads)."""
  embedding = encoder.variables["params"]["embed"]["embedding"] if tie else None
  size = (
    min(softmax_vocab_size, encoder.config.vocab_size)
    if softmax_vocab_size
    else encoder.config.vocab_size
  )
  return NextTokenHead(size, tie, name="lm_head")(outputs, embedding)


class LanguageModel(nn.Module):
  """Next-token logits at every position."""

  config: ModelConfig

  @nn.compact
  def __call__(self, tokens, mask, carry, resets=None, *, train: bool):
    """Returns (logits [B, T, V] (V: the softmax's tokens), carry [L, S, B, H])."""
    encoder = Encoder(
      self.config,
      name="encoder",
    )
    outputs, carry = encoder(tokens, mask, carry, resets, train=train)
    return next_token_logits(
      self, encoder, outputs, self.config.tie_embeddings, self.config.softmax_vocab_size
    ), carry


class SequenceClassifier(nn.Module):
  """Class logits per sequence from its states (last, mean or max) and an MLP head.

  A row may hold several sequences (packing): `segment_ids [B, T]` numbers them 1..S (0 for
  padding), the state restarts where a new one begins, and `segment_ends [B, S]` says where
  each ends. An unpacked row is one segment.

  `next_token_head`: the model also has a language model's `lm_head` on its forward stack, and
  `__call__(..., token_logits=True)` returns (class logits, next-token logits [B, T, V]) for the
  joint per-sequence and per-token objective (`--lm_loss_weight`).

  `read_backward`: the (unidirectional) encoder reads each sequence from its last real token to
  its first, as a backward language model (`--read_backward`) read its text, so that one starts
  it whole (`--init_from`); ULMFiT averages such a classifier with a forward one. Each sequence
  is reversed in place (`reversal_index`), and the last state is the one at its first token.
  """

  config: ModelConfig

  @nn.compact
  def __call__(
    self, tokens, mask, segment_ids, segment_ends, *, train: bool, token_logits: bool = False
  ):
    """tokens, mask, segment_ids [B, T]; segment_ends [B, S] -> logits [B, S, C]."""
    carry = zero_carry(
      self.config.cell, self.config.num_layers, tokens.shape[0], self.config.hidden_size
    )
    resets = segment_resets(segment_ids, mask)
    # Where each sequence starts: only a backward reader needs it (computed per batch, so not
    # for a forward-only model).
    reads_backward = self.config.bidirectional or self.config.read_backward
    segment_starts = starts_of(segment_ids, segment_ends) if reads_backward else None
    encoder = Encoder(
      self.config,
      final_carry_used=False,
      name="encoder",
    )
    reversal = reversal_index(segment_ids, segment_starts, segment_ends) if reads_backward else None
    if self.config.read_backward:
      # Reversed in place, a sequence keeps its positions: mask, resets and pooling still hold,
      # and the outputs are turned back so that position t is token t's state.
      tokens = jnp.take_along_axis(tokens, reversal, axis=1)
      outputs, _ = encoder(tokens, mask, carry, resets, train=train)
      outputs = jnp.take_along_axis(outputs, reversal[..., None], axis=1)
    else:
      outputs, _ = encoder(tokens, mask, carry, resets, train=train, reversal=reversal)
    # "concat" (ULMFiT's concat pooling): the last state beside the max and the mean of all states.
    poolings = (
      ("last", "max", "mean") if self.config.pooling == "concat" else (self.config.pooling,)
    )
    features = jnp.concatenate(
      [
        self._pool(outputs, segment_ids, segment_starts, segment_ends, pooling)
        for pooling in poolings
      ],
      axis=-1,
    )
    for i, width in enumerate(self.config.head_widths):
      features = nn.relu(nn.Dense(width, name=f"head_{i}")(features))
      features = nn.Dropout(self.config.dropout_rate, deterministic=not train)(features)
    logits = nn.Dense(self.config.num_classes, name="head_out")(features)
    if self.config.next_token_head and (token_logits or self.is_initializing()):
      # Only the forward stack may predict the next token: the backward one has read it.
      tokens_out = next_token_logits(
        self,
        encoder,
        outputs[..., : self.config.hidden_size],
        self.config.tie_embeddings,
        self.config.softmax_vocab_size,
      )
      if token_logits:
        return logits, tokens_out
    return logits

  def _pool(self, outputs, segment_ids, segment_starts, segment_ends, pooling: str):
    if self.config.read_backward and pooling == "last":
      # It has read the whole sequence there
      return pool(outputs, segment_ids, segment_starts, "last")
    if self.config.bidirectional and pooling == "last":
      # The backward stack has read a whole sequence when it reaches the sequence's first token.
      forward, backward = jnp.split(outputs, 2, axis=-1)
      return jnp.concatenate(
        [
          pool(forward, segment_ids, segment_ends, "last"),
          pool(backward, segment_ids, segment_starts, "last"),
        ],
        axis=-1,
      )
    return pool(outputs, segment_ids, segment_ends, pooling)


def starts_of(segment_ids, segment_ends):
  """segment_ids [B, T] (1..S, 0 padding), segment_ends [B, S] -> first positions [B, S]
  (each sequence's end minus its length plus one; 0 for an empty slot)."""
  num_segments = segment_ends.shape[1]
  lengths = jax.vmap(lambda ids: jnp.bincount(ids, length=num_segments + 1))(segment_ids)[:, 1:]
  return jnp.where(lengths > 0, segment_ends - lengths + 1, 0)


def reversal_index(segment_ids, segment_starts, segment_ends):
  """[B, T]: where each position's token goes when every sequence is reversed in place
  (start + end - t inside a sequence; padding stays where it is). Its own inverse."""
  slot = jnp.maximum(segment_ids - 1, 0)
  start = jnp.take_along_axis(segment_starts, slot, axis=1)
  end = jnp.take_along_axis(segment_ends, slot, axis=1)
  position = jnp.arange(segment_ids.shape[1])[None, :]
  return jnp.where(segment_ids > 0, start + end - position, position)


def pool(outputs, segment_ids, segment_ends, pooling: str):
  """Per-sequence features [B, S, H] from outputs [B, T, H]: each sequence's last state, or the
  mean or elementwise maximum of its states (zeros for an empty slot)."""
  if pooling == "last":
    return jnp.take_along_axis(outputs, segment_ends[..., None], axis=1)
  batch, length, width = outputs.shape
  num_segments = segment_ends.shape[1]
  # Segment reductions over the flattened rows: [B*T, H] -> [B*(S+1), H] (slot 0 is padding),
  # never a [B, T, S, H] intermediate.
  ids = (segment_ids + (num_segments + 1) * jnp.arange(batch)[:, None]).reshape(-1)
  flat, slots = outputs.reshape(-1, width), batch * (num_segments + 1)
  counts = jax.ops.segment_sum(jnp.ones_like(ids, outputs.dtype), ids, slots).reshape(batch, -1, 1)[
    :, 1:
  ]
  if pooling == "mean":
    sums = jax.ops.segment_sum(flat, ids, slots).reshape(batch, -1, width)[:, 1:]
    return sums / jnp.maximum(counts, 1.0)
  if pooling == "max":
    maxima = jax.ops.segment_max(flat, ids, slots).reshape(batch, -1, width)[:, 1:]
    return jnp.where(counts > 0, maxima, 0.0)
  raise ValueError(f"unknown pooling {pooling!r}")


MODEL_CLASSES = {"LanguageModel": LanguageModel, "SequenceClassifier": SequenceClassifier}


def with_path(model: nn.Module, path: str) -> nn.Module:
  """`model` with every layer's time loop fixed to `path` ("fast", "general" or "auto": see
  RecurrentLayer); the train step picks one for the whole model per batch."""
  return model.clone(config=dataclasses.replace(model.config, path=path))


def model_from_spec(class_name: str, fields: dict) -> nn.Module:
  """The model an exported file describes: its class name and its `ModelConfig`'s fields."""
  return MODEL_CLASSES[class_name](ModelConfig(**fields))
