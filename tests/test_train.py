"""The trainer end to end: exact resume, reports, errors, and the default job learning."""

import dataclasses
import json
import os
import shutil
import subprocess
import sys

import pytest

from training.config import Config, ConfigError
from training.loop.trainer import train_and_evaluate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = Config(
  hidden_size=16,
  embed_size=8,
  head_widths=(8,),
  batch_size=8,
  seq_len=16,
  dropout=0.1,
  num_steps=40,
  log_every=5,
  eval_every=0,
  eval_steps=2,
  checkpoint_every=10,
  async_checkpointing=True,
)


def read_rows(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


@pytest.mark.newest_jax
@pytest.mark.parametrize("task", ["lm", "classify"])
def test_stopped_and_resumed_run_ends_exactly_like_an_uninterrupted_one(tmp_path, task):
  config = dataclasses.replace(TINY, task=task)
  whole = train_and_evaluate(config, str(tmp_path / "whole"))
  first_half = train_and_evaluate(
    dataclasses.replace(config, num_steps=20), str(tmp_path / "resumed")
  )
  resumed = train_and_evaluate(config, str(tmp_path / "resumed"))
  assert first_half["param_fingerprint"] != whole["param_fingerprint"]
  assert resumed["param_fingerprint"] == whole["param_fingerprint"]
  assert resumed["eval"] == whole["eval"] and resumed["train_loss"] == whole["train_loss"]
  # The resumed run's metrics.jsonl reads like the uninterrupted one's (throughput aside).
  strip = lambda rows: [
    {k: v for k, v in r.items() if k not in ("tokens_per_sec", "elapsed_s")}
    for r in rows
    if r["split"] == "train"
  ]
  assert strip(read_rows(tmp_path / "resumed")) == strip(read_rows(tmp_path / "whole"))


@pytest.mark.parametrize("task", ["lm", "classify"])
def test_resuming_from_a_mid_run_checkpoint_matches(tmp_path, task):
  """Checkpoint 20 is saved (asynchronously) while training goes on: what it holds, the data
  position included, must be step 20's, not a later one's."""
  config = dataclasses.replace(TINY, task=task, keep_checkpoints=5)
  whole = train_and_evaluate(config, str(tmp_path / "run"))
  checkpoints = tmp_path / "run" / "checkpoints"
  for step in ("30", "40"):  # as if the run had crashed at step 25
    shutil.rmtree(checkpoints / step)
  resumed = train_and_evaluate(config, str(tmp_path / "run"))
  assert resumed["param_fingerprint"] == whole["param_fingerprint"]


@pytest.mark.parametrize("batching", ["bucket", "pack"])
def test_bucketed_and_packed_runs_resume_exactly_and_report_their_shapes(tmp_path, batching):
  config = dataclasses.replace(
    TINY,
    task="classify",
    batching=batching,
    seq_len=48,
    bucket_boundaries=(20, 30, 48) if batching == "bucket" else (),
  )
  whole = train_and_evaluate(config, str(tmp_path / "whole"))
  train_and_evaluate(dataclasses.replace(config, num_steps=20), str(tmp_path / "resumed"))
  resumed = train_and_evaluate(config, str(tmp_path / "resumed"))
  # All but `best`: the shorter first run's final evaluation (step 20) is a candidate too.
  without_best = lambda summary: {k: v for k, v in summary.items() if k != "best"}
  assert without_best(resumed) == without_best(whole)
  shapes = whole["batch_shapes"]
  if batching == "pack":
    assert shapes == [[8, 48]] and whole["padding_efficiency"] > 0.9
  else:
    assert shapes == [[8, 20], [8, 30], [8, 48]]
    assert whole["padding_efficiency"] > 0.7  # padding every sequence to 48 gives 0.52
  assert whole["truncated_examples"] == 0


def test_several_steps_per_call_train_exactly_as_one_per_call_and_resume_across(tmp_path):
  """Steps run inside one call (a scan over stacked batches) are the same steps: the same
  parameters, rows and evaluations, also for a run resumed with another number per call. Calls
  end at logs (every 10 steps), checkpoints and evaluations; bucketed batches change shape
  between steps, which ends a call too. (A language model's carried state across calls: the
  2 x 2 jobs of tests/test_multihost.py, against one process, and its SIGTERM test's resume.)"""
  config = dataclasses.replace(
    TINY,
    task="classify",
    batching="bucket",
    seq_len=48,
    log_every=10,
    eval_every=20,
    bucket_boundaries=(20, 30, 48),
  )
  one = train_and_evaluate(config, str(tmp_path / "one"))
  train_and_evaluate(
    dataclasses.replace(config, steps_per_call=4, num_steps=20), str(tmp_path / "several")
  )
  several = train_and_evaluate(
    dataclasses.replace(config, steps_per_call=3), str(tmp_path / "several")
  )
  assert several["param_fingerprint"] == one["param_fingerprint"]
  assert several["eval"] == one["eval"] and several["train_loss"] == one["train_loss"]
  strip = lambda rows: [
    {k: v for k, v in r.items() if k not in ("tokens_per_sec", "elapsed_s")} for r in rows
  ]
  assert strip(read_rows(tmp_path / "several")) == strip(read_rows(tmp_path / "one"))
  assert len(one["batch_shapes"]) > 1  # the shapes did change within calls' reach


def test_same_flags_and_seed_give_the_same_run_and_another_seed_does_not(tmp_path):
  config = dataclasses.replace(TINY, num_steps=10)
  a = train_and_evaluate(config, str(tmp_path / "a"))
  b = train_and_evaluate(config, str(tmp_path / "b"))
  c = train_and_evaluate(dataclasses.replace(config, seed=1), str(tmp_path / "c"))
  assert a == b and a["param_fingerprint"] != c["param_fingerprint"]


def test_carrying_the_state_changes_training(tmp_path):
  config = dataclasses.replace(TINY, num_steps=10, dropout=0.0)
  carried = train_and_evaluate(config, str(tmp_path / "carried"))
  reset = train_and_evaluate(
    dataclasses.replace(config, carry_state=False), str(tmp_path / "reset")
  )
  assert carried["param_fingerprint"] != reset["param_fingerprint"]


def test_reports_and_checkpoints_on_disk(tmp_path):
  workdir = str(tmp_path / "run")
  summary = train_and_evaluate(dataclasses.replace(TINY, task="classify", eval_every=20), workdir)
  rows = read_rows(workdir)
  train_rows = [r for r in rows if r["split"] == "train"]
  assert [r["step"] for r in train_rows] == list(range(5, 41, 5))
  assert all(
    {"loss", "accuracy", "tokens_per_sec", "padding_efficiency"} <= r.keys() for r in train_rows
  )
  report = ["classes", "confusion_matrix", "macro_f1", "macro_precision", "macro_recall"]
  report += ["per_class", "weighted_f1", "weighted_precision", "weighted_recall"]
  evaluation = sorted(["accuracy", "elapsed_s", "loss", "split", "step", *report])
  assert [(r["step"], sorted(r)) for r in rows if r["split"] == "eval"] == [
    (20, evaluation),
    (40, evaluation),
  ]
  with open(os.path.join(workdir, "summary.json")) as f:
    assert json.load(f) == summary
  assert summary["step"] == 40 and len(summary["param_fingerprint"]) == 64
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["20", "30", "40"]  # keeps 3
  assert os.path.exists(os.path.join(workdir, "vocab.json"))


def test_resume_with_other_model_flags_is_refused_and_leaves_the_checkpoint(tmp_path):
  workdir = str(tmp_path / "run")
  train_and_evaluate(dataclasses.replace(TINY, num_steps=10), workdir)
  before = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
  with pytest.raises(ConfigError, match=r"--hidden_size=32 differs from 16 .* use a new --workdir"):
    train_and_evaluate(dataclasses.replace(TINY, num_steps=20, hidden_size=32), workdir)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == before


def run_cli(*flags, timeout=300):
  return subprocess.run(
    [sys.executable, "-m", "training.train", *flags],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=timeout,
  )


@pytest.mark.parametrize(
  "flag, message",
  [
    ("--model=transformer", "error: --model: unknown value 'transformer'"),
    ("--task=regress", "error: --task: unknown value 'regress'"),
    ("--train_data=xml:x.xml", "error: --train_data='xml:x.xml': unknown data kind 'xml'"),
    ("--train_data=text:/no/such.txt", "error: --train_data: no such file: /no/such.txt"),
  ],
)
def test_bad_flags_give_one_line_and_no_traceback(tmp_path, flag, message):
  result = run_cli(f"--workdir={tmp_path}", flag)
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1].startswith(message)
  assert "Traceback" not in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("task", ["lm", "classify"])
def test_default_job_learns_its_generated_task(tmp_path, task):
  """The README's first command, as a user runs it (per-token and per-sequence)."""
  result = run_cli(f"--workdir={tmp_path}", f"--task={task}")
  assert result.returncode == 0, result.stderr[-3000:]
  rows = read_rows(tmp_path)
  first_loss = rows[0]["loss"]
  final_eval = [r for r in rows if r["split"] == "eval"][-1]
  assert final_eval["step"] == 1000
  if task == "lm":
    # Starts near ln(vocab) ~ 2.5; a model without memory cannot go below ~1.9 nats/char.
    assert first_loss > 2.0 and final_eval["loss"] < 1.5
  else:
    assert final_eval["accuracy"] > 0.95 and final_eval["loss"] < 0.2 * first_loss
  assert "step 1000/1000" in result.stderr and "eta" in result.stderr
  # It ends with one line of the figures that matter, not the whole summary.
  with open(tmp_path / "summary.json") as f:
    best = json.load(f)["best"]
  last_line = result.stderr.strip().splitlines()[-1]
  headline = "accuracy" if task == "classify" else "bits_per_byte"
  assert (
    f"Finished at step 1000; dev loss {best['eval']['loss']:.4f}" in last_line
    and f"  {headline} {best['eval'][headline]:.4f}" in last_line
    and f"at step {best['step']} (chosen by {best['select_metric']})" in last_line
    and last_line.endswith(f"the whole summary: {tmp_path / 'summary.json'}")
  ), last_line


def test_flagfile_sets_flags(tmp_path):
  flagfile = tmp_path / "tiny.flags"
  flagfile.write_text(
    "--hidden_size=8\n--embed_size=4\n--batch_size=4\n--seq_len=8\n--num_steps=3\n"
    "--log_every=1\n--eval_steps=1\n"
  )
  result = run_cli(f"--workdir={tmp_path / 'run'}", f"--flagfile={flagfile}")
  assert result.returncode == 0, result.stderr[-3000:]
  assert [r["step"] for r in read_rows(tmp_path / "run") if r["split"] == "train"] == [1, 2, 3]


def test_a_moving_average_changes_what_is_evaluated_and_served_not_what_is_trained(tmp_path):
  from training.bookkeeping.metrics_log import param_fingerprint
  from training.bookkeeping.trained_run import load_run

  config = dataclasses.replace(TINY, task="classify", num_steps=20)
  plain = train_and_evaluate(config, str(tmp_path / "plain"))
  averaged = train_and_evaluate(
    dataclasses.replace(config, ema_decay=0.9), str(tmp_path / "averaged")
  )
  assert averaged["param_fingerprint"] == plain["param_fingerprint"]  # the same updates ...
  assert averaged["eval"] != plain["eval"]  # ... but the average is evaluated
  served = load_run(str(tmp_path / "averaged"), step=20).params
  assert param_fingerprint(served) != averaged["param_fingerprint"]
  assert (
    param_fingerprint(load_run(str(tmp_path / "plain"), step=20).params)
    == plain["param_fingerprint"]
  )


def test_a_run_with_a_moving_average_resumes_exactly(tmp_path):
  config = dataclasses.replace(TINY, task="lm", ema_decay=0.95)
  whole = train_and_evaluate(config, str(tmp_path / "whole"))
  train_and_evaluate(dataclasses.replace(config, num_steps=20), str(tmp_path / "resumed"))
  resumed = train_and_evaluate(config, str(tmp_path / "resumed"))
  assert resumed["param_fingerprint"] == whole["param_fingerprint"]
  assert resumed["eval"] == whole["eval"]  # the average, restored with the rest
