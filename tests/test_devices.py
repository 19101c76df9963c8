"""Data parallelism on one host: 4 CPU devices train to the same losses as 1 device."""

import json
import os
import subprocess
import sys

import pytest

from launch import local
from tests.promises import needs_onednn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = [
  "--hidden_size=16",
  "--embed_size=8",
  "--head_widths=8",
  "--batch_size=8",
  "--seq_len=16",
  "--dropout=0.1",
  "--num_steps=20",
  "--log_every=5",
  "--eval_every=10",
  "--eval_steps=3",
  "--checkpoint_every=10",
]


def train(workdir, task, devices, *extra):
  env = local.process_env(devices, dict(os.environ))
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "training.train",
      f"--workdir={workdir}",
      f"--task={task}",
      *FLAGS,
      *extra,
    ],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


@pytest.mark.parametrize("task", ["lm", "classify"])
def test_four_devices_match_one_device(tmp_path, task):
  one = train(tmp_path / "one", task, devices=1)
  four = train(tmp_path / "four", task, devices=4)
  assert [(r["step"], r["split"]) for r in one] == [(r["step"], r["split"]) for r in four]
  for a, b in zip(one, four):
    assert b["loss"] == pytest.approx(a["loss"], rel=1e-4), (a, b)


@needs_onednn
# (classifier batches through the kernel: tests/test_kernels.py)
@pytest.mark.parametrize("task", ["lm"])
def test_four_devices_each_running_the_onednn_kernel_match_the_scan(tmp_path, task):
  """Under shard_map every device runs oneDNN's LSTM on its own rows (each with its own dropout
  masks, so the reference is the scan under shard_map on as many devices)."""
  flags = ["--model=lstm", "--parallelism=shard_map"]
  kernel = train(tmp_path / "kernel", task, 4, *flags, "--recurrent_kernel=onednn")
  scan = train(tmp_path / "scan", task, 4, *flags, "--recurrent_kernel=scan")
  assert len(kernel) == len(scan)
  # Each of the 4 devices ran the kernel on its rows (the kernel's own call counts show it).
  with open(tmp_path / "kernel" / "summary.json") as f:
    time_loop = json.load(f)["time_loop"]
  assert time_loop["layers"] == {"encoder/layer_0": "onednn"}
  calls = time_loop["onednn_calls"]
  assert calls["forward_training"] > 0 and calls["forward_training"] % 4 == 0, calls
  assert calls["backward"] == calls["forward_training"], calls
  for a, b in zip(kernel, scan):
    assert b["loss"] == pytest.approx(a["loss"], rel=1e-4), (a, b)


def test_batch_that_does_not_divide_by_the_devices_is_refused(tmp_path):
  env = local.process_env(4, dict(os.environ))
  result = subprocess.run(
    [sys.executable, "-m", "training.train", f"--workdir={tmp_path}", "--batch_size=6"],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1] == (
    "error: --batch_size: the global batch of 6 does not divide by the 4 devices; use a multiple of 4"
  )
