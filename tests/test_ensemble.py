"""`training.tools.ensemble`: members scored as their own runs scored themselves, the ensemble as the
average of the members' probabilities, through the real command on tiny trained classifiers."""

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import sklearn.metrics

from pipeline import synthetic
from pipeline.prepared_writer import prepare_corpus
from training.config import Config
from training.loop.trainer import train_and_evaluate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = Config(
  task="classify",
  hidden_size=16,
  embed_size=8,
  head_widths=(8,),
  batch_size=16,
  seq_len=24,
  num_steps=120,
  log_every=20,
  eval_every=40,
  checkpoint_every=40,
  learning_rate=5e-3,
)


def ensemble(*flags):
  return subprocess.run(
    [sys.executable, "-m", "training.tools.ensemble", *flags],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )


def write_lines(path, examples):
  path.write_text("".join(f"{e['label']} {e['text']}\n" for e in examples))


@pytest.fixture(scope="module")
def members(tmp_path_factory):
  """Two classifiers that differ in their seed and cell, with a held-out dev split (10% of the
  training file) and a test file; a third with another dev split; two trained on a prepared
  dataset, one with a dev file, one with a held-out dev split; one holding its dev split out of
  other training data; one with a vocabulary of its own; one that names the first two's files
  through a linked directory."""
  data = tmp_path_factory.mktemp("data")
  examples = synthetic.TASKS["recall"]()
  write_lines(data / "train.txt", examples[:600])
  write_lines(data / "test.txt", examples[-150:])
  config = dataclasses.replace(
    TINY,
    train_data=f"lines:{data}/train.txt",
    eval_data="holdout:10%",
    test_data=f"lines:{data}/test.txt",
  )
  # A training set prepared beforehand (token ids), with a dev and a test file of their own.
  prepared = data / "prepared_train"
  prepare_corpus(f"lines:{data}/train.txt", str(prepared), with_labels=True)
  linked = tmp_path_factory.mktemp("elsewhere") / "data"
  linked.symlink_to(data)
  runs = {}
  for name, changes in [
    ("lstm_seed0", {}),
    ("gru_seed1", {"model": "gru", "seed": 1}),
    ("other_dev", {"eval_data": f"lines:{data}/test.txt[:50%]", "test_data": ""}),
    (
      "prepared_train",
      {"train_data": f"prepared:{prepared}", "eval_data": f"lines:{data}/test.txt[:50%]"},
    ),
    ("prepared_holdout", {"train_data": f"prepared:{prepared}", "test_data": ""}),
    ("other_training_data", {"train_data": f"lines:{data}/train.txt[:80%]"}),
    # A vocabulary of its own (the 5 most frequent letters and the specials).
    ("own_vocabulary", {"seed": 3, "vocab_size": 8}),
    # The same files by other paths, as a run from another checkout names them.
    (
      "through_a_link",
      {
        "seed": 2,
        "train_data": f"lines:{linked}/train.txt",
        "test_data": f"lines:{linked}/test.txt",
      },
    ),
  ]:
    workdir = str(data / name)
    runs[name] = (workdir, train_and_evaluate(dataclasses.replace(config, **changes), workdir))
  return runs


def test_members_score_as_their_runs_did_and_the_ensemble_averages_them(members, tmp_path):
  (first, first_summary), (second, second_summary) = members["lstm_seed0"], members["gru_seed1"]
  output = tmp_path / "ensemble.json"
  result = ensemble(f"--workdirs={first},{second}", f"--output={output}")
  assert result.returncode == 0, result.stderr[-2000:]
  summary = json.loads(output.read_text())
  assert summary == json.loads(result.stdout[: result.stdout.rindex("}") + 1])
  for member, (workdir, own) in zip(
    summary["members"], [members["lstm_seed0"], members["gru_seed1"]]
  ):
    # The selected parameters, on the same dev and test examples as the trainer's own evaluations.
    assert member["workdir"] == workdir and member["step"] == own["best"]["step"]
    assert member["eval"]["accuracy"] == pytest.approx(own["best"]["eval"]["accuracy"], abs=1e-9)
    assert member["test"]["accuracy"] == pytest.approx(own["test"]["accuracy"], abs=1e-9)
    assert member["eval"]["loss"] == pytest.approx(own["best"]["eval"]["loss"], rel=1e-4)
    assert member["test"]["loss"] == pytest.approx(own["test"]["loss"], rel=1e-4)
    # and the same per-class report as the trainer counted on the device
    assert member["eval"]["confusion_matrix"] == own["best"]["eval"]["confusion_matrix"]
    for name, figures in own["test"]["per_class"].items():
      assert member["test"]["per_class"][name] == pytest.approx(figures, abs=1e-9)
  assert (
    summary["members"][0]["eval"]["examples"] == 60
    and summary["members"][0]["test"]["examples"] == 150
  )
  assert first_summary["test"] != second_summary["test"]  # two different models

  # The ensemble is the average of the members' probabilities (from training.tools.predict here).
  examples = synthetic.TASKS["recall"]()[-150:]
  texts, labels = [e["text"] for e in examples], np.array([e["label"] for e in examples])
  probabilities = []
  for workdir in (first, second):
    predicted = subprocess.run(
      [sys.executable, "-m", "training.tools.predict", f"--workdir={workdir}", "--input=-"],
      cwd=ROOT,
      input="".join(t + "\n" for t in texts),
      capture_output=True,
      text=True,
      timeout=300,
    )
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    rows = [json.loads(line)["probabilities"] for line in predicted.stdout.splitlines()]
    probabilities.append(np.array([[row[str(c)] for c in range(len(row))] for row in rows]))
  average = np.mean(probabilities, axis=0)
  assert summary["ensemble"]["test"]["accuracy"] == pytest.approx(
    np.mean(average.argmax(1) == labels), abs=1e-9
  )
  ensembled = summary["ensemble"]["test"]
  assert ensembled["confusion_matrix"] == (
    sklearn.metrics.confusion_matrix(labels, average.argmax(1), labels=[0, 1, 2]).tolist()
  )
  assert ensembled["macro_f1"] == pytest.approx(
    sklearn.metrics.f1_score(labels, average.argmax(1), average="macro"), abs=1e-12
  )
  assert "weighted avg" in result.stdout  # the ensemble's table
  expected_loss = -np.mean(np.log(average[np.arange(len(labels)), labels]))
  assert summary["ensemble"]["test"]["loss"] == pytest.approx(expected_loss, rel=1e-4)


def test_members_that_name_the_same_files_by_other_paths_are_scored_together(members):
  (first, _), (linked, linked_summary) = members["lstm_seed0"], members["through_a_link"]
  result = ensemble(f"--workdirs={first},{linked}")
  assert result.returncode == 0, result.stderr[-2000:]
  summary = json.loads(result.stdout[: result.stdout.rindex("}") + 1])
  assert summary["members"][1]["test"]["accuracy"] == pytest.approx(
    linked_summary["test"]["accuracy"], abs=1e-9
  )


def test_each_member_reads_the_texts_with_its_own_vocabulary(members):
  (first, first_summary), (own, own_summary) = members["lstm_seed0"], members["own_vocabulary"]
  vocabularies = [
    json.loads(open(os.path.join(workdir, "vocab.json")).read())["tokens"]
    for workdir in (first, own)
  ]
  assert len(vocabularies[1]) == 8 < len(vocabularies[0])
  result = ensemble(f"--workdirs={first},{own}")
  assert result.returncode == 0, result.stderr[-2000:]
  summary = json.loads(result.stdout[: result.stdout.rindex("}") + 1])
  for member, run_summary in zip(summary["members"], (first_summary, own_summary)):
    assert member["eval"]["accuracy"] == pytest.approx(
      run_summary["best"]["eval"]["accuracy"], abs=1e-9
    )
    assert member["test"]["accuracy"] == pytest.approx(run_summary["test"]["accuracy"], abs=1e-9)
    assert member["test"]["loss"] == pytest.approx(run_summary["test"]["loss"], rel=1e-4)


@pytest.mark.parametrize("member", ["lstm_seed0", "prepared_train"])
def test_a_run_ensembled_with_itself_scores_as_itself(members, member):
  workdir, own = members[member]
  result = ensemble(f"--workdirs={workdir},{workdir}")
  assert result.returncode == 0, result.stderr[-2000:]
  summary = json.loads(result.stdout[: result.stdout.rindex("}") + 1])
  # The dev and test files read as the trainer read them (also beside a prepared training set).
  assert summary["members"][0]["eval"]["accuracy"] == pytest.approx(
    own["best"]["eval"]["accuracy"], abs=1e-9
  )
  assert summary["members"][0]["test"]["accuracy"] == pytest.approx(
    own["test"]["accuracy"], abs=1e-9
  )
  for split in ("eval", "test"):
    assert summary["ensemble"][split]["accuracy"] == summary["members"][0][split]["accuracy"]
    assert summary["ensemble"][split]["loss"] == pytest.approx(
      summary["members"][0][split]["loss"], rel=1e-6
    )


def test_members_with_other_splits_one_member_or_a_missing_run_are_refused_in_one_line(
  members, tmp_path
):
  workdir, _ = members["lstm_seed0"]
  other, _ = members["other_dev"]
  result = ensemble(f"--workdirs={workdir},{other}")
  assert result.returncode == 2 and "Traceback" not in result.stderr
  assert (
    result.stderr.strip()
    .splitlines()[-1]
    .startswith(f"error: --workdirs: {other} was trained with --eval_data ")
  )
  assert "the members must share their dev and test splits and classes" in result.stderr
  # The same `holdout:10%` of other training data is another dev split.
  other_data, _ = members["other_training_data"]
  refused = ensemble(f"--workdirs={workdir},{other_data}")
  assert refused.returncode == 2 and "Traceback" not in refused.stderr
  assert (
    refused.stderr.strip()
    .splitlines()[-1]
    .startswith(
      f"error: --workdirs: {other_data} holds out its dev split (holdout:10%) from --train_data"
    )
  )
  # A dev split held out of a prepared training set exists only as token ids.
  holdout, _ = members["prepared_holdout"]
  refused = ensemble(f"--workdirs={holdout},{holdout}")
  assert refused.returncode == 2 and "Traceback" not in refused.stderr
  assert (
    refused.stderr.strip()
    .splitlines()[-1]
    .startswith("error: --eval_data=holdout:10%: the run read this split from a prepared dataset")
  )
  lone = ensemble(f"--workdirs={workdir}")
  assert lone.returncode == 2 and "name two runs or more" in lone.stderr
  missing = ensemble(f"--workdirs={workdir},{tmp_path}/nothing")
  assert missing.returncode == 2 and "no trained run there" in missing.stderr


def test_the_quality_table_reports_each_run_and_ensemble_from_what_the_runs_wrote(
  members, tmp_path
):
  """`python -m bench.quality` (without --train) on a workdir holding two of its runs under the
  configs' names: their rows carry their summaries' figures, the forward + backward ensemble row
  the figures `training.tools.ensemble` writes, and what is missing says so."""
  (first, first_summary), (second, second_summary) = members["lstm_seed0"], members["gru_seed1"]
  runs_dir = tmp_path / "runs"
  runs_dir.mkdir()
  (runs_dir / "sst2_pretrained").symlink_to(first)
  (runs_dir / "sst2_pretrained_backward").symlink_to(second)
  out = tmp_path / "quality.md"
  result = subprocess.run(
    [sys.executable, "-m", "bench.quality", f"--workdir={runs_dir}", f"--out={out}"],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 0, result.stderr[-2000:]
  rows = {
    cells[0]: cells[1:]
    for cells in (
      line.strip("| ").split(" | ")
      for line in out.read_text().splitlines()
      if line.startswith("| `")
    )
  }
  for name, summary in (
    ("sst2_pretrained", first_summary),
    ("sst2_pretrained_backward", second_summary),
  ):
    time, dev, test, steps = rows[f"`{name}`"][:4]
    assert time.endswith(" min")
    assert (
      dev == f"{100 * summary['best']['eval']['accuracy']:.1f}% (step {summary['best']['step']})"
    )
    assert test == f"{100 * summary['test']['accuracy']:.1f}%" and steps == str(summary["step"])
  scored = json.loads((runs_dir / "sst2_pretrained_forward_backward.json").read_text())
  pair = rows["`sst2_pretrained` + `sst2_pretrained_backward`: ensemble"]
  assert pair[1] == f"{100 * scored['ensemble']['eval']['accuracy']:.1f}%"
  assert pair[2].startswith(
    f"{100 * scored['ensemble']['test']['accuracy']:.1f}% (members "
    f"{100 * first_summary['test']['accuracy']:.1f}%, "
  )
  assert pair[3] == f"{first_summary['step']}, {second_summary['step']}"
  # Runs the workdir lacks (seeds 1 and 2 of the seeds ensemble among them) are listed as not run.
  assert (
    rows["`imdb`"][0] == "not run"
    and rows["`sst2_pretrained`, seeds 0, 1, 2: ensemble"][0] == "not run"
  )
