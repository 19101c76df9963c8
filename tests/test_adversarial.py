"""Adversarial training on the embeddings (`--adversarial_epsilon`, training/loop/adversarial.py):
the perturbation is the gradient with respect to each sequence's embeddings, scaled to a
fraction of that sequence's embedding norm; it raises the loss as the gradient predicts (finite
differences) and more than random perturbations of the same size; and the step follows the
gradient of the clean plus the perturbed loss, on packed, padded and backward-reading batches."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tests.test_train import TINY, read_rows
from tests.test_train_step import B, E, H, L, V, classify_batch, lm_batch
from training.config import ConfigError, validate
from training.loop import adversarial
from training.loop.objectives import OBJECTIVES
from training.loop.steps import train_step
from training.loop.trainer import train_and_evaluate
from training.model.models import LanguageModel, ModelConfig, SequenceClassifier
from training.state import create_train_state

MODELS = {
  "forward": dict(),
  "read_backward": dict(read_backward=True),
  "bidirectional, two embeddings": dict(bidirectional=True, backward_embedding=True),
}


def classifier(**kwargs):
  return SequenceClassifier(
    ModelConfig(V, E, H, L, "lstm", num_classes=3, head_widths=(8,), pooling="max", **kwargs)
  )


def setup(task, model_kind="forward", batch_kind="packed"):
  if task == "lm":
    model, batch = LanguageModel(ModelConfig(V, E, H, L, "lstm")), lm_batch(padded=True)
    carry = jax.random.normal(jax.random.PRNGKey(2), (L, 2, B, H))
    init_args = (batch["inputs"], batch["mask"], carry)
  else:
    model, batch, carry = classifier(**MODELS[model_kind]), classify_batch(batch_kind), None
    init_args = (batch["inputs"], batch["mask"], batch["segment_ids"], batch["segment_ends"])
  optimizer = optax.sgd(0.1)
  state = create_train_state(jax.random.PRNGKey(3), model, optimizer, init_args, carry)
  return model, batch, optimizer, state


def loss_at(task, model, params, batch, carry, perturbations):
  """The mean loss of `batch` with these perturbations of the embeddings (no dropout)."""
  sums, _ = OBJECTIVES[task](model, params, batch, carry, {}, False, perturbations)
  return sums["loss_sum"] / sums["weight"]


def sequences_of(groups):
  """(row, positions) of every sequence in `groups` [B, T]."""
  groups = np.asarray(groups)
  return [
    (row, np.flatnonzero(groups[row] == g))
    for row in range(groups.shape[0])
    for g in np.unique(groups[row])
    if g > 0
  ]


@pytest.mark.parametrize("model_kind", list(MODELS))
def test_the_perturbation_is_each_sequences_gradient_scaled_to_a_fraction_of_its_embeddings(
  model_kind,
):
  model, batch, _, state = setup("classify", model_kind, "packed")
  zeros = adversarial.zero_perturbations(model, state.params, batch["inputs"])
  expected_tables = (
    {"embedded", "backward_embedded"} if model_kind.startswith("bidirectional") else {"embedded"}
  )
  assert set(zeros["encoder"]) == expected_tables
  gradients = jax.grad(lambda p: loss_at("classify", model, state.params, batch, None, p))(zeros)
  groups = np.asarray(batch["segment_ids"])
  epsilon = 0.3
  for table, name in (("embed", "embedded"), ("backward_embed", "backward_embedded")):
    if name not in zeros["encoder"]:
      continue
    gradient = np.asarray(gradients["encoder"][name])  # [T, B, E]
    embedded = np.asarray(state.params["encoder"][table]["embedding"])[
      np.asarray(batch["inputs"]).T
    ]
    got = np.asarray(
      adversarial.perturbation(
        jnp.asarray(gradient), jnp.asarray(embedded), batch["segment_ids"], epsilon
      )
    )
    # Padding is neither perturbed nor counted.
    np.testing.assert_array_equal(got[groups.T == 0], 0.0)
    for row, positions in sequences_of(
      groups
    ):  # row 0 holds two sequences: each is scaled on its own
      g, r, e = gradient[positions, row], got[positions, row], embedded[positions, row]
      assert np.linalg.norm(g) > 0
      np.testing.assert_allclose(np.linalg.norm(r), epsilon * np.linalg.norm(e), rtol=1e-5)
      np.testing.assert_allclose(
        r, epsilon * np.linalg.norm(e) * g / np.linalg.norm(g), rtol=1e-4, atol=1e-7
      )


@pytest.mark.parametrize("task", ["lm", "classify"])
def test_the_perturbation_raises_the_loss_as_its_gradient_predicts_and_more_than_random_ones(task):
  model, batch, _, state = setup(task)
  carry = state.carry
  params = state.params
  zeros = adversarial.zero_perturbations(model, params, batch["inputs"])
  loss = lambda p: loss_at(task, model, params, batch, carry, p)
  gradient = jax.grad(loss)(zeros)["encoder"]["embedded"]
  embedded = jnp.take(params["encoder"]["embed"]["embedding"], batch["inputs"].T, axis=0)
  groups = adversarial.sequence_groups(batch)
  clean = float(loss(zeros))
  epsilon = 1e-3
  worst = adversarial.perturbation(gradient, embedded, groups, epsilon)
  # To first order the loss rises by <gradient, perturbation>: the finite difference agrees.
  predicted = float(jnp.vdot(gradient, worst))
  assert predicted > 0
  rise = float(loss({"encoder": {"embedded": worst}})) - clean
  np.testing.assert_allclose(rise, predicted, rtol=2e-2)
  # Random directions of the same size per sequence raise it less (or lower it).
  for seed in range(5):
    noise = jax.random.normal(jax.random.PRNGKey(seed), gradient.shape)
    random = adversarial.perturbation(noise * (groups.T > 0)[..., None], embedded, groups, epsilon)
    np.testing.assert_allclose(
      adversarial.sequence_norms(random, groups),
      adversarial.sequence_norms(worst, groups),
      rtol=1e-5,
      atol=1e-9,
    )
    assert float(loss({"encoder": {"embedded": random}})) - clean < rise


@pytest.mark.parametrize(
  "task,model_kind,batch_kind",
  [
    ("lm", "forward", None),
    ("classify", "forward", "packed"),
    ("classify", "forward", "right-padded"),
    ("classify", "read_backward", "packed"),
    ("classify", "bidirectional, two embeddings", "full"),
  ],
)
def test_an_adversarial_step_follows_the_gradient_of_the_clean_and_the_perturbed_loss(
  task, model_kind, batch_kind
):
  model, batch, optimizer, state = setup(task, model_kind, batch_kind)
  epsilon = 0.2
  step = jax.jit(
    lambda state: train_step(
      state,
      batch,
      model=model,
      optimizer=optimizer,
      objective=OBJECTIVES[task],
      adversarial_epsilon=epsilon,
    )
  )
  new_state, metrics = step(state)

  # The same step written out: the clean gradient, the perturbation from it, the perturbed one.
  params, carry = state.params, state.carry
  zeros = adversarial.zero_perturbations(model, params, batch["inputs"])
  groups = adversarial.sequence_groups(batch)
  embedding_gradients = jax.grad(lambda p: loss_at(task, model, params, batch, carry, p))(zeros)[
    "encoder"
  ]
  tables = {"embedded": "embed", "backward_embedded": "backward_embed"}
  worst = {
    "encoder": {
      name: adversarial.perturbation(
        embedding_gradients[name],
        jnp.take(params["encoder"][tables[name]]["embedding"], batch["inputs"].T, axis=0),
        groups,
        epsilon,
      )
      for name in embedding_gradients
    }
  }
  both = lambda p: (
    loss_at(task, model, p, batch, carry, zeros) + loss_at(task, model, p, batch, carry, worst)
  )
  grads = jax.grad(both)(params)
  expected = optax.apply_updates(params, optimizer.update(grads, state.opt_state, params)[0])
  for a, b in zip(jax.tree.leaves(new_state.params), jax.tree.leaves(expected)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)

  # The sums report the clean loss and the perturbed one, which is higher.
  weight = float(metrics["weight"])
  np.testing.assert_allclose(
    float(metrics["loss_sum"]) / weight,
    float(loss_at(task, model, params, batch, carry, zeros)),
    rtol=1e-5,
  )
  np.testing.assert_allclose(
    float(metrics["adversarial_loss_sum"]) / weight,
    float(loss_at(task, model, params, batch, carry, worst)),
    rtol=1e-5,
  )
  assert float(metrics["adversarial_loss_sum"]) > float(metrics["loss_sum"])
  # Without it the step is another one.
  plain, _ = jax.jit(
    lambda state: train_step(
      state, batch, model=model, optimizer=optimizer, objective=OBJECTIVES[task]
    )
  )(state)
  assert not np.allclose(
    np.asarray(jax.tree.leaves(plain.params)[0]), np.asarray(jax.tree.leaves(new_state.params)[0])
  )


def test_a_run_with_adversarial_training_logs_both_losses_and_resumes_exactly(tmp_path):
  config = dataclasses.replace(
    TINY, task="classify", batching="pack", seq_len=48, adversarial_epsilon=0.1
  )
  whole = train_and_evaluate(config, str(tmp_path / "whole"))
  train_and_evaluate(dataclasses.replace(config, num_steps=20), str(tmp_path / "resumed"))
  resumed = train_and_evaluate(config, str(tmp_path / "resumed"))
  assert resumed["param_fingerprint"] == whole["param_fingerprint"]
  plain = train_and_evaluate(
    dataclasses.replace(config, adversarial_epsilon=0.0), str(tmp_path / "plain")
  )
  assert plain["param_fingerprint"] != whole["param_fingerprint"]
  rows = [r for r in read_rows(tmp_path / "whole") if r["split"] == "train"]
  assert rows and all(r["adversarial_loss"] > r["loss"] for r in rows)
  assert all("adversarial_loss" not in r for r in read_rows(tmp_path / "plain"))


def test_four_devices_under_shard_map_perturb_and_train_as_one_device_does(tmp_path):
  """Each device perturbs its own rows' sequences: the same steps as one device perturbing all."""
  from tests.test_devices import train

  flags = ["--adversarial_epsilon=0.1", "--dropout=0", "--batching=pack", "--seq_len=32"]
  one = train(tmp_path / "one", "classify", 1, *flags)
  four = train(tmp_path / "four", "classify", 4, *flags, "--parallelism=shard_map")
  assert [(r["step"], r["split"]) for r in one] == [(r["step"], r["split"]) for r in four]
  for a, b in zip(one, four):
    assert b["loss"] == pytest.approx(a["loss"], rel=1e-4), (a, b)
    if a["split"] == "train":
      assert b["adversarial_loss"] == pytest.approx(a["adversarial_loss"], rel=1e-4), (a, b)


def test_a_negative_epsilon_is_refused_naming_the_flag():
  with pytest.raises(ConfigError, match="--adversarial_epsilon: must be >= 0"):
    validate(dataclasses.replace(TINY, adversarial_epsilon=-0.1))
