"""Model selection on the dev split, the test split read once, early stopping, and a classifier
started from a language model (`--init_from`)."""

import dataclasses
import filecmp
import json
import os

import jax
import numpy as np
import pytest

from training.bookkeeping.class_report import scalar_metrics
from training.bookkeeping.trained_run import load_run
from training.config import Config, ConfigError, validate
from training.loop import final_config, pretrained
from training.loop.trainer import train_and_evaluate
from training.model.build import build_model
from training.state import initial_state_fn, make_optimizer_for
from training.tools.inference import class_probabilities
from training.tools.scoring import metrics as ensemble_metrics
from training.tools.scoring import split_examples

SPLITS = dict(train_data="synthetic:recall[:80%]", eval_data="synthetic:recall[80%:90%]")
CLASSIFY = Config(
  task="classify",
  hidden_size=16,
  embed_size=8,
  head_widths=(8,),
  batch_size=8,
  seq_len=48,
  num_steps=60,
  log_every=10,
  eval_every=10,
  eval_steps=4,
  checkpoint_every=20,
  keep_checkpoints=1,
  learning_rate=1e-2,
  **SPLITS,
)


def eval_rows(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [row for row in map(json.loads, f) if row["split"] == "eval"]


def first_best(rows, metric="accuracy"):
  best = None
  for row in rows:
    if best is None or row[metric] > best[metric]:
      best = row
  return best


def test_best_evaluation_is_kept_and_the_test_split_is_scored_with_its_parameters(tmp_path):
  # The test split is the dev split here, so the test metrics must be the best evaluation's.
  config = dataclasses.replace(CLASSIFY, test_data=SPLITS["eval_data"], eval_steps=0)
  summary = train_and_evaluate(config, str(tmp_path))
  best = first_best(eval_rows(tmp_path))
  assert summary["best"]["step"] == best["step"] and summary["best"]["select_metric"] == "accuracy"
  assert summary["best"]["eval"]["accuracy"] == best["accuracy"]
  test, dev = summary["test"], summary["best"]["eval"]
  assert test["confusion_matrix"] == dev["confusion_matrix"]  # the same predictions
  assert test["per_class"] == dev["per_class"]
  assert scalar_metrics(test) == pytest.approx(scalar_metrics(dev), rel=1e-6)
  # The best checkpoint outlives --keep_checkpoints=1, and inference loads it by default.
  assert os.listdir(tmp_path / "best_checkpoint") == [str(best["step"])]
  assert os.listdir(tmp_path / "checkpoints") == ["60"]
  assert load_run(str(tmp_path)).step == best["step"]
  assert load_run(str(tmp_path), step=60).step == 60


def test_loss_selects_the_lowest_and_no_dev_split_means_no_selection(tmp_path):
  summary = train_and_evaluate(
    dataclasses.replace(CLASSIFY, select_metric="loss"), str(tmp_path / "loss")
  )
  rows = eval_rows(tmp_path / "loss")
  assert summary["best"]["step"] == min(rows, key=lambda r: (r["loss"], r["step"]))["step"]
  plain = train_and_evaluate(
    dataclasses.replace(CLASSIFY, eval_data="", num_steps=20, test_data=SPLITS["eval_data"]),
    str(tmp_path / "none"),
  )
  # The final parameters, scored once
  assert plain["best"] is None and plain["test"]["accuracy"] >= 0.0
  assert not os.path.exists(tmp_path / "none" / "best_checkpoint")
  # Scored with the final parameters: the same figures as the run at its last step gives on the
  # test examples, predicted afresh.
  final = load_run(str(tmp_path / "none"))
  assert final.step == 20
  examples = split_examples(final.config, "test_data")
  probabilities = np.stack(list(class_probabilities(final, [e["text"] for e in examples])))
  scored = ensemble_metrics(probabilities, final.labels.ids(examples, final.config.test_data))
  assert plain["test"]["accuracy"] == pytest.approx(scored["accuracy"], abs=1e-9)
  assert plain["test"]["loss"] == pytest.approx(scored["loss"], rel=1e-4)


def test_patience_stops_after_that_many_evaluations_without_a_better_one(tmp_path):
  config = dataclasses.replace(
    CLASSIFY, num_steps=200, patience=2, eval_every=5, learning_rate=3e-2
  )
  summary = train_and_evaluate(config, str(tmp_path))
  rows = eval_rows(tmp_path)
  best, stale, expected_stop = None, 0, None
  for row in rows:
    if best is None or row["accuracy"] > best:
      best, stale = row["accuracy"], 0
    else:
      stale += 1
    if stale == 2:
      expected_stop = row["step"]
      break
  assert expected_stop is not None and expected_stop < 200, (
    "the run never plateaued: the test proves nothing"
  )
  assert summary["step"] == expected_stop and summary["stopped_early"]
  assert rows[-1]["step"] == expected_stop  # no evaluation after the stop
  assert os.listdir(tmp_path / "checkpoints") == [str(expected_stop)]
  # The same command again finds the run finished: no more training, the same result.
  again = train_and_evaluate(config, str(tmp_path))
  assert again["step"] == expected_stop and again["best"] == summary["best"]
  assert again["param_fingerprint"] == summary["param_fingerprint"]


def test_a_resumed_run_selects_and_stops_like_an_uninterrupted_one(tmp_path):
  config = dataclasses.replace(
    CLASSIFY, num_steps=120, patience=3, eval_every=10, test_data=SPLITS["eval_data"]
  )
  whole = train_and_evaluate(config, str(tmp_path / "whole"))
  train_and_evaluate(dataclasses.replace(config, num_steps=40), str(tmp_path / "resumed"))
  shutil_kept = os.listdir(tmp_path / "resumed" / "best_checkpoint")
  assert shutil_kept  # the first part kept a best checkpoint that the resumed run must know of
  resumed = train_and_evaluate(config, str(tmp_path / "resumed"))
  for key in ("step", "best", "test", "stopped_early", "param_fingerprint"):
    assert resumed[key] == whole[key], key


def test_selection_flags_are_checked():
  with pytest.raises(
    ConfigError, match="--select_metric: accuracy is measured for --task=classify only"
  ):
    validate(Config(select_metric="accuracy"))
  with pytest.raises(ConfigError, match="--select_metric: unknown value 'f1'"):
    validate(Config(task="classify", select_metric="f1"))
  with pytest.raises(ConfigError, match="--patience: early stopping needs --eval_data"):
    validate(dataclasses.replace(CLASSIFY, eval_data="", patience=2))
  with pytest.raises(ConfigError, match="--init_from: applies to --task=classify"):
    validate(Config(init_from="/somewhere"))
  with pytest.raises(ConfigError, match="--lm_loss_weight: must be >= 0"):
    validate(dataclasses.replace(CLASSIFY, lm_loss_weight=-1.0))
  with pytest.raises(
    ConfigError, match="--target_lm_steps: 60 leaves no per-sequence step of --num_steps=60"
  ):
    validate(dataclasses.replace(CLASSIFY, target_lm_steps=60))
  with pytest.raises(ConfigError, match="--target_lm_steps: applies to --task=classify"):
    validate(Config(target_lm_steps=5))
  with pytest.raises(
    ConfigError, match="--softmax_vocab_size: 100 is not smaller than --vocab_size=100"
  ):
    validate(Config(vocab_size=100, softmax_vocab_size=100))
  with pytest.raises(ConfigError, match="--softmax_vocab_size: must be 0 .* got 2"):
    validate(Config(softmax_vocab_size=2))


@pytest.fixture(scope="module")
def language_model(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("lm"))
  config = Config(
    task="lm",
    hidden_size=16,
    embed_size=8,
    num_layers=2,
    batch_size=8,
    seq_len=16,
    num_steps=30,
    eval_every=10,
    checkpoint_every=10,
    train_data="synthetic:copy[:90%]",
    eval_data="synthetic:copy[90%:]",
    tie_embeddings=True,
  )
  train_and_evaluate(config, workdir)
  return workdir


def test_classifier_starts_from_the_language_models_encoder_and_vocabulary(
  language_model, tmp_path
):
  config = dataclasses.replace(
    CLASSIFY, init_from=language_model, hidden_size=99, bidirectional=True, lm_loss_weight=0.5
  )
  adopted = final_config.adopt_language_models(config)
  assert (adopted.hidden_size, adopted.num_layers, adopted.embed_size, adopted.tie_embeddings) == (
    16,
    2,
    8,
    True,
  )
  lm = load_run(language_model)  # its best checkpoint
  model = build_model(adopted, len(lm.vocab), 3)
  fresh = jax.jit(initial_state_fn(adopted, model, make_optimizer_for(adopted)))(
    jax.random.PRNGKey(0)
  ).params
  params = pretrained.initial_params(language_model, fresh)
  flat = lambda tree: {
    jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]
  }
  lm_leaves, leaves, fresh_leaves = flat(lm.params), flat(params), flat(fresh)
  for name, value in leaves.items():
    if name in lm_leaves:  # the embedding, the forward layers and the tied head's bias
      np.testing.assert_array_equal(value, lm_leaves[name], err_msg=name)
    else:  # the backward stack and the classifier's head start from the seed
      np.testing.assert_array_equal(value, fresh_leaves[name], err_msg=name)
  assert any("backward_layer" in name for name in leaves) and any(
    "head_out" in name for name in leaves
  )
  assert sum(name in lm_leaves for name in leaves) == len(lm_leaves)  # all of the LM is used

  # And through the trainer: the LM's vocabulary and sizes, and training from there.
  summary = train_and_evaluate(dataclasses.replace(config, num_steps=20), str(tmp_path))
  assert filecmp.cmp(
    os.path.join(language_model, "vocab.json"), tmp_path / "vocab.json", shallow=False
  )
  with open(tmp_path / "run_config.json") as f:
    assert json.load(f)["full_config"]["hidden_size"] == 16
  assert "lm_loss" in summary["eval"]


def test_frozen_embeddings_stay_the_language_models_while_the_encoder_trains(
  language_model, tmp_path
):
  """Also across a resume: the optimiser's state without the frozen table's moments goes
  through an Orbax checkpoint and back, and the resumed run ends where an uninterrupted one does."""
  config = dataclasses.replace(
    CLASSIFY, init_from=language_model, freeze_embeddings=True, num_steps=20, checkpoint_every=10
  )
  train_and_evaluate(config, str(tmp_path / "whole"))
  train_and_evaluate(dataclasses.replace(config, num_steps=10), str(tmp_path / "resumed"))
  train_and_evaluate(config, str(tmp_path / "resumed"))
  lm, classifier = load_run(language_model), load_run(str(tmp_path / "whole"), step=20)
  np.testing.assert_array_equal(
    classifier.params["encoder"]["embed"]["embedding"], lm.params["encoder"]["embed"]["embedding"]
  )
  assert not np.array_equal(
    classifier.params["encoder"]["layer_0"]["W_h"], lm.params["encoder"]["layer_0"]["W_h"]
  )
  resumed = load_run(str(tmp_path / "resumed"), step=20)
  jax.tree.map(np.testing.assert_array_equal, resumed.params, classifier.params)


@pytest.fixture(scope="module")
def backward_language_model(tmp_path_factory):
  """The `language_model` fixture's twin that reads the same text backwards (`--read_backward`)."""
  workdir = str(tmp_path_factory.mktemp("backward_lm"))
  config = Config(
    task="lm",
    hidden_size=16,
    embed_size=8,
    num_layers=2,
    batch_size=8,
    seq_len=16,
    num_steps=30,
    eval_every=10,
    checkpoint_every=10,
    train_data="synthetic:copy[:90%]",
    eval_data="synthetic:copy[90%:]",
    tie_embeddings=True,
    read_backward=True,
  )
  train_and_evaluate(config, workdir)
  return workdir


def test_a_backward_language_model_starts_the_backward_stack_with_its_own_embedding(
  language_model, backward_language_model, tmp_path
):
  """ULMFiT / ELMo: both directions pretrained. The forward stack and embedding come from the
  forward LM, the backward stack and its own embedding from the backward LM, the head from the
  seed; and the trainer runs from there."""
  config = dataclasses.replace(
    CLASSIFY,
    init_from=language_model,
    init_backward_from=backward_language_model,
    bidirectional=True,
  )
  adopted = final_config.adopt_language_models(config)
  assert adopted.backward_embedding and (adopted.hidden_size, adopted.num_layers) == (16, 2)
  forward, backward = load_run(language_model), load_run(backward_language_model)
  model = build_model(adopted, len(forward.vocab), 3)
  fresh = jax.jit(initial_state_fn(adopted, model, make_optimizer_for(adopted)))(
    jax.random.PRNGKey(0)
  ).params
  params = pretrained.initial_backward_params(
    backward_language_model, pretrained.initial_params(language_model, fresh)
  )
  encoder = params["encoder"]
  np.testing.assert_array_equal(
    encoder["embed"]["embedding"], forward.params["encoder"]["embed"]["embedding"]
  )
  np.testing.assert_array_equal(
    encoder["backward_embed"]["embedding"], backward.params["encoder"]["embed"]["embedding"]
  )
  for layer in range(2):
    for name, value in forward.params["encoder"][f"layer_{layer}"].items():
      np.testing.assert_array_equal(encoder[f"layer_{layer}"][name], value)
    for name, value in backward.params["encoder"][f"layer_{layer}"].items():
      np.testing.assert_array_equal(encoder[f"backward_layer_{layer}"][name], value)
  # Two different LMs
  assert not np.array_equal(encoder["backward_layer_0"]["W_h"], encoder["layer_0"]["W_h"])
  np.testing.assert_array_equal(params["head_out"]["kernel"], fresh["head_out"]["kernel"])

  summary = train_and_evaluate(dataclasses.replace(config, num_steps=20), str(tmp_path))
  assert np.isfinite(summary["eval"]["loss"])
  served = load_run(str(tmp_path))
  assert served.config.backward_embedding and "backward_embed" in served.params["encoder"]


def test_a_classifier_reading_backwards_starts_from_a_backward_language_model(
  backward_language_model, tmp_path
):
  """ULMFiT's backward classifier (`--read_backward --init_from=BACKWARD_LM`): its encoder is the
  backward LM's, it trains, and the trained run serves predictions that read backwards too."""
  config = dataclasses.replace(
    CLASSIFY,
    init_from=backward_language_model,
    read_backward=True,
    num_steps=20,
    checkpoint_every=10,
  )
  adopted = final_config.adopt_language_models(config)
  lm = load_run(backward_language_model)
  model = build_model(adopted, len(lm.vocab), 3)
  fresh = jax.jit(initial_state_fn(adopted, model, make_optimizer_for(adopted)))(
    jax.random.PRNGKey(0)
  ).params
  params = pretrained.initial_params(backward_language_model, fresh)
  jax.tree.map(np.testing.assert_array_equal, params["encoder"], lm.params["encoder"])
  summary = train_and_evaluate(config, str(tmp_path))
  assert np.isfinite(summary["eval"]["loss"])
  served = load_run(str(tmp_path))
  assert served.config.read_backward and served.model.config.read_backward


def test_backward_language_models_are_checked(language_model, backward_language_model, tmp_path):
  both = dataclasses.replace(
    CLASSIFY,
    init_from=language_model,
    init_backward_from=backward_language_model,
    bidirectional=True,
  )
  with pytest.raises(
    ConfigError,
    match="--init_backward_from: starts the backward stack of a classifier that also"
    " has --bidirectional",
  ):
    validate(dataclasses.replace(both, bidirectional=False))
  with pytest.raises(
    ConfigError, match="--read_backward: and --bidirectional: a bidirectional classifier reads"
  ):
    validate(dataclasses.replace(CLASSIFY, read_backward=True, bidirectional=True))
  with pytest.raises(
    ConfigError, match="--read_backward: a classifier that reads backwards has no next-token"
  ):
    validate(dataclasses.replace(CLASSIFY, read_backward=True, lm_loss_weight=0.5))
  with pytest.raises(
    ConfigError, match="reads its text forwards; --init_backward_from takes one trained with"
  ):
    final_config.adopt_language_models(dataclasses.replace(both, init_backward_from=language_model))
  with pytest.raises(
    ConfigError,
    match="reads its text backwards .--read_backward.; a classifier starts from it"
    " with --read_backward too, or, --bidirectional, as --init_backward_from",
  ):
    final_config.adopt_language_models(dataclasses.replace(both, init_from=backward_language_model))
  with pytest.raises(
    ConfigError, match="reads its text forwards; a classifier with --read_backward starts from one"
  ):
    final_config.adopt_language_models(
      dataclasses.replace(CLASSIFY, init_from=language_model, read_backward=True)
    )
  other = str(tmp_path / "other")
  train_and_evaluate(
    Config(
      task="lm",
      hidden_size=8,
      embed_size=8,
      num_layers=2,
      batch_size=8,
      seq_len=16,
      num_steps=2,
      eval_every=0,
      train_data="synthetic:copy[:90%]",
      read_backward=True,
    ),
    other,
  )
  with pytest.raises(
    ConfigError,
    match=r"its encoder differs from the --init_from language model's: --hidden_size=8"
    r" \(--init_from's: 16\)",
  ):
    final_config.adopt_language_models(dataclasses.replace(both, init_backward_from=other))
  other_text = str(tmp_path / "other_text")
  train_and_evaluate(
    Config(
      task="lm",
      hidden_size=16,
      embed_size=8,
      num_layers=2,
      batch_size=8,
      seq_len=16,
      num_steps=2,
      eval_every=0,
      train_data="synthetic:recall[:90%]",
      read_backward=True,
      tie_embeddings=True,
    ),
    other_text,
  )
  with pytest.raises(
    ConfigError, match="its vocabulary differs from the --init_from language model's"
  ):
    final_config.adopt_language_models(dataclasses.replace(both, init_backward_from=other_text))


def test_a_language_model_with_a_smaller_softmax_gives_a_classifier_its_whole_vocabulary(tmp_path):
  """`--softmax_vocab_size`: the LM reads every token of its vocabulary but predicts the most
  frequent K; a classifier from it takes the whole embedding (rare words included) and the
  K-way next-token head."""
  lm_dir, classifier_dir = str(tmp_path / "lm"), str(tmp_path / "classifier")
  lm_config = Config(
    task="lm",
    hidden_size=16,
    embed_size=8,
    batch_size=8,
    seq_len=16,
    num_steps=10,
    eval_every=0,
    checkpoint_every=10,
    train_data="synthetic:copy[:90%]",
    eval_data="synthetic:copy[90%:]",
    tie_embeddings=True,
    softmax_vocab_size=8,
  )
  train_and_evaluate(lm_config, lm_dir)
  lm = load_run(lm_dir)
  assert len(lm.vocab) == 12  # 3 special tokens, 8 letters and "="
  assert lm.params["encoder"]["embed"]["embedding"].shape == (12, 8) and lm.params["lm_head"][
    "bias"
  ].shape == (8,)
  config = dataclasses.replace(
    CLASSIFY, init_from=lm_dir, lm_loss_weight=0.5, num_steps=10, eval_every=0
  )
  summary = train_and_evaluate(config, classifier_dir)
  assert np.isfinite(summary["eval"]["lm_loss"])
  with open(os.path.join(classifier_dir, "run_config.json")) as f:
    assert json.load(f)["full_config"]["softmax_vocab_size"] == 8
  classifier = load_run(classifier_dir)
  assert classifier.params["encoder"]["embed"]["embedding"].shape == (12, 8)
  assert classifier.params["lm_head"]["bias"].shape == (8,)


def test_a_fine_tune_with_a_moving_average_starts_it_at_the_language_model(
  language_model, tmp_path
):
  config = dataclasses.replace(
    CLASSIFY, init_from=language_model, ema_decay=0.99, num_steps=1, eval_every=0
  )
  train_and_evaluate(config, str(tmp_path))
  lm, served = load_run(language_model), load_run(str(tmp_path))
  # The trainer runs it (the average is a copy of the LM's parameters, not the same buffers: the
  # step donates its state) and serves the average, after one small step still near the LM's
  # encoder. That the average starts at the LM's parameters: tests/test_optimizer.py.
  for name in ("embed", "layer_0"):
    for a, b in zip(
      jax.tree.leaves(lm.params["encoder"][name]), jax.tree.leaves(served.params["encoder"][name])
    ):
      assert np.abs(np.asarray(a) - np.asarray(b)).max() < 0.1
  # Served is the average, not the parameters trained: after the one step, the average's first
  # rate (2/11, `train_state.updated_average`) of the LM's and the rest of the trained ones (the
  # same run without an average; the average changes no update).
  train_and_evaluate(dataclasses.replace(config, ema_decay=0.0), str(tmp_path / "plain"))
  trained = load_run(str(tmp_path / "plain"))
  rate = 2.0 / 11.0
  for name in ("embed", "layer_0"):
    for lm_leaf, trained_leaf, served_leaf in zip(
      *(jax.tree.leaves(run.params["encoder"][name]) for run in (lm, trained, served))
    ):
      assert not np.allclose(trained_leaf, lm_leaf)
      np.testing.assert_allclose(
        served_leaf,
        rate * np.asarray(lm_leaf) + (1 - rate) * np.asarray(trained_leaf),
        rtol=1e-5,
        atol=1e-6,
      )


def test_per_token_steps_on_the_target_text_come_first_and_are_not_evaluated(
  language_model, tmp_path
):
  """ULMFiT's second stage (`--target_lm_steps`): no dev evaluation (of a head not yet trained)
  and no model selection before the per-sequence steps; the next-token loss falls meanwhile."""
  config = dataclasses.replace(
    CLASSIFY, init_from=language_model, target_lm_steps=30, num_steps=40, freeze_encoder_steps=5
  )
  summary = train_and_evaluate(config, str(tmp_path))
  assert [row["step"] for row in eval_rows(tmp_path)] == [40]
  assert summary["best"]["step"] == 40 and "lm_loss" in summary["eval"]
  with open(tmp_path / "metrics.jsonl") as f:
    train = [row for row in map(json.loads, f) if row["split"] == "train"]
  assert train[-2]["step"] == 30 and train[-2]["lm_loss"] < train[0]["lm_loss"]


def test_init_from_a_classifier_run_is_refused(tmp_path):
  train_and_evaluate(dataclasses.replace(CLASSIFY, num_steps=10), str(tmp_path / "cls"))
  with pytest.raises(ConfigError, match="that run trained --task=classify"):
    train_and_evaluate(
      dataclasses.replace(CLASSIFY, init_from=str(tmp_path / "cls")), str(tmp_path / "new")
    )
