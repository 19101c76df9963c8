"""The optimiser's fine-tuning options: the encoder's steps scaled, and frozen at first; the
learning-rate schedules."""

import logging
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

from training.state import make_optimizer, make_schedule

PARAMS = {
  "encoder": {"embed": {"embedding": jnp.ones((4, 3))}, "layer_0": {"W_h": jnp.ones((3, 12))}},
  "head": {"kernel": jnp.ones((3, 2))},
}
GRADS = jax.tree.map(lambda p: jnp.linspace(-1.0, 2.0, p.size).reshape(p.shape), PARAMS)


def updates_over(steps, **options):
  optimizer = make_optimizer(
    learning_rate=0.1,
    num_steps=10,
    warmup_steps=0,
    lr_decay="none",
    weight_decay=0.0,
    grad_clip=1.0,
    **options,
  )
  state, params, history = optimizer.init(PARAMS), PARAMS, []
  for _ in range(steps):
    updates, state = optimizer.update(GRADS, state, params)
    params = optax.apply_updates(params, updates)
    history.append(updates)
  return history


def test_encoder_steps_are_scaled_and_the_head_is_untouched():
  plain, scaled = updates_over(3), updates_over(3, encoder_lr_scale=0.25)
  for a, b in zip(plain, scaled):
    jax.tree.map(
      lambda x, y: np.testing.assert_allclose(0.25 * x, y, rtol=1e-6), a["encoder"], b["encoder"]
    )
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(x, y), a["head"], b["head"])


def test_a_frozen_encoder_starts_moving_after_its_steps():
  history = updates_over(4, freeze_encoder_steps=2)
  for step, updates in enumerate(history):
    moved = [bool(jnp.any(u != 0)) for u in jax.tree.leaves(updates["encoder"])]
    assert all(moved) == (step >= 2) and any(moved) == (step >= 2)
    assert bool(jnp.all(updates["head"]["kernel"] != 0))


def test_the_freeze_waits_for_the_per_token_steps():
  """With `--target_lm_steps=2` the encoder learns in the first two updates, is frozen in the
  next `--freeze_encoder_steps=2` (the new head's first per-sequence steps), then learns again."""
  history = updates_over(6, freeze_encoder_steps=2, freeze_encoder_from=2)
  for step, updates in enumerate(history):
    moved = [bool(jnp.any(u != 0)) for u in jax.tree.leaves(updates["encoder"])]
    assert all(moved) == (step not in (2, 3)) and any(moved) == (step not in (2, 3)), step


def test_frozen_embeddings_never_move_and_the_rest_trains():
  params = {
    "encoder": {
      "embed": {"embedding": jnp.ones((4, 3))},
      "backward_embed": {"embedding": jnp.ones((4, 3))},
      "layer_0": {"W_h": jnp.ones((3, 12))},
    },
    "head": {"kernel": jnp.ones((3, 2))},
  }
  grads = jax.tree.map(lambda p: jnp.linspace(-1.0, 2.0, p.size).reshape(p.shape), params)
  optimizer = make_optimizer(
    learning_rate=0.1,
    num_steps=10,
    warmup_steps=0,
    lr_decay="none",
    weight_decay=0.1,
    grad_clip=1.0,
    freeze_embeddings=True,
  )
  state = optimizer.init(params)
  for _ in range(3):
    updates, state = optimizer.update(grads, state, params)
    params = optax.apply_updates(params, updates)
  for embedding in ("embed", "backward_embed"):  # weight decay included
    np.testing.assert_array_equal(params["encoder"][embedding]["embedding"], jnp.ones((4, 3)))
  assert bool(jnp.all(params["encoder"]["layer_0"]["W_h"] != 1.0)) and bool(
    jnp.all(params["head"]["kernel"] != 1.0)
  )


def test_frozen_embeddings_count_neither_in_the_clipping_norm_nor_in_adams_moments():
  """A large gradient on the frozen table must not shrink the other parameters' clipped steps:
  they move exactly as they do when the embedding's gradient is zero; and the optimiser keeps
  no moments of the table's shape."""
  params = {
    "encoder": {"embed": {"embedding": jnp.ones((40, 3))}, "layer_0": {"W_h": jnp.ones((3, 12))}},
    "head": {"kernel": jnp.ones((3, 2))},
  }
  grads = jax.tree.map(lambda p: jnp.linspace(-1.0, 2.0, p.size).reshape(p.shape), params)
  grads["encoder"]["embed"]["embedding"] = jnp.full((40, 3), 100.0)  # dominates the global norm
  without_table = jax.tree.map(jnp.copy, grads)
  without_table["encoder"]["embed"]["embedding"] = jnp.zeros((40, 3))
  options = dict(
    learning_rate=0.1,
    num_steps=10,
    warmup_steps=0,
    lr_decay="none",
    weight_decay=0.0,
    grad_clip=1.0,
    ema_decay=0.9,
  )
  frozen = make_optimizer(**options, freeze_embeddings=True)
  plain = make_optimizer(**options)
  frozen_state, plain_state = frozen.init(params), plain.init(params)
  for _ in range(3):
    frozen_updates, frozen_state = frozen.update(grads, frozen_state, params)
    plain_updates, plain_state = plain.update(without_table, plain_state, params)
    np.testing.assert_array_equal(frozen_updates["encoder"]["embed"]["embedding"], 0.0)
    for part in (("encoder", "layer_0", "W_h"), ("head", "kernel")):
      a, b = frozen_updates, plain_updates
      for key in part:
        a, b = a[key], b[key]
      np.testing.assert_allclose(a, b, rtol=1e-6)
  table_shaped = [
    leaf for leaf in jax.tree.leaves(frozen_state) if getattr(leaf, "shape", None) == (40, 3)
  ]
  assert len(table_shaped) == 1  # the parameters' moving average only; no Adam moments
  assert len(jax.tree.leaves(plain_state)) > len(jax.tree.leaves(frozen_state))


def test_default_options_keep_the_optimiser_state_as_it_was():
  default = make_optimizer(
    learning_rate=0.1,
    num_steps=10,
    warmup_steps=0,
    lr_decay="none",
    weight_decay=0.0,
    grad_clip=1.0,
  )
  explicit = make_optimizer(
    learning_rate=0.1,
    num_steps=10,
    warmup_steps=0,
    lr_decay="none",
    weight_decay=0.0,
    grad_clip=1.0,
    encoder_lr_scale=1.0,
    freeze_encoder_steps=0,
  )
  assert jax.tree.structure(default.init(PARAMS)) == jax.tree.structure(explicit.init(PARAMS))
  assert len(default.init(PARAMS)) == 2  # clip, adamw: no masked transform added


def test_the_moving_average_follows_its_recurrence_with_a_growing_decay():
  from training.state import updated_average

  average, history = {"w": jnp.zeros(3)}, [jnp.full(3, float(v)) for v in (1.0, 2.0, 4.0, 8.0)]
  expected = np.zeros(3)
  for step, params in enumerate(history, start=1):
    average = updated_average(average, {"w": params}, 0.9, jnp.int32(step))
    rate = min(0.9, (1 + step) / (10 + step))  # 2/11, 3/12, 4/13, 5/14: below 0.9 at first
    expected = rate * expected + (1 - rate) * np.asarray(params)
  np.testing.assert_allclose(average["w"], expected, rtol=1e-6)
  assert updated_average({"w": jnp.zeros(1)}, {"w": jnp.ones(1)}, 0.5, jnp.int32(1000))["w"] == 0.5


def test_the_optimiser_keeps_the_average_of_the_parameters_it_produced():
  from training.state import TrainState, eval_params, updated_average, with_params

  optimizer = make_optimizer(
    learning_rate=0.1,
    num_steps=10,
    warmup_steps=0,
    lr_decay="none",
    weight_decay=0.0,
    grad_clip=1.0,
    freeze_encoder_steps=1,
    ema_decay=0.5,
  )
  state = TrainState(
    step=jnp.int32(0), params=PARAMS, opt_state=optimizer.init(PARAMS), rng=None, carry=None
  )
  start = jax.tree.map(lambda p: p + 1.0, PARAMS)  # e.g. a language model's (--init_from)
  state = with_params(state, start)
  params, opt_state, expected = state.params, state.opt_state, start
  for step in range(1, 4):
    updates, opt_state = optimizer.update(GRADS, opt_state, params)
    params = optax.apply_updates(params, updates)
    expected = updated_average(expected, params, 0.5, jnp.int32(step))
  average = eval_params(
    TrainState(step=jnp.int32(3), params=params, opt_state=opt_state, rng=None, carry=None)
  )
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), average, expected)
  plain = make_optimizer(
    learning_rate=0.1,
    num_steps=10,
    warmup_steps=0,
    lr_decay="none",
    weight_decay=0.0,
    grad_clip=1.0,
  )
  state = TrainState(
    step=jnp.int32(0), params=PARAMS, opt_state=plain.init(PARAMS), rng=None, carry=None
  )
  assert eval_params(state) is PARAMS and with_params(state, start).opt_state == state.opt_state


def test_cosine_decay_with_and_without_warm_up_follows_its_formula_and_logs_nothing(caplog):
  with caplog.at_level(logging.INFO):
    plain = make_schedule(learning_rate=0.1, num_steps=100, warmup_steps=0, lr_decay="cosine")
    warmed = make_schedule(learning_rate=0.1, num_steps=100, warmup_steps=10, lr_decay="cosine")
    values = {step: (float(plain(step)), float(warmed(step))) for step in (0, 5, 10, 55, 100)}
  # optax logs a line about a zero-step linear schedule in every run without a warm-up, which
  # has none to speak of.
  assert not [record.getMessage() for record in caplog.records]
  for step, (no_warm_up, warm_up) in values.items():
    np.testing.assert_allclose(no_warm_up, 0.05 * (1 + math.cos(math.pi * step / 100)), atol=1e-7)
    expected = 0.1 * step / 10 if step <= 10 else 0.05 * (1 + math.cos(math.pi * (step - 10) / 90))
    np.testing.assert_allclose(warm_up, expected, atol=1e-7)
