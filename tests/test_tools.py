"""The user tools on tiny trained runs: generate, predict, export, plot, TensorBoard, named
labels and the csv / tsv / parquet sources, each through its real command where it has one."""

import dataclasses
import importlib.util
import json
import os
import re
import struct
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from pipeline import sources, synthetic
from pipeline.errors import DataError
from training.config import Config
from training.loop.trainer import train_and_evaluate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = Config(
  hidden_size=16,
  embed_size=8,
  head_widths=(8,),
  batch_size=8,
  seq_len=24,
  num_steps=60,
  log_every=10,
  eval_every=0,
  checkpoint_every=30,
  learning_rate=1e-2,
)


def command(module, *flags, stdin=None):
  return subprocess.run(
    [sys.executable, "-m", module, *flags],
    cwd=ROOT,
    capture_output=True,
    text=True,
    input=stdin,
    timeout=300,
  )


def write_csv(path, rows, delimiter=","):
  import csv

  with open(path, "w", newline="", encoding="utf-8") as f:
    writer = csv.writer(f, delimiter=delimiter)
    writer.writerow(["review", "sentiment"])
    writer.writerows(rows)


def recall_rows(part):
  """The generated recall task with named labels: the first letter decides the class."""
  names = {0: "first", 1: "second", 2: "third"}
  return [(e["text"], names[e["label"]]) for e in synthetic.TASKS["recall"]()[part]]


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("lm") / "run")
  train_and_evaluate(TINY, workdir)
  return workdir


@pytest.fixture(scope="module")
def classifier_run(tmp_path_factory):
  data = tmp_path_factory.mktemp("data")
  write_csv(data / "train.csv", recall_rows(slice(0, 800)))
  write_csv(data / "dev.csv", recall_rows(slice(-100, None)))
  workdir = str(data / "run")
  config = dataclasses.replace(
    TINY,
    task="classify",
    train_data=f"csv:{data}/train.csv",
    eval_data=f"csv:{data}/dev.csv",
    text_field="review",
    label_field="sentiment",
    hidden_size=32,
    embed_size=16,
    batch_size=16,
    num_steps=300,
    learning_rate=5e-3,
  )
  summary = train_and_evaluate(config, workdir)
  return workdir, data / "dev.csv", summary


def test_generate_is_deterministic_for_a_seed_and_varies_with_it(lm_run):
  first = command(
    "training.tools.generate", f"--workdir={lm_run}", "--prompt=ab", "--length=30", "--seed=3"
  )
  assert first.returncode == 0, first.stderr[-2000:]
  again = command(
    "training.tools.generate", f"--workdir={lm_run}", "--prompt=ab", "--length=30", "--seed=3"
  )
  other = command(
    "training.tools.generate", f"--workdir={lm_run}", "--prompt=ab", "--length=30", "--seed=4"
  )
  assert first.stdout == again.stdout and first.stdout != other.stdout
  assert first.stdout.startswith("ab") and len(first.stdout.strip()) >= 30
  assert "Traceback" not in first.stderr


def test_generate_continues_the_carried_state_exactly_as_the_model_reads_the_text(lm_run):
  """Greedy decoding one step at a time equals the argmax of one pass over the whole text."""
  from training.bookkeeping.trained_run import load_run
  from training.model.models import zero_carry
  from training.tools.inference import sample

  run = load_run(lm_run)
  text = sample(run, "abc", 12, temperature=0.0)
  ids = jnp.concatenate([jnp.array([2]), jnp.asarray(run.vocab.encode("abc" + text))])[None]
  carry = zero_carry(run.config.model, run.config.num_layers, 1, run.config.hidden_size)
  logits, _ = run.model.apply(
    {"params": run.params}, ids, jnp.ones(ids.shape, bool), carry, train=False
  )
  # The predictions after "<eos>abc", then after each sample
  greedy = jnp.argmax(logits[0, 3:-1], axis=-1)
  assert run.vocab.decode([int(t) for t in greedy]) == text


def test_a_backward_language_model_writes_the_text_before_the_prompt(tmp_path):
  """`--read_backward`: the model reads the prompt from its end, then each token it wrote; what
  it wrote comes out in reading order, before the prompt."""
  from training.bookkeeping.trained_run import load_run
  from training.model.models import zero_carry
  from training.tools.inference import sample

  workdir = str(tmp_path / "backward")
  train_and_evaluate(dataclasses.replace(TINY, read_backward=True), workdir)
  run = load_run(workdir)
  text = sample(run, "abc", 12, temperature=0.0)
  read = jnp.concatenate([jnp.array([2]), jnp.asarray(run.vocab.encode((text + "abc")[::-1]))])[
    None
  ]
  carry = zero_carry(run.config.model, run.config.num_layers, 1, run.config.hidden_size)
  logits, _ = run.model.apply(
    {"params": run.params}, read, jnp.ones(read.shape, bool), carry, train=False
  )
  greedy = jnp.argmax(logits[0, 3:-1], axis=-1)  # after "<eos>cba", then after each token written
  assert run.vocab.decode([int(t) for t in greedy]) == text[::-1]
  generated = command(
    "training.tools.generate",
    f"--workdir={workdir}",
    "--prompt=abc",
    "--length=12",
    "--temperature=0",
  )
  assert generated.returncode == 0, generated.stderr[-2000:]
  assert generated.stdout.rstrip("\n") == text + "abc"


def test_generate_refuses_a_classifier_and_a_missing_run(classifier_run, tmp_path):
  wrong = command("training.tools.generate", f"--workdir={classifier_run[0]}")
  assert (
    wrong.returncode == 2
    and "needs a language model" in wrong.stderr
    and "Traceback" not in wrong.stderr
  )
  missing = command("training.tools.generate", f"--workdir={tmp_path}/nothing")
  assert missing.returncode == 2 and "no trained run there" in missing.stderr


def test_named_labels_are_sorted_saved_and_predict_agrees_with_the_trainers_eval(classifier_run):
  workdir, dev, summary = classifier_run
  with open(os.path.join(workdir, "labels.json")) as f:
    assert json.load(f) == {"num_classes": 3, "names": ["first", "second", "third"]}
  texts, labels = zip(*recall_rows(slice(-100, None)))
  result = command(
    "training.tools.predict",
    f"--workdir={workdir}",
    "--input=-",
    "--batch_size=7",
    stdin="".join(t + "\n" for t in texts),
  )
  assert result.returncode == 0, result.stderr[-2000:]
  predictions = [json.loads(line) for line in result.stdout.splitlines()]
  assert len(predictions) == len(texts)
  assert set(predictions[0]["probabilities"]) == {"first", "second", "third"}
  assert all(abs(sum(p["probabilities"].values()) - 1) < 1e-4 for p in predictions)
  accuracy = np.mean([p["label"] == label for p, label in zip(predictions, labels)])
  assert accuracy == pytest.approx(summary["eval"]["accuracy"], abs=1e-9)
  assert accuracy > 0.6  # it learnt something (chance is 1/3)


def test_export_round_trips_to_identical_logits(classifier_run, tmp_path):
  from training.bookkeeping.trained_run import load_run
  from training.tools.exported import load_exported
  from training.tools.inference import encode_batch

  workdir = classifier_run[0]
  out = tmp_path / "model.msgpack"
  result = command("training.tools.export", f"--workdir={workdir}", f"--out={out}")
  assert result.returncode == 0, result.stderr[-2000:]
  run = load_run(workdir)
  model, params, vocab, labels = load_exported(str(out))
  assert vocab == run.vocab and labels == run.labels
  tokens, mask, _ = encode_batch(["abcabc", "c", "bbbbbbbbba"], vocab, run.config.seq_len)
  args = (tokens, mask, mask.astype(jnp.int32), (mask.sum(1) - 1)[:, None])
  exported = model.apply({"params": params}, *args, train=False)
  trained = run.model.apply({"params": run.params}, *args, train=False)
  np.testing.assert_array_equal(np.asarray(exported), np.asarray(trained))


def test_a_language_model_exports_at_a_chosen_step_and_other_files_are_refused(lm_run, tmp_path):
  from flax import serialization

  from training.bookkeeping.trained_run import load_run
  from training.model.models import zero_carry
  from training.tools.exported import load_exported

  out = tmp_path / "lm.msgpack"
  result = command("training.tools.export", f"--workdir={lm_run}", f"--out={out}", "--step=30")
  assert result.returncode == 0, result.stderr[-2000:]
  assert "lm model from step 30" in result.stdout
  run, latest = load_run(lm_run, step=30), load_run(lm_run)
  model, params, vocab, labels = load_exported(str(out))
  assert vocab == run.vocab and labels is None and type(model).__name__ == "LanguageModel"
  tokens = jnp.asarray(vocab.encode("abc=abc\nbca=bca"), jnp.int32)[None, :]
  mask = jnp.ones_like(tokens, bool)
  carry = zero_carry(run.config.model, run.config.num_layers, 1, run.config.hidden_size)
  exported, exported_carry = model.apply({"params": params}, tokens, mask, carry, train=False)
  trained, trained_carry = run.model.apply({"params": run.params}, tokens, mask, carry, train=False)
  np.testing.assert_array_equal(np.asarray(exported), np.asarray(trained))
  np.testing.assert_array_equal(np.asarray(exported_carry), np.asarray(trained_carry))
  # --step chose the checkpoint: the latest one's parameters differ.
  later, _ = latest.model.apply({"params": latest.params}, tokens, mask, carry, train=False)
  assert not np.allclose(np.asarray(later), np.asarray(exported))
  missing = command(
    "training.tools.export", f"--workdir={lm_run}", f"--out={tmp_path / 'x.msgpack'}", "--step=45"
  )
  assert missing.returncode != 0 and "Traceback" not in missing.stderr
  assert (
    missing.stderr.strip()
    .splitlines()[-1]
    .startswith("error: --step=45: no checkpoint at that step")
  )
  assert not (tmp_path / "x.msgpack").exists()
  # Anything but an exported model of this format is refused in one line naming the file.
  (tmp_path / "future.msgpack").write_bytes(serialization.msgpack_serialize({"format": 99}))
  (tmp_path / "text.msgpack").write_text("not a model at all")
  for name, message in [
    ("future.msgpack", "not an exported model of format 1 (its format is 99)"),
    ("text.msgpack", "not an exported model (not a msgpack file"),
    ("absent.msgpack", "cannot read it"),
  ]:
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / name}: {message}")):
      load_exported(str(tmp_path / name))


def read_scalars(directory):
  """(tag, step) -> value as TensorBoard shows them: a SessionLog START at step S (tensorboardX's
  purge_step) hides the points at steps >= S written before it."""
  from tensorboardX.proto import event_pb2

  shown = {}
  for name in sorted(n for n in os.listdir(directory) if n.startswith("events.out.tfevents")):
    with open(os.path.join(directory, name), "rb") as f:
      data = f.read()
    position = 0
    while position < len(data):
      (length,) = struct.unpack("<Q", data[position : position + 8])
      event = event_pb2.Event.FromString(data[position + 12 : position + 12 + length])
      position += 12 + length + 4
      if event.HasField("session_log") and event.session_log.status == event_pb2.SessionLog.START:
        shown = {key: value for key, value in shown.items() if key[1] < event.step}
      for value in event.summary.value:
        assert (value.tag, event.step) not in shown, f"duplicate point {value.tag} at {event.step}"
        shown[(value.tag, event.step)] = value.simple_value
  return shown


def test_tensorboard_curves_of_a_resumed_run_equal_an_uninterrupted_runs_without_duplicates(
  tmp_path,
):
  import shutil

  config = dataclasses.replace(TINY, num_steps=40, checkpoint_every=20, eval_every=20)
  train_and_evaluate(config, str(tmp_path / "whole"))
  train_and_evaluate(dataclasses.replace(config, num_steps=30), str(tmp_path / "crashed"))
  shutil.rmtree(tmp_path / "crashed" / "checkpoints" / "30")  # as if killed after logging step 30
  train_and_evaluate(config, str(tmp_path / "crashed"))
  whole, resumed = read_scalars(tmp_path / "whole"), read_scalars(tmp_path / "crashed")
  skip = ("train/tokens_per_sec", "train/elapsed_s", "eval/elapsed_s")
  assert {k for k in whole if k[0] not in skip} == {k for k in resumed if k[0] not in skip}
  for key, value in whole.items():
    if key[0] not in skip:
      assert resumed[key] == pytest.approx(value, rel=1e-6), key
  assert {tag for tag, _ in whole} >= {
    "train/loss",
    "train/learning_rate",
    "train/grad_norm",
    "eval/loss",
    "train/tokens_per_sec",
    "train/padding_efficiency",
  }


@pytest.mark.skipif(
  importlib.util.find_spec("torch") is None, reason="PyTorch (the bench extra) not installed"
)
def test_the_tensorboard_log_leaves_pytorch_unimported_and_importable(tmp_path):
  # tensorboardX imports torch whenever it is installed (2.2 s of every run's start on 2 cores).
  probe = (
    "import sys\n"
    "from training.bookkeeping.tensorboard_log import TensorBoardLog\n"
    f"log = TensorBoardLog({str(tmp_path)!r}, resume_step=0)\n"
    "log.write({'step': 1, 'split': 'train', 'loss': 2.0})\n"
    "log.close()\n"
    "assert 'torch' not in sys.modules\n"
    "import torch\n"
    "print(torch.ones(2).sum().item())\n"
  )
  result = subprocess.run(
    [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120
  )
  assert result.returncode == 0 and result.stdout.strip() == "2.0", result.stderr[-3000:]
  assert read_scalars(tmp_path) == {("train/loss", 1): 2.0}


def test_plot_draws_several_runs_and_refuses_a_directory_without_metrics(
  lm_run, classifier_run, tmp_path
):
  out = tmp_path / "curves.png"
  result = command("training.tools.plot", lm_run, classifier_run[0], f"--out={out}")
  assert result.returncode == 0, result.stderr[-2000:]
  assert "loss, accuracy" in result.stdout
  with open(out, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  bad = command("training.tools.plot", str(tmp_path), f"--out={tmp_path}/x.png")
  assert bad.returncode == 2 and "no metrics.jsonl" in bad.stderr


def read(spec, **kwargs):
  return sources.read_examples(sources.parse_spec(spec, "train_data"), with_labels=True, **kwargs)


def test_csv_and_tsv_read_quoted_fields_with_commas_tabs_and_newlines(tmp_path):
  rows = [
    ("plain text", "pos"),
    ('with, comma and "quotes"', "neg"),
    ("two\nlines\tand a tab", "pos"),
  ]
  write_csv(tmp_path / "a.csv", rows)
  write_csv(tmp_path / "a.tsv", rows, delimiter="\t")
  for kind in ("csv", "tsv"):
    examples = read(f"{kind}:{tmp_path}/a.{kind}", text_field="review", label_field="sentiment")
    assert [(e["text"], e["label"]) for e in examples] == rows
    assert examples[2]["where"] == f"{tmp_path}/a.{kind}:4"  # the line the record starts on
  assert len(read(f"csv:{tmp_path}/a.csv[1:]", text_field="review", label_field="sentiment")) == 2


def test_csv_errors_name_the_file_the_line_and_the_columns(tmp_path):
  write_csv(tmp_path / "a.csv", [("fine", "1")])
  with pytest.raises(
    DataError,
    match=r"a.csv: no column 'text' \(see --text_field\); the columns are 'review', 'sentiment'",
  ):
    read(f"csv:{tmp_path}/a.csv")
  (tmp_path / "b.csv").write_text("text,label\nok,1\ntoo,many,fields\n")
  with pytest.raises(DataError, match=r"b.csv:3: 3 fields where the header has 2"):
    read(f"csv:{tmp_path}/b.csv")
  (tmp_path / "c.csv").write_text("text,label\nok,-1\n")
  with pytest.raises(DataError, match=r"c.csv:2: label -1 is negative"):
    read(f"csv:{tmp_path}/c.csv")


def test_parquet_reads_columns_and_names_rows_in_errors(tmp_path):
  import pyarrow as pa
  import pyarrow.parquet as pq

  pq.write_table(
    pa.table({"review": ["good", "bad"], "sentiment": ["pos", "neg"], "id": [1, 2]}),
    tmp_path / "a.parquet",
  )
  examples = read(f"parquet:{tmp_path}/a.parquet", text_field="review", label_field="sentiment")
  assert [(e["text"], e["label"], e["where"]) for e in examples] == [
    ("good", "pos", f"{tmp_path}/a.parquet row 1"),
    ("bad", "neg", f"{tmp_path}/a.parquet row 2"),
  ]
  with pytest.raises(DataError, match=r"no column 'text'"):
    read(f"parquet:{tmp_path}/a.parquet")
  (tmp_path / "not.parquet").write_text("hello")
  with pytest.raises(DataError, match=r"not.parquet: cannot read as Parquet"):
    read(f"parquet:{tmp_path}/not.parquet")


def test_other_encodings_are_read_with_encoding_and_refused_without_it(tmp_path):
  (tmp_path / "latin.txt").write_bytes("1 caf\xe9 cr\xe8me\n0 na\xefve\n".encode("latin-1"))
  assert read(f"lines:{tmp_path}/latin.txt", encoding="latin-1")[0]["text"] == "café crème"
  with pytest.raises(DataError, match=r"latin.txt:1: not valid UTF-8 .*--encoding"):
    read(f"lines:{tmp_path}/latin.txt")
  with pytest.raises(DataError, match=r"--encoding=klingon: unknown text encoding"):
    read(f"lines:{tmp_path}/latin.txt", encoding="klingon")


def test_an_eval_label_the_training_data_lacks_is_named_with_its_line(tmp_path):
  write_csv(tmp_path / "train.csv", [("a", "pos"), ("b", "neg")] * 8)
  write_csv(tmp_path / "dev.csv", [("a", "pos"), ("b", "neutral")])
  config = dataclasses.replace(
    TINY,
    task="classify",
    train_data=f"csv:{tmp_path}/train.csv",
    eval_data=f"csv:{tmp_path}/dev.csv",
    text_field="review",
    label_field="sentiment",
  )
  with pytest.raises(
    DataError, match=r"dev.csv:3: label 'neutral' is not one of the training labels \(neg, pos\)"
  ):
    train_and_evaluate(config, str(tmp_path / "run"))


def test_every_console_script_runs_and_its_help_lists_the_commands_own_flags():
  import tomllib

  with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
    scripts = tomllib.load(f)["project"]["scripts"]
  assert {
    "rnn-train",
    "rnn-generate",
    "rnn-predict",
    "rnn-ensemble",
    "rnn-export",
    "rnn-plot",
    "rnn-prepare",
  } <= set(scripts)
  own_flag = {
    "rnn-train": "--workdir",
    "rnn-generate": "--prompt",
    "rnn-predict": "--input",
    "rnn-export": "--out",
    "rnn-plot": "--metrics",
    "rnn-prepare": "--split",
    "rnn-ensemble": "--workdirs",
    "rnn-launch-local": "--devices_per_process",
  }
  bin_dir = os.path.dirname(sys.executable)
  for name in scripts:
    path = os.path.join(bin_dir, name)
    if not os.path.exists(path):
      pytest.skip(f"{name} is not installed here (pip install -e . installs the console scripts)")
    result = subprocess.run([path, "--help"], capture_output=True, text=True, timeout=120)
    text = result.stdout + result.stderr
    assert own_flag[name] in text, f"{name} --help does not list {own_flag[name]}:\n{text[:1000]}"
    assert "Traceback" not in text
