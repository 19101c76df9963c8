"""Per-token and per-sequence losses on hand-made batches."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from training.loop.objectives import (
  combine_sums,
  finalize_metrics,
  no_sums,
  sequence_cross_entropy,
  token_cross_entropy,
)


def test_token_loss_averages_over_real_tokens_only():
  # Two positions of a 2-token vocabulary: uniform logits (loss ln 2) and a confident right
  # answer (loss ~0); the third position is padding and must not count, however wrong.
  logits = jnp.array([[[0.0, 0.0], [0.0, 50.0], [50.0, 0.0]]])
  targets = jnp.array([[0, 1, 1]])
  mask = jnp.array([[True, True, False]])
  sums = token_cross_entropy(logits, targets, mask)
  assert float(sums["weight"]) == 2
  assert finalize_metrics(sums)["loss"] == pytest.approx(math.log(2) / 2, rel=1e-6)


def test_sequence_loss_and_accuracy_skip_padding_rows():
  logits = jnp.array([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 5.0, 0.0], [9.0, 0.0, 0.0]])
  labels = jnp.array([0, 2, 0, 1])
  example_mask = jnp.array([True, True, True, False])
  sums = sequence_cross_entropy(logits, labels, example_mask)
  expected = [math.log(1 + 2 * math.exp(-2)), math.log(3), math.log(2 + math.exp(5)) - 0.0]
  metrics = finalize_metrics(sums)
  assert metrics["loss"] == pytest.approx(np.mean(expected), rel=1e-6)
  # Row 0 right, row 1 a tie that argmax breaks towards class 0 (wrong), row 2 wrong.
  assert metrics["accuracy"] == pytest.approx(1 / 3)


def test_sums_from_two_halves_give_the_mean_of_the_whole():
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.normal(size=(4, 6, 5)))
  targets = jnp.asarray(rng.integers(0, 5, size=(4, 6)))
  mask = jnp.asarray(rng.random((4, 6)) < 0.7)
  whole = token_cross_entropy(logits, targets, mask)
  halves = [
    token_cross_entropy(logits[i : i + 2], targets[i : i + 2], mask[i : i + 2]) for i in (0, 2)
  ]
  combined = {k: halves[0][k] + halves[1][k] for k in whole}
  assert finalize_metrics(combined)["loss"] == pytest.approx(
    finalize_metrics(whole)["loss"], rel=1e-6
  )


def test_no_sums_is_what_any_steps_sums_combine_with_unchanged():
  step = {
    "loss_sum": jnp.float32(2.5),
    "weight": jnp.float32(-1.0),
    "steps": jnp.int32(1),
    "first_nonfinite_step_min": jnp.int32(7),
    "grad_norm_min": jnp.float32(-3.0),
  }
  empty = no_sums(jax.eval_shape(lambda: step))
  assert jax.tree.map(lambda x: x.dtype, empty) == jax.tree.map(lambda x: x.dtype, step)
  assert combine_sums(empty, step) == step
  later = {**step, "loss_sum": jnp.float32(1.0), "first_nonfinite_step_min": jnp.int32(3)}
  both = combine_sums(combine_sums(empty, step), later)
  assert float(both["loss_sum"]) == 3.5 and int(both["first_nonfinite_step_min"]) == 3
