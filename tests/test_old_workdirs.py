"""What users already have keeps working: workdirs and exported files written by an earlier
version of the code (tests/data/workdirs_2026_12, see its README) resume, predict, generate,
export and load with today's, through the console scripts the README shows."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from flax import serialization

pytestmark = pytest.mark.newest_jax  # also run on Python 3.13's jax (.ci/run)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OLD = os.path.join(ROOT, "tests", "data", "workdirs_2026_12")
BIN = os.path.dirname(sys.executable)
SMALL = [
  "--tokenizer=word",
  "--hidden_size=8",
  "--embed_size=8",
  "--batch_size=4",
  "--seq_len=8",
  "--log_every=3",
  "--eval_every=3",
  "--eval_steps=2",
  "--checkpoint_every=3",
  "--keep_checkpoints=1",
  "--async_checkpointing=false",
]


def expected() -> dict:
  with open(os.path.join(OLD, "expected.json")) as f:
    return json.load(f)


def tool(name: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
  result = subprocess.run(
    [os.path.join(BIN, name), *args],
    cwd=ROOT,
    input=stdin,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  return result


@pytest.fixture
def old(tmp_path):
  """A copy of the old workdirs and data (a resume writes into its workdir)."""
  shutil.copytree(OLD, tmp_path / "old")
  return tmp_path / "old"


def params_of(path) -> dict:
  with open(path, "rb") as f:
    return serialization.msgpack_restore(f.read())


def assert_same_params(a: dict, b: dict) -> None:
  flat_a, flat_b = dict(_flatten(a)), dict(_flatten(b))
  assert flat_a.keys() == flat_b.keys()
  for name, value in flat_a.items():
    np.testing.assert_array_equal(value, flat_b[name], err_msg=name)


def _flatten(tree: dict, prefix: str = ""):
  for key, value in tree.items():
    if isinstance(value, dict):
      yield from _flatten(value, f"{prefix}{key}/")
    else:
      yield f"{prefix}{key}", np.asarray(value)


@pytest.mark.parametrize("run", ["lm", "classifier"])
def test_an_old_workdir_exports_the_parameters_the_old_code_exported(old, tmp_path, run):
  tool("rnn-export", f"--workdir={old / run}", f"--out={tmp_path / 'new.msgpack'}")
  new, before = params_of(tmp_path / "new.msgpack"), params_of(old / f"{run}.msgpack")
  assert_same_params(new["params"], before["params"])
  assert new["vocab"] == before["vocab"] and new["labels"] == before["labels"]
  assert new["model"] == before["model"]


def test_an_old_classifier_predicts_as_it_did(old):
  want = expected()
  output = tool(
    "rnn-predict",
    f"--workdir={old / 'classifier'}",
    "--input=-",
    stdin=want["predict_input"] + "\n",
  )
  got = json.loads(output.stdout.strip().splitlines()[-1])
  assert got["label"] == want["predict_output"]["label"]
  for name, probability in want["predict_output"]["probabilities"].items():
    assert got["probabilities"][name] == pytest.approx(probability, abs=1e-5)
  # --step reads the latest checkpoint instead of the best.
  latest = tool(
    "rnn-predict",
    f"--workdir={old / 'classifier'}",
    "--input=-",
    f"--step={want['classifier_latest_step']}",
    stdin=want["predict_input"] + "\n",
  )
  assert json.loads(latest.stdout.strip().splitlines()[-1])["probabilities"] != got["probabilities"]


def test_an_old_language_model_generates_from_its_vocabulary(old):
  with open(old / "lm" / "vocab.json") as f:
    vocabulary = set(json.load(f)["tokens"])
  prompt = expected()["generate_prompt"]
  output = tool(
    "rnn-generate", f"--workdir={old / 'lm'}", f"--prompt={prompt}", "--length=12", "--seed=0"
  )
  text = output.stdout.strip().splitlines()[-1]
  assert text.startswith(prompt)
  words = text[len(prompt) :].split()
  assert len(words) == 12 and set(words) <= vocabulary | {"."}, words


@pytest.mark.slow
@pytest.mark.parametrize("run", ["lm", "classifier"])
def test_an_old_run_resumes_from_its_last_checkpoint(old, run):
  data = (
    [
      "--train_data=text:tests/data/workdirs_2026_12/text.txt[:90%]",
      "--eval_data=text:tests/data/workdirs_2026_12/text.txt[90%:]",
    ]
    if run == "lm"
    else [
      "--task=classify",
      "--head_widths=8",
      "--train_data=csv:tests/data/workdirs_2026_12/reviews.csv[:80%]",
      "--eval_data=csv:tests/data/workdirs_2026_12/reviews.csv[80%:]",
    ]
  )
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "training.train",
      f"--workdir={old / run}",
      *data,
      *SMALL,
      "--num_steps=9",
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"Resumed from the checkpoint at step 6 in {old / run}" in result.stderr
  with open(old / run / "summary.json") as f:
    assert json.load(f)["step"] == 9
  with open(old / run / "metrics.jsonl") as f:
    steps = [json.loads(line)["step"] for line in f if json.loads(line)["split"] == "train"]
  assert steps == [3, 6, 9]
