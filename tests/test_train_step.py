"""The train step picks one time loop for the whole model per batch (`fast_path`): the same
update as letting every layer pick for itself, on full batches (the fast loop) and on padded or
packed ones (the masked scan), with the portable scan and with oneDNN's kernel."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tests.promises import require_onednn
from training.loop import parallel
from training.loop.objectives import FAST_PATHS, OBJECTIVES, combine_sums, no_sums
from training.loop.steps import train_step
from training.model.kernels import onednn
from training.model.models import LanguageModel, ModelConfig, SequenceClassifier, with_path
from training.state import create_train_state

V, E, H, L, B, T = 13, 6, 8, 2, 3, 7
KERNELS = [
  "scan",
  "onednn",
]  # (the kernel's cases fail where it is promised and unavailable: tests/promises.py)


def lm_batch(padded: bool):
  tokens = jax.random.randint(jax.random.PRNGKey(0), (B, T + 1), 1, V)
  lengths = jnp.array([T, T - 3, 2]) if padded else jnp.full((B,), T)
  mask = jnp.arange(T)[None, :] < lengths[:, None]
  return {
    "inputs": jnp.where(mask, tokens[:, :-1], 0),
    "targets": jnp.where(mask, tokens[:, 1:], 0),
    "mask": mask,
    "resets": jnp.array([True, False, True]),
  }


def classify_batch(kind: str):
  tokens = jax.random.randint(jax.random.PRNGKey(1), (B, T), 1, V)
  if kind == "packed":  # row 0 holds two sequences (3 and 4 tokens)
    segment_ids = jnp.array([[1, 1, 1, 2, 2, 2, 2], [1] * 5 + [0] * 2, [1] * 7])
    segment_ends = jnp.array([[2, 6], [4, -1], [6, -1]])
  else:
    lengths = jnp.array([T, 4, 2]) if kind == "right-padded" else jnp.full((B,), T)
    segment_ids = (jnp.arange(T)[None, :] < lengths[:, None]).astype(jnp.int32)
    segment_ends = jnp.stack([lengths - 1, jnp.full((B,), -1)], axis=1)
  mask = segment_ids > 0
  return {
    "inputs": jnp.where(mask, tokens, 0),
    "mask": mask,
    "segment_ids": segment_ids,
    "segment_ends": segment_ends,
    "labels": jnp.array([[0, 1], [2, 0], [1, 0]]),
    "example_mask": segment_ends >= 0,
  }


def one_step(task, model, batch, fast_path):
  optimizer = optax.adam(1e-2)
  if task == "lm":
    carry = jax.random.normal(jax.random.PRNGKey(2), (L, 2, B, H))
    init_args = (batch["inputs"], batch["mask"], carry)
  else:
    carry = None
    init_args = (batch["inputs"], batch["mask"], batch["segment_ids"], batch["segment_ends"])
  state = create_train_state(jax.random.PRNGKey(3), model, optimizer, init_args, carry)
  step = jax.jit(
    lambda state, batch: train_step(
      state,
      batch,
      model=model,
      optimizer=optimizer,
      objective=OBJECTIVES[task],
      fast_path=fast_path,
    )
  )
  new_state, metrics = step(state, batch)
  return new_state.params, new_state.carry, metrics["loss_sum"]


CASES = [
  ("lm", False),
  ("lm", True),
  ("classify", "full"),
  ("classify", "right-padded"),
  ("classify", "packed"),
]


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("task,kind", CASES)
def test_one_choice_per_batch_updates_as_each_layer_choosing_does(task, kind, kernel):
  if kernel == "onednn":
    require_onednn()
  if task == "lm":
    model, batch = LanguageModel(ModelConfig(V, E, H, L, "lstm", kernel=kernel)), lm_batch(kind)
  else:
    model = SequenceClassifier(
      ModelConfig(V, E, H, L, "lstm", num_classes=3, head_widths=(8,), pooling="max", kernel=kernel)
    )
    batch = classify_batch(kind)
  applies = bool(FAST_PATHS[task](batch))
  # Which loop the batch gets: the fast one on full batches and on a classifier's right-padded
  # rows (it never reads their final state); never on packed rows or a language model's padding.
  assert applies == (kind in (False, "full", "right-padded"))
  calls_before = onednn.calls()["forward_training"]
  once = jax.block_until_ready(one_step(task, model, batch, FAST_PATHS[task]))
  # The kernel runs (once per layer) exactly where the batch takes the fast loop.
  kernel_ran = onednn.calls()["forward_training"] - calls_before
  assert kernel_ran == (L if kernel == "onednn" and applies else 0)
  per_layer = one_step(task, model, batch, None)
  for a, b in zip(jax.tree.leaves(once), jax.tree.leaves(per_layer)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
  # The fast loop, forced on a batch it does not apply to, computes something else (a language
  # model's final state, a packed row's second sequence): the choice matters.
  if not applies:
    forced = one_step(task, with_path(model, "fast"), batch, None)
    assert not all(
      np.allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
      for a, b in zip(jax.tree.leaves(forced), jax.tree.leaves(once))
    )


def test_per_token_steps_leave_the_classifier_head_alone_then_both_losses_train():
  """`--target_lm_steps`: a classifier's first steps train on the next-token loss alone (the
  encoder and the next-token head move, the classifier's head does not); after them the step is
  the joint one, exactly as with no per-token steps."""
  model = SequenceClassifier(
    ModelConfig(
      V, E, H, L, "lstm", num_classes=3, head_widths=(8,), pooling="max", next_token_head=True
    )
  )
  batch, optimizer = classify_batch("packed"), optax.adam(1e-2)
  init_args = (batch["inputs"], batch["mask"], batch["segment_ids"], batch["segment_ends"])
  state = create_train_state(jax.random.PRNGKey(3), model, optimizer, init_args, None)
  step = lambda target_lm_steps, lm_loss_weight: jax.jit(
    lambda state: train_step(
      state,
      batch,
      model=model,
      optimizer=optimizer,
      objective=OBJECTIVES["classify"],
      lm_loss_weight=lm_loss_weight,
      target_lm_steps=target_lm_steps,
    )[0]
  )
  moved = lambda before, after: {
    name: not all(
      np.array_equal(a, b)
      for a, b in zip(jax.tree.leaves(before[name]), jax.tree.leaves(after[name]))
    )
    for name in before
  }

  per_token = step(target_lm_steps=1, lm_loss_weight=0.0)(state)  # step 1 of 1 per-token step
  changed = moved(state.params, per_token.params)
  assert changed["encoder"] and changed["lm_head"]
  assert not any(changed[name] for name in changed if name not in ("encoder", "lm_head")), changed
  # The per-token step is the step of the next-token loss alone: a joint step whose per-sequence
  # part is zero gives the same update only if the weights are right, so compare with a
  # classifier step whose labels are all masked out (no per-sequence loss at all).
  no_labels = dict(batch, example_mask=jnp.zeros_like(batch["example_mask"]))
  lm_only = jax.jit(
    lambda state: train_step(
      state,
      no_labels,
      model=model,
      optimizer=optimizer,
      objective=OBJECTIVES["classify"],
      lm_loss_weight=1.0,
    )[0]
  )(state)
  for a, b in zip(jax.tree.leaves(per_token.params), jax.tree.leaves(lm_only.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)

  # Step 2 of a run with one per-token step is the joint step.
  after = step(target_lm_steps=1, lm_loss_weight=0.5)(per_token)
  joint = step(target_lm_steps=0, lm_loss_weight=0.5)(per_token)
  assert all(moved(per_token.params, after.params).values())
  for a, b in zip(jax.tree.leaves(after.params), jax.tree.leaves(joint.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_runs_train_step_is_traced_once_for_its_sums_shapes_and_its_compiled_call():
  """A run asks for the shapes of the step's metric sums before its first step; the compiled
  step must reuse that trace (a second trace was a second of every run's start)."""
  model = LanguageModel(ModelConfig(V, E, H, L, "lstm"))
  optimizer = optax.adam(1e-2)
  batch = jax.tree.map(np.asarray, lm_batch(padded=False))  # host arrays, as the trainer feeds
  carry = jnp.zeros((L, 2, B, H))
  init = jax.jit(
    lambda rng: create_train_state(
      rng, model, optimizer, (batch["inputs"], batch["mask"], carry), carry
    )
  )
  traces = []

  def counted_step(state, batch):
    traces.append(batch["inputs"].shape)
    return train_step(state, batch, model=model, optimizer=optimizer, objective=OBJECTIVES["lm"])

  mesh = parallel.make_mesh()
  abstract_state = jax.eval_shape(init, jax.random.PRNGKey(0))
  compiled, _, sums_shapes = parallel.compile_train_step(
    counted_step, abstract_state, mesh, "jit", combine_sums
  )
  window_sums = jax.jit(
    lambda: no_sums(sums_shapes(batch)), out_shardings=parallel.replicated(mesh)
  )()
  shardings = parallel.shardings_of(parallel.state_specs(abstract_state), mesh)
  state = jax.jit(init, out_shardings=shardings)(jax.random.PRNGKey(0))
  state, window_sums = compiled(state, parallel.train_step_batch(batch, mesh), window_sums)
  state, window_sums = compiled(state, parallel.train_step_batch(batch, mesh), window_sums)
  assert traces == [(B, T)]
  assert float(window_sums["weight"]) == 2 * B * T  # both steps ran, and added their sums
