"""Exact resume at the compiler level users run. The suite compiles at LLVM -O0 to save time
(tests/conftest.py); these trainers run without it, as `rnn-train` does: a run stopped and
resumed ends bit for bit as the uninterrupted one, per token and per sequence, and a checkpoint
written by two processes resumes on one with the same losses."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from launch import local

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = [
  "--hidden_size=16",
  "--embed_size=8",
  "--head_widths=8",
  "--batch_size=8",
  "--seq_len=16",
  "--log_every=5",
  "--eval_every=0",
  "--eval_steps=2",
  "--checkpoint_every=10",
]
pytestmark = pytest.mark.slow


def users_environment(devices: int = 1) -> dict:
  """This environment without the suite's -O0 (and with `devices` CPU devices)."""
  env = local.process_env(devices, dict(os.environ))
  flags = [
    flag
    for flag in env.get("XLA_FLAGS", "").split()
    if not flag.startswith("--xla_backend_optimization_level")
  ]
  env["XLA_FLAGS"] = " ".join(flags)
  return env


def train(workdir, *flags, processes: int = 1, devices: int = 1) -> dict:
  command = [sys.executable, "-m", "training.train", f"--workdir={workdir}", *TINY, *flags]
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
  result = subprocess.run(
    command, cwd=ROOT, env=users_environment(devices), capture_output=True, text=True, timeout=300
  )
  assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
  assert "xla_backend_optimization_level" not in users_environment()["XLA_FLAGS"]
  with open(os.path.join(workdir, "summary.json")) as f:
    summary = json.load(f)
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    summary["rows"] = [json.loads(line) for line in f]
  return summary


@pytest.mark.parametrize("task", ["lm", "classify"])
def test_a_resumed_run_ends_exactly_as_the_uninterrupted_one(tmp_path, task):
  whole = train(tmp_path / "whole", f"--task={task}", "--num_steps=20")
  half = train(tmp_path / "resumed", f"--task={task}", "--num_steps=10")
  resumed = train(tmp_path / "resumed", f"--task={task}", "--num_steps=20")
  assert half["param_fingerprint"] != whole["param_fingerprint"]
  assert resumed["param_fingerprint"] == whole["param_fingerprint"]
  assert resumed["eval"] == whole["eval"]


def test_a_checkpoint_of_two_processes_resumes_on_one_with_the_same_losses(tmp_path):
  # Checkpoints 10 and 20
  reference = train(tmp_path / "2x1", "--num_steps=20", processes=2, devices=1)
  shutil.copytree(tmp_path / "2x1", tmp_path / "1x1")
  resumed = train(tmp_path / "1x1", "--num_steps=20", "--restore_step=10")
  after = lambda rows: [(r["step"], r["split"], r["loss"]) for r in rows if r["step"] > 10]
  assert [r[:2] for r in after(resumed["rows"])] == [r[:2] for r in after(reference["rows"])] != []
  for ours, theirs in zip(after(resumed["rows"]), after(reference["rows"])):
    assert ours[2] == pytest.approx(theirs[2], rel=1e-5), (ours, theirs)
