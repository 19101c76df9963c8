"""A classifier's report beyond accuracy: per-class precision, recall, F1 and support, macro and
weighted F1, and the confusion matrix, counted on the device, equal to scikit-learn's on the same
predictions (one process and 2 x 2), in every place a user reads it; selection by macro F1 or by
one class's F1; and the warning when dev or test hold their classes unlike training."""

import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
import sklearn.metrics

from tests.test_tools import read_scalars
from training.bookkeeping.class_report import (
  ROW_MATRIX_CLASSES,
  TABLE_MATRIX_CLASSES,
  class_report,
  confusion_from_predictions,
  for_every_row,
  format_report,
)
from training.loop.class_balance import imbalance_warning
from training.loop.objectives import finalize_metrics, sequence_cross_entropy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = ["first", "second", "third"]
TINY = [
  "--task=classify",
  "--tokenizer=word",
  "--pooling=max",
  "--hidden_size=16",
  "--embed_size=8",
  "--head_widths=8",
  "--batch_size=16",
  "--seq_len=48",
  "--learning_rate=1e-2",
  "--log_every=20",
  "--checkpoint_every=40",
  "--text_field=review",
  "--label_field=sentiment",
]


def sklearn_report(true, predicted, num_classes=3) -> dict:
  """scikit-learn's figures, in the shape of `class_report`'s."""
  labels = list(range(num_classes))
  precision, recall, f1, support = sklearn.metrics.precision_recall_fscore_support(
    true, predicted, labels=labels, zero_division=0
  )
  averages = {
    f"{average}_{name}": value
    for average in ("macro", "weighted")
    for name, value in zip(
      ("precision", "recall", "f1"),
      sklearn.metrics.precision_recall_fscore_support(
        true, predicted, labels=labels, average=average, zero_division=0
      )[:3],
    )
  }
  return {
    **averages,
    "per_class": {
      NAMES[i]: {"precision": precision[i], "recall": recall[i], "f1": f1[i], "support": support[i]}
      for i in labels
    },
    "confusion_matrix": sklearn.metrics.confusion_matrix(true, predicted, labels=labels).tolist(),
  }


def assert_equal_reports(ours: dict, theirs: dict) -> None:
  assert ours["confusion_matrix"] == theirs["confusion_matrix"]
  for name in ("macro_precision", "macro_recall", "macro_f1", "weighted_f1", "weighted_recall"):
    assert ours[name] == pytest.approx(theirs[name], abs=1e-12), name
  for name, figures in theirs["per_class"].items():
    for measure, value in figures.items():
      assert ours["per_class"][name][measure] == pytest.approx(value, abs=1e-12), (name, measure)


@pytest.mark.newest_jax
@pytest.mark.parametrize("seed", range(4))
def test_the_report_of_a_confusion_matrix_equals_scikit_learns(seed):
  rng = np.random.default_rng(seed)
  true = rng.choice(3, size=200, p=[0.7, 0.25, 0.05])
  predicted = rng.choice(3, size=200, p=[0.5, 0.5, 0.0])  # "third" never predicted
  if seed == 3:
    true = np.where(true == 2, 0, true)  # "third" never present either
  confusion = sklearn.metrics.confusion_matrix(true, predicted, labels=[0, 1, 2])
  ours = class_report(confusion, NAMES)
  assert_equal_reports(ours, sklearn_report(true, predicted))
  assert ours["classes"] == NAMES
  table = format_report({**ours, "accuracy": float(np.mean(true == predicted))})
  assert "weighted avg" in table and "third" in table and "confusion matrix" in table


def test_a_large_confusion_matrix_stays_out_of_the_table_and_the_rows_not_out_of_the_report():
  rng = np.random.default_rng(0)

  def report(num_classes):
    names = [f"class_{i}" for i in range(num_classes)]
    true, predicted = rng.integers(0, num_classes, 500), rng.integers(0, num_classes, 500)
    return class_report(confusion_from_predictions(predicted, true, num_classes), names)

  small, wide, many = report(TABLE_MATRIX_CLASSES), report(21), report(ROW_MATRIX_CLASSES + 1)
  assert "confusion matrix (rows: true class" in format_report(small)
  table = format_report(wide, matrix_in="summary.json")
  assert "class_20" in table and table.endswith("confusion matrix: 21 x 21, in summary.json")
  row = for_every_row(many)
  assert "confusion_matrix" not in row and "confusion_matrix" in many
  assert row == {k: v for k, v in many.items() if k != "confusion_matrix"}
  kept = report(ROW_MATRIX_CLASSES)
  assert for_every_row(kept) is kept


@pytest.mark.newest_jax
def test_the_device_counts_the_confusion_of_real_examples_only():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(4, 3, 5)).astype(np.float32)  # packed rows: 3 sequences a row
  labels = rng.integers(0, 5, size=(4, 3))
  example_mask = rng.random((4, 3)) < 0.7
  sums = sequence_cross_entropy(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(example_mask))
  predicted = logits.argmax(-1)
  expected = np.zeros((5, 5))
  np.add.at(expected, (labels[example_mask], predicted[example_mask]), 1)
  np.testing.assert_array_equal(np.asarray(sums["confusion_sum"]), expected)
  assert float(np.trace(expected)) == float(sums["correct_sum"])
  # Training rows stay scalars; an evaluation with class names has the report.
  names = [f"c{i}" for i in range(5)]
  assert "per_class" not in finalize_metrics(sums)
  assert finalize_metrics(sums, names)["confusion_matrix"] == expected.astype(int).tolist()


def test_a_split_held_unlike_training_is_named_with_its_counts_and_the_likely_cause():
  train = [500, 300, 200]
  assert imbalance_warning("eval_data", [52, 28, 20], train, NAMES) is None
  warning = imbalance_warning("eval_data", [0, 0, 100], train, NAMES)
  assert warning.startswith("--eval_data: its classes are not distributed like --train_data's")
  assert "no example of first, second" in warning and "\n" not in warning
  assert "third 100 (100.0%) against 200 (20.0%)" in warning
  assert "sorted by label" in warning and "holdout:10%" in warning
  # A class training never saw (id labels: --num_classes fixes more classes than it holds).
  assert "third never seen in training" in imbalance_warning(
    "test_data", [50, 40, 10], [6, 4, 0], NAMES
  )
  # Shifted proportions, every class present: flagged above the stated distance only.
  assert imbalance_warning("test_data", [70, 30, 0], [50, 50, 0], NAMES) is None  # 0.2
  assert "distance 0.30" in imbalance_warning("test_data", [80, 20, 0], [50, 50, 0], NAMES)


def imbalanced_rows(part, keep=(1.0, 0.4, 0.2)):
  """Sentences whose class is named by one keyword among noise words (red: first, green:
  second, blue: third), one label in ten drawn at random, the classes thinned to about
  62/25/13%: learnable in a few hundred steps, never perfectly."""
  rng = np.random.default_rng(0)
  noise = "the a cat dog sat ran on under mat hill slowly quickly and then".split()
  rows = []
  for _ in range(2000):
    label = int(rng.integers(3))
    words = list(rng.choice(noise, size=int(rng.integers(3, 12))))
    words.insert(int(rng.integers(len(words) + 1)), ("red", "green", "blue")[label])
    if rng.random() < 0.1:
      label = int(rng.integers(3))
    if rng.random() < keep[label]:
      rows.append((" ".join(words), NAMES[label]))
  return rows[part]


def write_csv(path, rows):
  import csv

  with open(path, "w", newline="", encoding="utf-8") as f:
    writer = csv.writer(f)
    writer.writerow(["review", "sentiment"])
    writer.writerows(rows)


def run(module, *flags, processes=1, devices=1):
  command = [sys.executable, "-m", module, *flags]
  if processes > 1:
    command = [
      sys.executable,
      "-m",
      "launch.local",
      f"--num_processes={processes}",
      f"--devices_per_process={devices}",
      "--",
      *command,
    ]
  result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
  return result


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  directory = tmp_path_factory.mktemp("imbalanced")
  write_csv(directory / "train.csv", imbalanced_rows(slice(0, 800)))
  write_csv(directory / "dev.csv", imbalanced_rows(slice(800, 1000)))
  write_csv(directory / "test.csv", imbalanced_rows(slice(1000, 1200)))
  return directory


def train(data, workdir, *flags, processes=1, devices=1):
  result = run(
    "training.train",
    f"--workdir={workdir}",
    f"--train_data=csv:{data}/train.csv",
    f"--eval_data=csv:{data}/dev.csv",
    f"--test_data=csv:{data}/test.csv",
    *TINY,
    *flags,
    processes=processes,
    devices=devices,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  with open(os.path.join(workdir, "summary.json")) as f:
    return json.load(f), result.stderr


def predictions(workdir, data, split):
  """The classes the run's selected parameters predict for a split, by rnn-predict --data, with
  the report it prints and writes."""
  report_path = os.path.join(workdir, f"{split}_report.json")
  result = run(
    "training.tools.predict",
    f"--workdir={workdir}",
    f"--data=csv:{data}/{split}.csv",
    f"--report={report_path}",
  )
  assert result.returncode == 0, result.stderr[-3000:]
  rows = [json.loads(line) for line in result.stdout.splitlines()]
  true = [NAMES.index(row["true_label"]) for row in rows]
  predicted = [row["label_id"] for row in rows]
  with open(report_path) as f:
    return true, predicted, json.load(f), result.stderr


@pytest.fixture(scope="module")
def finished(data, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("run") / "classifier"
  summary, log = train(data, workdir, "--num_steps=160", "--eval_every=40")
  return workdir, summary, log


@pytest.mark.slow
def test_every_evaluation_reports_as_scikit_learn_does_on_the_same_predictions(data, finished):
  workdir, summary, log = finished
  for split, ours in (("dev", summary["best"]["eval"]), ("test", summary["test"])):
    true, predicted, printed_report, stderr = predictions(workdir, data, split)
    assert_equal_reports(ours, sklearn_report(true, predicted))
    assert_equal_reports(printed_report, sklearn_report(true, predicted))  # rnn-predict --data
    assert "weighted avg" in stderr and "confusion matrix" in stderr
    assert ours["classes"] == NAMES
    assert sum(ours["per_class"][name]["support"] for name in NAMES) == len(true)
  # metrics.jsonl: every dev evaluation, and one test row with the parameters' step
  with open(workdir / "metrics.jsonl") as f:
    rows = [json.loads(line) for line in f]
  evaluations = [row for row in rows if row["split"] == "eval"]
  assert [row["step"] for row in evaluations] == [40, 80, 120, 160]
  assert all("macro_f1" in row and len(row["confusion_matrix"]) == 3 for row in evaluations)
  (test_row,) = [row for row in rows if row["split"] == "test"]
  assert test_row["parameters_of_step"] == summary["best"]["step"]
  assert test_row["confusion_matrix"] == summary["test"]["confusion_matrix"]
  # TensorBoard: each class's F1, macro F1, and the confusion matrix as an image
  scalars = read_scalars(workdir)
  assert scalars[("eval/macro_f1", 80)] == pytest.approx(evaluations[1]["macro_f1"], rel=1e-6)
  assert scalars[("eval/f1/third", 160)] == pytest.approx(
    evaluations[3]["per_class"]["third"]["f1"], rel=1e-6
  )
  assert ("test/weighted_f1", 160) in scalars
  assert {"eval/confusion_matrix", "test/confusion_matrix"} <= image_tags(workdir)
  # The log ends with both tables; nothing warned about the splits' classes (drawn alike)
  assert f"dev, step {summary['best']['step']} (best):" in log and "test:" in log
  assert log.count("weighted avg") == 2
  assert "not distributed like" not in log


def image_tags(directory) -> set[str]:
  from tensorboardX.proto import event_pb2

  tags = set()
  for name in os.listdir(directory):
    if name.startswith("events.out.tfevents"):
      data, position = (directory / name).read_bytes(), 0
      while position < len(data):
        length = int.from_bytes(data[position : position + 8], "little")
        event = event_pb2.Event.FromString(data[position + 12 : position + 12 + length])
        position += 12 + length + 4
        tags |= {value.tag for value in event.summary.value if value.HasField("image")}
  return tags


@pytest.mark.slow
def test_a_2x2_job_reports_exactly_what_scikit_learn_computes_from_its_predictions(data, tmp_path):
  workdir = tmp_path / "2x2"
  summary, _ = train(
    data, workdir, "--num_steps=80", "--eval_every=40", "--eval_steps=0", processes=2, devices=2
  )
  for split, ours in (("dev", summary["best"]["eval"]), ("test", summary["test"])):
    true, predicted, _, _ = predictions(workdir, data, split)
    assert_equal_reports(ours, sklearn_report(true, predicted))


@pytest.mark.slow
def test_macro_f1_and_one_classs_f1_select_and_stop_early(data, tmp_path):
  for metric in ("macro_f1", "f1:third"):
    summary, _ = train(
      data,
      tmp_path / metric.replace(":", "_"),
      "--num_steps=400",
      "--eval_every=20",
      "--patience=2",
      f"--select_metric={metric}",
    )
    with open(tmp_path / metric.replace(":", "_") / "metrics.jsonl") as f:
      evaluations = [json.loads(line) for line in f]
    evaluations = [row for row in evaluations if row["split"] == "eval"]
    value = (
      (lambda row: row["macro_f1"])
      if metric == "macro_f1"
      else (lambda row: row["per_class"]["third"]["f1"])
    )
    best = max(evaluations, key=value)  # the first of equal ones, as the selection keeps
    assert summary["best"]["select_metric"] == metric
    assert summary["best"]["step"] == best["step"]
    assert summary["stopped_early"] and summary["step"] == best["step"] + 2 * 20
  result = run(
    "training.train",
    f"--workdir={tmp_path / 'unknown'}",
    f"--train_data=csv:{data}/train.csv",
    f"--eval_data=csv:{data}/dev.csv",
    *TINY,
    "--select_metric=f1:fourth",
  )
  assert result.returncode != 0
  assert result.stderr.strip().splitlines()[-1] == (
    "error: --select_metric=f1:fourth: no class 'fourth'; the run's classes are first, second,"
    " third"
  )


@pytest.mark.slow
def test_a_file_sorted_by_label_cut_into_splits_warns_once_per_split_and_still_runs(tmp_path):
  rows = sorted(imbalanced_rows(slice(0, 1200), keep=(1.0, 1.0, 1.0)), key=lambda row: row[1])
  write_csv(tmp_path / "sorted.csv", rows)
  spec = f"csv:{tmp_path}/sorted.csv"
  result = run(
    "training.train",
    f"--workdir={tmp_path / 'run'}",
    f"--train_data={spec}[:80%]",
    f"--eval_data={spec}[80%:90%]",
    f"--test_data={spec}[90%:]",
    *TINY,
    "--num_steps=20",
    "--eval_every=10",
  )
  assert result.returncode == 0, result.stderr[-3000:]
  warnings = [line for line in result.stderr.splitlines() if "not distributed like" in line]
  assert len(warnings) == 2, warnings
  assert "--eval_data: its classes" in warnings[0] and "--test_data: its classes" in warnings[1]
  for warning in warnings:
    assert "no example of first, second" in warning and "sorted by label" in warning
  assert os.path.exists(tmp_path / "run" / "summary.json")


@pytest.mark.slow
def test_rnn_plot_draws_a_finished_classifiers_confusion_matrices(finished, tmp_path):
  workdir, _, _ = finished
  out = tmp_path / "confusion.png"
  result = run("training.tools.plot", str(workdir), "--metrics=confusion_matrix", f"--out={out}")
  assert result.returncode == 0, result.stderr[-2000:]
  assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
  mixed = run(
    "training.tools.plot", str(workdir), "--metrics=loss,confusion_matrix", f"--out={out}"
  )
  assert mixed.returncode != 0
  assert "is drawn on its own" in mixed.stderr.strip().splitlines()[-1]
  (tmp_path / "lm").mkdir()
  (tmp_path / "lm" / "summary.json").write_text(json.dumps({"step": 1, "eval": {"loss": 1.0}}))
  refused = run(
    "training.tools.plot", str(tmp_path / "lm"), "--metrics=confusion_matrix", f"--out={out}"
  )
  assert refused.returncode != 0
  assert "has no confusion matrix" in refused.stderr.strip().splitlines()[-1]
