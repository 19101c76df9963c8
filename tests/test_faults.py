"""Fault injection: the real trainer as a subprocess, killed, stopped, fed damaged checkpoints,
NaNs and bad input. Nothing it already had may be lost, and a resumed run must end exactly like
an uninterrupted one."""

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest

from launch import local
from training.bookkeeping.workdir import require_free_space
from training.config import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_STEPS = 200
TINY = [
  "--hidden_size=16",
  "--embed_size=8",
  "--head_widths=8",
  "--batch_size=8",
  "--seq_len=16",
  "--dropout=0.1",
  "--log_every=1",
  "--eval_steps=1",
  "--checkpoint_every=5",
  "--keep_checkpoints=4",
]


def command(workdir, *flags):
  return [sys.executable, "-m", "training.train", f"--workdir={workdir}", *TINY, *flags]


def run(workdir, *flags, env=None):
  return subprocess.run(
    command(workdir, *flags), cwd=ROOT, capture_output=True, text=True, timeout=300, env=env
  )


def summary(workdir):
  with open(os.path.join(workdir, "summary.json")) as f:
    return json.load(f)


def logged_steps(workdir):
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    lines = f.read().split("\n")
  # Every complete line must parse; only the last, unterminated one may be half written (a
  # process killed, or still writing, in the middle of it).
  steps = []
  for line in lines[:-1]:
    row = json.loads(line)
    if row["split"] == "train":
      steps.append(row["step"])
  return steps


def checkpoint_steps(workdir):
  directory = os.path.join(workdir, "checkpoints")
  return sorted(int(name) for name in os.listdir(directory) if name.isdigit())


def snapshot(directory):
  """Every file under `directory` with its hash: equal snapshots mean nothing was touched."""
  files = {}
  for parent, _, names in os.walk(directory):
    for name in names:
      path = os.path.join(parent, name)
      with open(path, "rb") as f:
        files[os.path.relpath(path, directory)] = hashlib.sha256(f.read()).hexdigest()
  return files


def start_and_wait_for_step(workdir, step, *flags):
  process = subprocess.Popen(
    command(workdir, f"--num_steps={NUM_STEPS}", *flags),
    cwd=ROOT,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.PIPE,
    text=True,
  )
  deadline = time.time() + 120
  while time.time() < deadline and process.poll() is None:
    steps = logged_steps(workdir)
    if steps and steps[-1] >= step:
      return process
    time.sleep(0.01)
  process.kill()
  raise AssertionError(f"the trainer did not reach step {step}: {process.stderr.read()[-2000:]}")


def assert_one_line_error(result, expected):
  assert result.returncode != 0
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and expected in last, result.stderr[-2000:]
  assert "Traceback" not in result.stderr


@pytest.fixture(scope="module")
def uninterrupted_run(tmp_path_factory):
  """A finished run of NUM_STEPS: its fingerprint is what every resumed run must end with, and
  tests that damage or rewind a finished run start from a copy of its workdir."""
  workdir = tmp_path_factory.mktemp("uninterrupted") / "run"
  result = run(workdir, f"--num_steps={NUM_STEPS}")
  assert result.returncode == 0, result.stderr[-2000:]
  return workdir


@pytest.fixture(scope="module")
def uninterrupted(uninterrupted_run):
  return summary(uninterrupted_run)["param_fingerprint"]


def copy_of(finished_workdir, workdir):
  shutil.copytree(finished_workdir, workdir)
  return workdir


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_ends_exactly_as_uninterrupted(
  tmp_path, uninterrupted
):
  rng = random.Random(0)
  workdir = tmp_path / "killed"
  target = 0
  for _ in range(3):
    target = rng.randint(target + 8, target + 50)
    process = start_and_wait_for_step(workdir, target)
    time.sleep(rng.random() * 0.05)  # anywhere: mid-step, mid-save, mid-write of a log line
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
  result = run(workdir, f"--num_steps={NUM_STEPS}")
  assert result.returncode == 0, result.stderr[-2000:]
  assert summary(workdir)["param_fingerprint"] == uninterrupted
  assert logged_steps(workdir) == list(range(1, NUM_STEPS + 1))  # no gaps, no repeats


def test_sigterm_saves_at_the_current_step_exits_zero_and_resumes_exactly(tmp_path, uninterrupted):
  workdir = tmp_path / "terminated"
  process = start_and_wait_for_step(workdir, 42)
  process.send_signal(signal.SIGTERM)
  _, stderr = process.communicate(timeout=120)
  assert process.returncode == 0, stderr[-2000:]
  stopped_at = logged_steps(workdir)[-1]
  # Saved where it stopped, not at a multiple of 5
  assert checkpoint_steps(workdir)[-1] == stopped_at
  assert f"Stopped at step {stopped_at}; checkpoint saved" in stderr
  assert not os.path.exists(workdir / "summary.json")
  result = run(workdir, f"--num_steps={NUM_STEPS}")
  assert result.returncode == 0, result.stderr[-2000:]
  assert summary(workdir)["param_fingerprint"] == uninterrupted


def _truncate_largest_array_file(checkpoint):
  files = [
    os.path.join(parent, name)
    for parent, _, names in os.walk(checkpoint / "state")
    for name in names
    if os.sep + "d" + os.sep in os.path.join(parent, name)
  ]
  largest = max(files, key=os.path.getsize)
  with open(largest, "r+b") as f:
    f.truncate(os.path.getsize(largest) // 3)


@pytest.mark.parametrize(
  "damage", ["truncated array file", "truncated state metadata", "missing state item"]
)
def test_unreadable_latest_checkpoint_is_set_aside_and_the_previous_one_used(
  tmp_path, uninterrupted_run, uninterrupted, damage
):
  workdir = copy_of(uninterrupted_run, tmp_path / "damaged")
  latest = workdir / "checkpoints" / str(NUM_STEPS)
  if damage == "truncated array file":
    _truncate_largest_array_file(latest)
  elif damage == "truncated state metadata":
    with open(latest / "state" / "_METADATA", "r+b") as f:
      f.truncate(10)
  else:
    shutil.rmtree(latest / damage.split()[1])
  damaged_files = snapshot(latest)
  os.remove(workdir / "summary.json")
  result = run(workdir, f"--num_steps={NUM_STEPS}")
  assert result.returncode == 0, result.stderr[-2000:]
  assert f"Checkpoint {latest} cannot be read" in result.stderr
  assert "Traceback" not in result.stderr
  # Kept, not deleted
  assert snapshot(workdir / "set_aside_checkpoints" / str(NUM_STEPS)) == damaged_files
  assert summary(workdir)["param_fingerprint"] == uninterrupted  # retrained from step 195


def test_no_readable_checkpoint_is_a_clear_error_that_deletes_nothing(tmp_path):
  workdir = tmp_path / "all_damaged"
  assert run(workdir, "--num_steps=10").returncode == 0
  for step in checkpoint_steps(workdir):
    shutil.rmtree(workdir / "checkpoints" / str(step) / "state")
  before = snapshot(workdir / "checkpoints")
  result = run(workdir, "--num_steps=20")
  assert_one_line_error(result, f"no readable checkpoint in {workdir / 'checkpoints'}: step 10:")
  assert snapshot(workdir / "checkpoints") == before


def test_restore_step_resumes_from_an_earlier_checkpoint_and_sets_later_ones_aside(
  tmp_path, uninterrupted_run, uninterrupted
):
  workdir = copy_of(uninterrupted_run, tmp_path / "rewound")
  result = run(workdir, f"--num_steps={NUM_STEPS}", f"--restore_step={NUM_STEPS - 10}")
  assert result.returncode == 0, result.stderr[-2000:]
  assert sorted(os.listdir(workdir / "set_aside_checkpoints")) == [
    str(NUM_STEPS - 5),
    str(NUM_STEPS),
    "best_checkpoint",
  ]
  # The best checkpoint of the abandoned future (the final evaluation's) is set aside too.
  assert os.listdir(workdir / "set_aside_checkpoints" / "best_checkpoint") == [str(NUM_STEPS)]
  assert summary(workdir)["param_fingerprint"] == uninterrupted
  assert_one_line_error(
    run(workdir, f"--num_steps={NUM_STEPS}", "--restore_step=7"),
    "--restore_step=7: no checkpoint at that step",
  )


def test_nan_stops_the_run_naming_the_step_and_keeps_the_last_checkpoint(tmp_path):
  workdir = tmp_path / "nan"
  result = run(workdir, "--num_steps=40", "--inject_nan_at_step=23", "--log_every=10")
  assert_one_line_error(
    result,
    "error: step 23: the loss or gradients are not finite; stopped."
    " The last checkpoint (step 20) is intact",
  )
  assert checkpoint_steps(workdir)[-1] == 20
  # The kept checkpoint is good: resuming without the fault finishes the run.
  resumed = run(workdir, "--num_steps=40")
  assert resumed.returncode == 0, resumed.stderr[-2000:]


def test_nan_stops_the_run_at_the_end_of_its_log_window_before_the_next_save(tmp_path):
  # A window's row is written (and checked) once the next step is queued: the run stops there,
  # with no row for the failed window, not at the next save.
  workdir = tmp_path / "nan"
  result = run(
    workdir, "--num_steps=40", "--inject_nan_at_step=23", "--log_every=5", "--checkpoint_every=20"
  )
  assert_one_line_error(
    result,
    "error: step 23: the loss or gradients are not finite; stopped."
    " The last checkpoint (step 20) is intact",
  )
  assert checkpoint_steps(workdir) == [20]
  with open(workdir / "metrics.jsonl") as f:
    assert [row["step"] for row in map(json.loads, f) if row["split"] == "train"] == [5, 10, 15, 20]
  assert "step 20/40" in result.stderr and "step 25/40" not in result.stderr


def test_nan_can_be_skipped_instead(tmp_path):
  workdir = tmp_path / "nan_skipped"
  result = run(workdir, "--num_steps=30", "--inject_nan_at_step=23", "--on_nonfinite=skip")
  assert result.returncode == 0, result.stderr[-2000:]
  assert (
    "Skipped 1 update(s) with a non-finite loss or gradient (the first at step 23)" in result.stderr
  )
  with open(workdir / "metrics.jsonl") as f:
    rows = [json.loads(line) for line in f]
  assert all(row["loss"] == row["loss"] for row in rows)  # no NaN reached the metrics
  assert summary(workdir)["train_loss"] == summary(workdir)["train_loss"]


def test_unwritable_workdir_is_refused_before_training(tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("not a directory")
  assert_one_line_error(
    run(blocker / "run", "--num_steps=5"), f"--workdir={blocker / 'run'}: cannot write there"
  )


def test_too_little_disk_for_a_checkpoint_is_refused():
  require_free_space("w", free_bytes=10 * 2**20, checkpoint_bytes=2 * 2**20)
  with pytest.raises(
    ConfigError,
    match=r"--workdir=w: 3.0 MiB free, but a checkpoint of this model needs about 4.0 MiB",
  ):
    require_free_space("w", free_bytes=3 * 2**20, checkpoint_bytes=2 * 2**20)


# Bad input: each case runs against a workdir that already holds a finished classify run, and
# must leave its checkpoints byte-identical.
@pytest.fixture(scope="module")
def classify_run(tmp_path_factory):
  root = tmp_path_factory.mktemp("classify")
  train = root / "train.txt"
  train.write_text(
    "".join(f"{i % 2} {'good' if i % 2 else 'bad'} film number {i}\n" for i in range(40))
  )
  workdir = root / "run"
  result = run(
    workdir,
    "--task=classify",
    "--tokenizer=word",
    f"--train_data=lines:{train}",
    f"--eval_data=lines:{train}[:8]",
    "--num_steps=10",
  )
  assert result.returncode == 0, result.stderr[-2000:]
  return root, workdir, snapshot(workdir / "checkpoints")


def _write(root, name, content):
  path = root / name
  path.write_bytes(content if isinstance(content, bytes) else content.encode())
  return path


BAD_INPUTS = {
  "missing file": (
    lambda r: ["--train_data=lines:/no/such/train.txt"],
    "--train_data: no such file: /no/such/train.txt",
  ),
  "empty file": (
    lambda r: [f"--train_data=lines:{_write(r, 'empty.txt', '')}"],
    "--train_data: empty file:",
  ),
  "label not an integer": (
    lambda r: [f"--train_data=lines:{_write(r, 'l.txt', '1 ok' + chr(10) + 'one bad' + chr(10))}"],
    "l.txt:2: label 'one' is a name, but ",
  ),
  "label out of range": (
    lambda r: [
      f"--eval_data=lines:{_write(r, 'r.txt', '1 ok' + chr(10) + '0 a' + chr(10) + '7 far' + chr(10))}"
    ],
    "r.txt:3: label 7 is out of range for 2 classes (",
  ),
  "malformed json": (
    lambda r: [
      f"--train_data=jsonl:{_write(r, 'j.jsonl', json.dumps({'text': 'a', 'label': 1}) + chr(10) + '{oops' + chr(10))}"
    ],
    "j.jsonl:2: malformed JSON",
  ),
  "not utf-8": (
    lambda r: [
      f"--train_data=lines:{_write(r, 'b.txt', b'1 fine' + bytes([10]) + b'0 caf' + bytes([0xE9, 10]))}"
    ],
    "b.txt:2: not valid UTF-8",
  ),
  "unknown model": (lambda r: ["--model=transformer"], "--model: unknown value 'transformer'"),
  "unknown task": (lambda r: ["--task=regress"], "--task: unknown value 'regress'"),
  "unknown batching": (lambda r: ["--batching=zigzag"], "--batching: unknown value 'zigzag'"),
  "unknown data kind": (lambda r: ["--train_data=xml:x.xml"], "unknown data kind 'xml'"),
  "other hidden size": (
    lambda r: ["--hidden_size=32"],
    "--hidden_size=32 differs from 16 of the run in",
  ),
  "other cell": (lambda r: ["--model=gru"], "--model=gru differs from lstm"),
  "other tokenizer": (lambda r: ["--tokenizer=char"], "--tokenizer=char differs from word"),
  "empty eval set": (
    lambda r: [f"--eval_data=lines:{r / 'train.txt'}[100%:]"],
    "--eval_data=lines:",
  ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_line_naming_the_culprit_and_leaves_checkpoints_alone(classify_run, case):
  root, workdir, checkpoints_before = classify_run
  make_flags, expected = BAD_INPUTS[case]
  base = [
    "--task=classify",
    "--tokenizer=word",
    f"--train_data=lines:{root / 'train.txt'}",
    f"--eval_data=lines:{root / 'train.txt'}[:8]",
    "--num_steps=20",
  ]
  result = run(workdir, *base, *make_flags(root))
  assert_one_line_error(result, expected)
  assert snapshot(workdir / "checkpoints") == checkpoints_before


def test_batch_that_does_not_divide_by_the_devices_leaves_checkpoints_alone(classify_run):
  root, workdir, checkpoints_before = classify_run
  env = local.process_env(3, dict(os.environ))
  result = run(
    workdir,
    "--task=classify",
    "--tokenizer=word",
    f"--train_data=lines:{root / 'train.txt'}",
    "--num_steps=20",
    env=env,
  )
  assert_one_line_error(
    result,
    f"--batch_size=8: the run in {workdir} was trained by 1 process(es) x 1 device(s);"
    " this job has 3 devices, which do not divide the global batch of 8",
  )
  assert snapshot(workdir / "checkpoints") == checkpoints_before


def test_a_second_run_on_a_workdir_in_use_is_refused_and_a_killed_runs_lock_is_taken_over(tmp_path):
  workdir = tmp_path / "busy"
  first = start_and_wait_for_step(workdir, 5)
  try:
    second = run(workdir, f"--num_steps={NUM_STEPS}")
    assert_one_line_error(second, f"--workdir={workdir} is in use by host ")
    assert f"pid {first.pid}, running since " in second.stderr
    assert first.poll() is None  # the first run goes on, untouched
  finally:
    first.kill()  # SIGKILL: the lock file stays behind, the OS lock does not
    first.wait()
  assert (workdir / ".lock").exists()
  resumed = run(workdir, f"--num_steps={NUM_STEPS}")
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert "Resumed from the checkpoint" in resumed.stderr and summary(workdir)["step"] == NUM_STEPS
