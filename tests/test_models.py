"""Whole models: padding changes nothing, and carried windows equal one long sequence."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from training.models import LanguageModel, SequenceClassifier, zero_carry

V, E, H, L = 11, 6, 8, 2


def one_segment(mask):
  """segment_ids and segment_ends of unpacked rows (one sequence each)."""
  return mask.astype(jnp.int32), jnp.maximum(mask.sum(axis=1) - 1, 0)[:, None]


def test_classifier_padded_batch_equals_each_sequence_alone():
  model = SequenceClassifier(V, E, H, L, "gru", num_classes=3, head_widths=(16, 16))
  tokens = jax.random.randint(jax.random.PRNGKey(0), (3, 9), 3, V)
  lengths = jnp.array([9, 5, 2])
  mask = jnp.arange(9)[None, :] < lengths[:, None]
  params = model.init(jax.random.PRNGKey(1), tokens, mask, *one_segment(mask), train=False)["params"]
  padded = model.apply({"params": params}, jnp.where(mask, tokens, 0), mask, *one_segment(mask), train=False)
  for row, length in enumerate(lengths.tolist()):
    alone_mask = jnp.ones((1, length), bool)
    alone = model.apply({"params": params}, tokens[row:row + 1, :length], alone_mask, *one_segment(alone_mask),
                        train=False)
    np.testing.assert_allclose(padded[row], alone[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("pooling", ["last", "mean"])
@pytest.mark.parametrize("cell", ["lstm", "rnn"])
def test_packed_rows_give_exactly_the_unpacked_results(pooling, cell):
  model = SequenceClassifier(V, E, H, L, cell, num_classes=3, head_widths=(8,), pooling=pooling)
  lengths = [4, 2, 3, 5, 1]
  sequences = [jax.random.randint(jax.random.PRNGKey(i), (n,), 3, V) for i, n in enumerate(lengths)]
  # Unpacked: one sequence per row, padded to 5.
  tokens = jnp.stack([jnp.pad(s, (0, 5 - len(s))) for s in sequences])
  mask = jnp.arange(5)[None, :] < jnp.array(lengths)[:, None]
  params = model.init(jax.random.PRNGKey(9), tokens, mask, *one_segment(mask), train=False)["params"]
  unpacked = model.apply({"params": params}, tokens, mask, *one_segment(mask), train=False)[:, 0]
  # Packed: rows [4, 2, 3 | padding] and [5, 1 | padding], width 10, up to 3 sequences a row.
  rows, ids, ends = [], [], []
  for members in ([0, 1, 2], [3, 4]):
    row = jnp.concatenate([sequences[i] for i in members])
    segment = jnp.concatenate([jnp.full(lengths[i], k + 1) for k, i in enumerate(members)])
    rows.append(jnp.pad(row, (0, 10 - len(row))))
    ids.append(jnp.pad(segment, (0, 10 - len(segment))))
    ends.append(jnp.pad(jnp.cumsum(jnp.array([lengths[i] for i in members])) - 1, (0, 3 - len(members))))
  segment_ids = jnp.stack(ids)
  packed = model.apply({"params": params}, jnp.stack(rows), segment_ids > 0, segment_ids, jnp.stack(ends),
                       train=False)
  np.testing.assert_allclose(jnp.concatenate([packed[0, :3], packed[1, :2]]), unpacked, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_classifier_features_ignore_what_follows_the_sequence(pooling):
  model = SequenceClassifier(V, E, H, 1, "lstm", num_classes=2, pooling=pooling)
  tokens = jax.random.randint(jax.random.PRNGKey(0), (2, 6), 3, V)
  mask = jnp.array([[1, 1, 1, 0, 0, 0]] * 2, bool)
  params = model.init(jax.random.PRNGKey(1), tokens, mask, *one_segment(mask), train=False)["params"]
  other_tail = tokens.at[:, 3:].set(4)  # different tokens where the mask is off
  np.testing.assert_allclose(model.apply({"params": params}, tokens, mask, *one_segment(mask), train=False),
                             model.apply({"params": params}, other_tail, mask, *one_segment(mask), train=False))


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_carried_state_makes_two_windows_equal_one_long_window(cell):
  model = LanguageModel(V, E, H, L, cell)
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
  model = LanguageModel(V, E, H, 1, "lstm", dropout_rate=0.5)
  tokens = jnp.ones((2, 5), jnp.int32)
  mask = jnp.ones((2, 5), bool)
  carry = zero_carry("lstm", 1, 2, H)
  params = model.init(jax.random.PRNGKey(1), tokens, mask, carry, train=False)["params"]
  run = lambda seed, train: model.apply({"params": params}, tokens, mask, carry, train=train,
                                        rngs={"dropout": jax.random.PRNGKey(seed)})[0]
  np.testing.assert_array_equal(run(0, False), run(1, False))
  assert not np.allclose(run(0, True), run(1, True))
  np.testing.assert_array_equal(run(0, True), run(0, True))
