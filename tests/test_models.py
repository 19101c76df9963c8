"""Whole models: padding changes nothing, and carried windows equal one long sequence."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from training.config import Config, ConfigError, validate
from training.loop.objectives import classify_loss, lm_loss
from training.model.build import build_model
from training.model.cells import CELLS
from training.model.models import (
  Encoder,
  LanguageModel,
  ModelConfig,
  SequenceClassifier,
  pool,
  reversal_index,
  starts_of,
  zero_carry,
)
from training.state import initial_state_fn, make_optimizer_for

V, E, H, L = 11, 6, 8, 2


def one_segment(mask):
  """segment_ids and segment_ends of unpacked rows (one sequence each)."""
  return mask.astype(jnp.int32), jnp.maximum(mask.sum(axis=1) - 1, 0)[:, None]


def test_classifier_padded_batch_equals_each_sequence_alone():
  model = SequenceClassifier(ModelConfig(V, E, H, L, "gru", num_classes=3, head_widths=(16, 16)))
  tokens = jax.random.randint(jax.random.PRNGKey(0), (3, 9), 3, V)
  lengths = jnp.array([9, 5, 2])
  mask = jnp.arange(9)[None, :] < lengths[:, None]
  params = model.init(jax.random.PRNGKey(1), tokens, mask, *one_segment(mask), train=False)[
    "params"
  ]
  padded = model.apply(
    {"params": params}, jnp.where(mask, tokens, 0), mask, *one_segment(mask), train=False
  )
  for row, length in enumerate(lengths.tolist()):
    alone_mask = jnp.ones((1, length), bool)
    alone = model.apply(
      {"params": params},
      tokens[row : row + 1, :length],
      alone_mask,
      *one_segment(alone_mask),
      train=False,
    )
    np.testing.assert_allclose(padded[row], alone[0], rtol=1e-5, atol=1e-6)


# Which way a classifier reads: forward, both ways (--bidirectional), or backward (--read_backward).
READING = {
  "forward": {},
  "bidirectional": {"bidirectional": True},
  "backward": {"read_backward": True},
}


@pytest.mark.parametrize("reading", READING)
@pytest.mark.parametrize("pooling", ["last", "mean", "max", "concat"])
@pytest.mark.parametrize("cell", ["lstm", "rnn"])
def test_packed_rows_give_exactly_the_unpacked_results(pooling, cell, reading):
  model = SequenceClassifier(
    ModelConfig(
      V, E, H, L, cell, num_classes=3, head_widths=(8,), pooling=pooling, **READING[reading]
    )
  )
  lengths = [4, 2, 3, 5, 1]
  sequences = [jax.random.randint(jax.random.PRNGKey(i), (n,), 3, V) for i, n in enumerate(lengths)]
  # Unpacked: one sequence per row, padded to 5.
  tokens = jnp.stack([jnp.pad(s, (0, 5 - len(s))) for s in sequences])
  mask = jnp.arange(5)[None, :] < jnp.array(lengths)[:, None]
  params = model.init(jax.random.PRNGKey(9), tokens, mask, *one_segment(mask), train=False)[
    "params"
  ]
  unpacked = model.apply({"params": params}, tokens, mask, *one_segment(mask), train=False)[:, 0]
  # Packed: rows [4, 2, 3 | padding] and [5, 1 | padding], width 10, up to 3 sequences a row.
  rows, ids, ends = [], [], []
  for members in ([0, 1, 2], [3, 4]):
    row = jnp.concatenate([sequences[i] for i in members])
    segment = jnp.concatenate([jnp.full(lengths[i], k + 1) for k, i in enumerate(members)])
    rows.append(jnp.pad(row, (0, 10 - len(row))))
    ids.append(jnp.pad(segment, (0, 10 - len(segment))))
    ends.append(
      jnp.pad(jnp.cumsum(jnp.array([lengths[i] for i in members])) - 1, (0, 3 - len(members)))
    )
  segment_ids = jnp.stack(ids)
  packed = model.apply(
    {"params": params}, jnp.stack(rows), segment_ids > 0, segment_ids, jnp.stack(ends), train=False
  )
  np.testing.assert_allclose(
    jnp.concatenate([packed[0, :3], packed[1, :2]]), unpacked, rtol=1e-5, atol=1e-6
  )


@pytest.mark.parametrize("reading", READING)
@pytest.mark.parametrize("pooling", ["last", "mean", "max", "concat"])
def test_classifier_features_ignore_what_follows_the_sequence(pooling, reading):
  model = SequenceClassifier(
    ModelConfig(V, E, H, 1, "lstm", num_classes=2, pooling=pooling, **READING[reading])
  )
  tokens = jax.random.randint(jax.random.PRNGKey(0), (2, 6), 3, V)
  mask = jnp.array([[1, 1, 1, 0, 0, 0]] * 2, bool)
  params = model.init(jax.random.PRNGKey(1), tokens, mask, *one_segment(mask), train=False)[
    "params"
  ]
  other_tail = tokens.at[:, 3:].set(4)  # different tokens where the mask is off
  np.testing.assert_allclose(
    model.apply({"params": params}, tokens, mask, *one_segment(mask), train=False),
    model.apply({"params": params}, other_tail, mask, *one_segment(mask), train=False),
  )


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_carried_state_makes_two_windows_equal_one_long_window(cell):
  model = LanguageModel(ModelConfig(V, E, H, L, cell))
  tokens = jax.random.randint(jax.random.PRNGKey(0), (4, 12), 0, V)
  mask = jnp.ones((4, 12), bool)
  carry = zero_carry(cell, L, 4, H)
  params = model.init(jax.random.PRNGKey(1), tokens, mask, carry, train=False)["params"]
  whole, whole_carry = model.apply({"params": params}, tokens, mask, carry, train=False)
  first, carried = model.apply({"params": params}, tokens[:, :5], mask[:, :5], carry, train=False)
  second, final = model.apply({"params": params}, tokens[:, 5:], mask[:, 5:], carried, train=False)
  np.testing.assert_allclose(jnp.concatenate([first, second], 1), whole, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(final, whole_carry, rtol=1e-5, atol=1e-6)
  # And without the carried state the second window is a different computation.
  restarted, _ = model.apply({"params": params}, tokens[:, 5:], mask[:, 5:], carry, train=False)
  assert not np.allclose(restarted, second, atol=1e-3)


def test_dropout_is_active_only_in_training():
  model = LanguageModel(ModelConfig(V, E, H, 1, "lstm", dropout_rate=0.5))
  tokens = jnp.ones((2, 5), jnp.int32)
  mask = jnp.ones((2, 5), bool)
  carry = zero_carry("lstm", 1, 2, H)
  params = model.init(jax.random.PRNGKey(1), tokens, mask, carry, train=False)["params"]
  run = lambda seed, train: model.apply(
    {"params": params}, tokens, mask, carry, train=train, rngs={"dropout": jax.random.PRNGKey(seed)}
  )[0]
  np.testing.assert_array_equal(run(0, False), run(1, False))
  assert not np.allclose(run(0, True), run(1, True))
  np.testing.assert_array_equal(run(0, True), run(0, True))


def test_word_dropout_drops_whole_token_embeddings_in_training_only():
  model = LanguageModel(ModelConfig(V, E, H, 1, "lstm", word_dropout_rate=0.5))
  tokens = jax.random.randint(jax.random.PRNGKey(0), (16, 32), 0, V)
  mask = jnp.ones(tokens.shape, bool)
  carry = zero_carry("lstm", 1, 16, H)
  params = model.init(jax.random.PRNGKey(1), tokens, mask, carry, train=False)["params"]
  embedded = params["encoder"]["embed"]["embedding"][
    tokens.T
  ]  # [T, B, E], time-major as the encoder

  def dropped(train):
    _, state = model.apply(
      {"params": params},
      tokens,
      mask,
      carry,
      train=train,
      capture_intermediates=True,
      rngs={"dropout": jax.random.PRNGKey(2)},
    )
    return state["intermediates"]["encoder"]["word_dropout"]["__call__"][0]

  out = dropped(train=True)
  kept = np.all(out != 0, axis=-1)
  # A token is dropped whole (every unit zero) or kept whole, scaled by 1 / (1 - rate).
  np.testing.assert_array_equal(np.all(out == 0, axis=-1), ~kept)
  np.testing.assert_allclose(out[kept], 2.0 * embedded[kept], rtol=1e-6)
  assert 0.4 < kept.mean() < 0.6
  np.testing.assert_array_equal(dropped(train=False), embedded)


@pytest.mark.parametrize("variational", [False, True])
def test_variational_dropout_drops_the_same_units_at_every_time_step(variational):
  model = LanguageModel(
    ModelConfig(V, E, H, 2, "lstm", dropout_rate=0.5, variational_dropout=variational)
  )
  tokens = jax.random.randint(jax.random.PRNGKey(0), (4, 12), 3, V)
  mask = jnp.ones(tokens.shape, bool)
  carry = zero_carry("lstm", 2, 4, H)
  params = model.init(jax.random.PRNGKey(1), tokens, mask, carry, train=False)["params"]
  _, state = model.apply(
    {"params": params},
    tokens,
    mask,
    carry,
    train=True,
    capture_intermediates=True,
    rngs={"dropout": jax.random.PRNGKey(2)},
  )
  drops = state["intermediates"]["encoder"]
  for name in (
    "Dropout_0",
    "Dropout_1",
  ):  # on the embeddings, and after the first layer ([T, B, F])
    dropped = np.asarray(drops[name]["__call__"][0]) == 0
    assert 0.3 < dropped.mean() < 0.7
    assert np.array_equal(dropped, np.broadcast_to(dropped[:1], dropped.shape)) == variational


def test_reversal_index_reverses_each_packed_sequence_in_place():
  segment_ids = jnp.array([[1, 1, 1, 2, 2, 0], [1, 1, 1, 1, 1, 1]])
  segment_ends = jnp.array([[2, 4], [5, 0]])
  starts = starts_of(segment_ids, segment_ends)
  np.testing.assert_array_equal(starts, [[0, 3], [0, 0]])
  index = reversal_index(segment_ids, starts, segment_ends)
  np.testing.assert_array_equal(index, [[2, 1, 0, 4, 3, 5], [5, 4, 3, 2, 1, 0]])
  np.testing.assert_array_equal(
    jnp.take_along_axis(index, index, axis=1), jnp.broadcast_to(jnp.arange(6), (2, 6))
  )


def test_backward_stack_reads_each_sequence_from_its_end():
  """The backward half of a bidirectional encoder at position t equals a forward stack with the
  backward stack's parameters run over the reversed sequence, at its position length-1-t."""
  encoder = Encoder(ModelConfig(V, E, H, L, "gru", bidirectional=True))
  tokens = jax.random.randint(jax.random.PRNGKey(0), (1, 7), 3, V)
  mask = jnp.arange(7)[None, :] < 5  # 5 real tokens, 2 of padding
  segment_ids, segment_ends = one_segment(mask)
  reversal = reversal_index(segment_ids, starts_of(segment_ids, segment_ends), segment_ends)
  carry = zero_carry("gru", L, 1, H)
  params = encoder.init(jax.random.PRNGKey(1), tokens, mask, carry, train=False, reversal=reversal)[
    "params"
  ]
  outputs, _ = encoder.apply(
    {"params": params}, tokens, mask, carry, train=False, reversal=reversal
  )
  backward_params = {
    "embed": params["embed"],
    **{f"layer_{i}": params[f"backward_layer_{i}"] for i in range(L)},
  }
  reversed_tokens = tokens[:, :5][:, ::-1]
  alone, _ = Encoder(ModelConfig(V, E, H, L, "gru")).apply(
    {"params": backward_params}, reversed_tokens, jnp.ones((1, 5), bool), carry, train=False
  )
  np.testing.assert_allclose(outputs[0, :5, H:], alone[0, ::-1], rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(outputs[0, 5:], 0.0)  # padding outputs stay zero


@pytest.mark.parametrize("pooling", ["last", "max", "concat"])
def test_a_backward_reading_classifier_is_a_forward_one_on_each_sequence_reversed(pooling):
  """`read_backward`: the same parameters, fed each sequence with its real tokens in reverse
  order, give a forward classifier the same logits (padded rows of different lengths)."""
  backward = SequenceClassifier(
    ModelConfig(
      V, E, H, L, "lstm", num_classes=3, head_widths=(8,), pooling=pooling, read_backward=True
    )
  )
  forward = SequenceClassifier(
    ModelConfig(V, E, H, L, "lstm", num_classes=3, head_widths=(8,), pooling=pooling)
  )
  lengths = jnp.array([7, 4, 1])
  tokens = jax.random.randint(jax.random.PRNGKey(0), (3, 7), 3, V)
  mask = jnp.arange(7)[None, :] < lengths[:, None]
  tokens = jnp.where(mask, tokens, 0)
  params = backward.init(jax.random.PRNGKey(1), tokens, mask, *one_segment(mask), train=False)[
    "params"
  ]
  reversed_tokens = jnp.stack(
    [jnp.concatenate([row[:n][::-1], row[n:]]) for row, n in zip(tokens, lengths.tolist())]
  )
  read_backward = backward.apply({"params": params}, tokens, mask, *one_segment(mask), train=False)
  read_forward = forward.apply(
    {"params": params}, reversed_tokens, mask, *one_segment(mask), train=False
  )
  np.testing.assert_allclose(read_backward, read_forward, rtol=1e-5, atol=1e-6)
  plain = forward.apply({"params": params}, tokens, mask, *one_segment(mask), train=False)
  # (a sequence of one token reads alike both ways)
  assert not np.allclose(read_backward[:2], plain[:2])


def test_max_pooling_is_the_elementwise_maximum_over_each_sequence():
  outputs = jax.random.normal(jax.random.PRNGKey(0), (2, 6, 3))
  segment_ids = jnp.array([[1, 1, 2, 2, 2, 0], [1, 1, 1, 0, 0, 0]])
  segment_ends = jnp.array([[1, 4, 0], [2, 0, 0]])
  pooled = pool(outputs, segment_ids, segment_ends, "max")
  np.testing.assert_allclose(pooled[0, 0], outputs[0, :2].max(axis=0))
  np.testing.assert_allclose(pooled[0, 1], outputs[0, 2:5].max(axis=0))
  np.testing.assert_array_equal(pooled[0, 2], 0.0)  # an empty slot
  np.testing.assert_allclose(pooled[1, 0], outputs[1, :3].max(axis=0))


@pytest.mark.parametrize("bidirectional", [False, True])
def test_concat_pooling_is_last_max_and_mean_side_by_side(bidirectional):
  tokens = jax.random.randint(jax.random.PRNGKey(0), (2, 7), 3, V)
  segment_ids = jnp.array([[1, 1, 1, 2, 2, 0, 0], [1, 1, 1, 1, 1, 1, 1]])
  segment_ends, mask = jnp.array([[2, 4], [6, 0]]), segment_ids > 0
  models = {
    pooling: SequenceClassifier(
      ModelConfig(
        V,
        E,
        H,
        1,
        "lstm",
        num_classes=2,
        head_widths=(),
        pooling=pooling,
        bidirectional=bidirectional,
      )
    )
    for pooling in ("last", "max", "mean", "concat")
  }
  params = models["concat"].init(
    jax.random.PRNGKey(1), tokens, mask, segment_ids, segment_ends, train=False
  )["params"]
  width = H * (2 if bidirectional else 1)
  assert params["head_out"]["kernel"].shape == (3 * width, 2)
  logits = models["concat"].apply(
    {"params": params}, tokens, mask, segment_ids, segment_ends, train=False
  )
  # The head is linear: its logits are the sum of what each pooled third contributes.
  kernel, bias = params["head_out"]["kernel"], params["head_out"]["bias"]
  expected = bias
  for third, pooling in enumerate(("last", "max", "mean")):
    part = {
      **params,
      "head_out": {"kernel": kernel[third * width : (third + 1) * width], "bias": jnp.zeros(2)},
    }
    expected = expected + models[pooling].apply(
      {"params": part}, tokens, mask, segment_ids, segment_ends, train=False
    )
  np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("embed_size", [H, 5])
def test_tied_output_layer_is_the_embedding_transposed(embed_size):
  model = LanguageModel(ModelConfig(V, embed_size, H, 1, "lstm", tie_embeddings=True))
  tokens = jax.random.randint(jax.random.PRNGKey(0), (2, 4), 0, V)
  mask, carry = jnp.ones((2, 4), bool), zero_carry("lstm", 1, 2, H)
  params = model.init(jax.random.PRNGKey(1), tokens, mask, carry, train=False)["params"]
  assert "kernel" not in params["lm_head"]  # no V x H matrix of its own
  assert ("projection" in params["lm_head"]) == (embed_size != H)
  logits, _ = model.apply({"params": params}, tokens, mask, carry, train=False)
  bumped = jax.tree.map(lambda x: x, params)
  bumped["encoder"]["embed"]["embedding"] = params["encoder"]["embed"]["embedding"].at[3].add(1.0)
  changed, _ = model.apply({"params": bumped}, jnp.zeros_like(tokens), mask, carry, train=False)
  same_input, _ = model.apply({"params": params}, jnp.zeros_like(tokens), mask, carry, train=False)
  # Token 3's embedding row is its output row too: only token 3's logit moves (token 0 is read).
  moved = np.abs(np.asarray(changed - same_input)).max(axis=(0, 1))
  assert moved[3] > 1e-3 and np.all(np.delete(moved, 3) == 0.0)


def test_joint_objective_token_loss_is_the_language_models_loss_on_each_sequence():
  """A classifier with a next-token head scores each packed sequence's next tokens exactly as
  a language model with the same encoder and head scores that sequence alone."""
  classifier = SequenceClassifier(
    ModelConfig(V, E, H, L, "lstm", num_classes=2, next_token_head=True)
  )
  lengths, width = [4, 3], 9
  sequences = [jax.random.randint(jax.random.PRNGKey(i), (n,), 3, V) for i, n in enumerate(lengths)]
  row = jnp.pad(jnp.concatenate(sequences), (0, width - 7))[None]
  segment_ids = jnp.pad(jnp.array([1] * 4 + [2] * 3), (0, width - 7))[None]
  batch = {
    "inputs": row,
    "mask": segment_ids > 0,
    "segment_ids": segment_ids,
    "segment_ends": jnp.array([[3, 6]]),
    "labels": jnp.array([[0, 1]]),
    "example_mask": jnp.array([[True, True]]),
  }
  params = classifier.init(
    jax.random.PRNGKey(1), row, batch["mask"], segment_ids, batch["segment_ends"], train=False
  )["params"]
  sums, _ = classify_loss(classifier, params, batch, None, {}, False)
  lm = LanguageModel(ModelConfig(V, E, H, L, "lstm"))
  lm_params = {"encoder": params["encoder"], "lm_head": params["lm_head"]}
  expected_sum, expected_weight = 0.0, 0.0
  for sequence in sequences:
    tokens = sequence[None]
    lm_batch = {
      "inputs": tokens[:, :-1],
      "targets": tokens[:, 1:],
      "mask": jnp.ones((1, len(sequence) - 1), bool),
      "resets": jnp.ones((1,), bool),
    }
    alone, _ = lm_loss(lm, lm_params, lm_batch, zero_carry("lstm", L, 1, H), {}, False)
    expected_sum, expected_weight = (
      expected_sum + alone["loss_sum"],
      expected_weight + alone["weight"],
    )
  assert float(sums["lm_weight"]) == expected_weight == 5.0
  np.testing.assert_allclose(sums["lm_loss_sum"], expected_sum, rtol=1e-5)


@pytest.mark.parametrize("tie", [True, False])
def test_a_smaller_softmax_predicts_the_most_frequent_tokens_and_rarer_targets_as_unknown(tie):
  """`--softmax_vocab_size=K`: the model reads all V tokens but predicts the first K (the most
  frequent); its logits are the full model's first K (same embedding), and a rarer target
  costs what `<unk>` costs."""
  K = 6
  small = LanguageModel(ModelConfig(V, E, H, 1, "lstm", tie_embeddings=tie, softmax_vocab_size=K))
  full = LanguageModel(ModelConfig(V, E, H, 1, "lstm", tie_embeddings=tie))
  tokens = jax.random.randint(jax.random.PRNGKey(0), (2, 5), 0, V)
  mask, carry = jnp.ones((2, 5), bool), zero_carry("lstm", 1, 2, H)
  params = small.init(jax.random.PRNGKey(1), tokens, mask, carry, train=False)["params"]
  assert params["encoder"]["embed"]["embedding"].shape == (V, E) and params["lm_head"][
    "bias"
  ].shape == (K,)
  full_params = full.init(jax.random.PRNGKey(1), tokens, mask, carry, train=False)["params"]
  full_params = jax.tree.map(lambda x: x, full_params)
  full_params["encoder"] = params["encoder"]
  for name, value in params[
    "lm_head"
  ].items():  # the full head with the small one's first K outputs
    # (a tied head's projection to the embedding width is not)
    is_output = name in (
      "bias",
      "kernel",
    )
    full_params["lm_head"][name] = (
      full_params["lm_head"][name].at[..., :K].set(value) if is_output else value
    )
  logits, _ = small.apply({"params": params}, tokens, mask, carry, train=False)
  full_logits, _ = full.apply({"params": full_params}, tokens, mask, carry, train=False)
  assert logits.shape == (2, 5, K)
  np.testing.assert_allclose(logits, full_logits[..., :K], rtol=1e-6, atol=1e-6)

  rare = jnp.full((2, 5), V - 1)  # beyond the softmax
  batch = {"inputs": tokens, "targets": rare, "mask": mask, "resets": jnp.ones((2,), bool)}
  sums, _ = lm_loss(small, params, batch, carry, {}, False)
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  np.testing.assert_allclose(sums["loss_sum"], -log_probs[..., 1].sum(), rtol=1e-5)  # <unk> is id 1


@pytest.mark.parametrize(
  "task, cell, bidirectional", [("lm", "lstm", False), ("classify", "gru", True)]
)
def test_chrono_init_reaches_every_recurrent_layer_the_trainer_builds(task, cell, bidirectional):
  """--chrono_init=N: each layer of both stacks draws its own keep-gate biases in [0, log(N - 1)]."""
  config = Config(
    task=task,
    model=cell,
    num_layers=2,
    hidden_size=32,
    embed_size=8,
    batch_size=4,
    seq_len=8,
    bidirectional=bidirectional,
    chrono_init=50,
  )
  plain = dataclasses.replace(config, chrono_init=0)
  params, plain_params = (
    jax.jit(initial_state_fn(c, build_model(c, V, 3), make_optimizer_for(c)))(
      jax.random.PRNGKey(0)
    ).params
    for c in (config, plain)
  )
  encoder = params["encoder"]
  layers = [name for name in encoder if "layer_" in name]
  assert len(layers) == (4 if bidirectional else 2)
  keeps = []
  for name in layers:
    keep = np.split(np.asarray(encoder[name]["b"]), CELLS[cell].num_gates)[1]
    assert 0.0 <= keep.min() and keep.max() <= np.log(49) + 1e-6 and keep.std() > 0.5, name
    keeps.append(keep)
    # Only the biases differ from the run without the flag.
    for weight in ("W_x", "W_h"):
      np.testing.assert_array_equal(encoder[name][weight], plain_params["encoder"][name][weight])
  assert len({keep.tobytes() for keep in keeps}) == len(keeps)  # each layer draws its own


@pytest.mark.parametrize(
  "flags, message",
  [
    (dict(chrono_init=2), "--chrono_init: must be 0 .* at least 3 steps, got 2"),
    (
      dict(chrono_init=100, model="rnn"),
      "--chrono_init: sets the gates' biases: --model=rnn has no gates",
    ),
  ],
)
def test_chrono_init_is_refused_where_it_cannot_apply(flags, message):
  with pytest.raises(ConfigError, match=message):
    validate(Config(**flags))
