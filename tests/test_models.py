"""Whole models: padding changes nothing, and carried windows equal one long sequence."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from training.models import LanguageModel, SequenceClassifier, zero_carry

V, E, H, L = 11, 6, 8, 2


def test_classifier_padded_batch_equals_each_sequence_alone():
  model = SequenceClassifier(V, E, H, L, "gru", num_classes=3, head_widths=(16, 16))
  tokens = jax.random.randint(jax.random.PRNGKey(0), (3, 9), 3, V)
  lengths = jnp.array([9, 5, 2])
  mask = jnp.arange(9)[None, :] < lengths[:, None]
  params = model.init(jax.random.PRNGKey(1), tokens, mask, train=False)["params"]
  padded = model.apply({"params": params}, jnp.where(mask, tokens, 0), mask, train=False)
  for row, length in enumerate(lengths.tolist()):
    alone = model.apply({"params": params}, tokens[row:row + 1, :length], jnp.ones((1, length), bool),
                        train=False)
    np.testing.assert_allclose(padded[row], alone[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_classifier_features_ignore_what_follows_the_sequence(pooling):
  model = SequenceClassifier(V, E, H, 1, "lstm", num_classes=2, pooling=pooling)
  tokens = jax.random.randint(jax.random.PRNGKey(0), (2, 6), 3, V)
  mask = jnp.array([[1, 1, 1, 0, 0, 0]] * 2, bool)
  params = model.init(jax.random.PRNGKey(1), tokens, mask, train=False)["params"]
  other_tail = tokens.at[:, 3:].set(4)  # different tokens where the mask is off
  np.testing.assert_allclose(model.apply({"params": params}, tokens, mask, train=False),
                             model.apply({"params": params}, other_tail, mask, train=False))


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
