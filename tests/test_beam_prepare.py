"""`rnn-prepare --runner=beam` (pipeline.beam_prepare) on Beam's multi-process runner: the same
dataset as the local driver, byte for byte, on several inputs; a failing job leaves nothing.

Skipped without the `[beam]` extra; .ci/run installs it in a venv of its own and runs this file.
"""

import gzip
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("apache_beam")

from pipeline import beam_prepare, preparing  # noqa: E402
from pipeline import prepared_writer as local  # noqa: E402
from pipeline.errors import DataError  # noqa: E402
from pipeline.prepared import PreparedDataset  # noqa: E402
from pipeline.tokenizers import Vocabulary  # noqa: E402
from tests import killed_prepares  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORDS = "the cat sat on a mat while dogs ran far away Émile 猫 🙂 doesn't can't".split()


def write_corpus(directory):
  """Files of every kind the cases read: jsonl.gz with name labels, lines, csv with id labels,
  and a text document longer than a piece (so it is cut into several records)."""
  rng = np.random.default_rng(0)
  sentence = lambda n: " ".join(rng.choice(WORDS, size=n))
  with gzip.open(directory / "reviews.jsonl.gz", "wt", encoding="utf-8") as f:
    for i in range(600):
      text = sentence(int(rng.integers(1, 40))).capitalize()
      f.write(json.dumps({"text": text, "label": ["neg", "pos", "mid"][i % 3]}) + "\n")
  with open(directory / "dev.jsonl", "w", encoding="utf-8") as f:
    for i in range(80):
      f.write(json.dumps({"text": sentence(12), "label": ["pos", "neg"][i % 2]}) + "\n")
  (directory / "more.txt").write_text(
    "\n".join(sentence(int(rng.integers(1, 30))) for _ in range(400)) + "\n", encoding="utf-8"
  )
  with open(directory / "ids.csv", "w", encoding="utf-8") as f:
    f.write("label,text\n")
    for i in range(300):
      f.write(f'{i % 4},"{sentence(int(rng.integers(1, 20)))}"\n')
  # Every word as frequent as the next: which are kept is the tie-break's to say.
  tied = [f"w{i:02d}" for i in range(40)] * 5
  rng.shuffle(tied)
  (directory / "tied.txt").write_text(
    "\n".join(" ".join(tied[i : i + 8]) for i in range(0, len(tied), 8)) + "\n"
  )
  lines = [sentence(int(rng.integers(5, 25))) for _ in range(preparing.PIECE_CHARS // 30)]
  (directory / "book.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
  assert (directory / "book.txt").stat().st_size > 2 * preparing.PIECE_CHARS


def files_of(directory) -> dict[str, bytes]:
  return {
    os.path.relpath(os.path.join(root, name), directory): open(
      os.path.join(root, name), "rb"
    ).read()
    for root, _, names in os.walk(directory)
    for name in names
  }


CASES = {
  # Words cut to a vocabulary of 40, three sources of two kinds, shards of 8 KiB of text.
  "word_two_sources": (
    "jsonl:{d}/reviews.jsonl.gz,lines:{d}/more.txt",
    dict(tokenizer="word", vocab_size=40, shard_bytes=8 << 10),
  ),
  # A vocabulary cut among tokens of equal counts.
  "word_tied_counts": ("lines:{d}/tied.txt", dict(tokenizer="word", vocab_size=20)),
  # Every token kept (the counts gathered whole, not their top), Penn Treebank words.
  "ptb_all_tokens": ("lines:{d}/more.txt", dict(tokenizer="ptb", shard_bytes=4 << 10)),
  # Labels that are names, characters.
  "char_named_labels": (
    "jsonl:{d}/reviews.jsonl.gz",
    dict(tokenizer="char", with_labels=True, shard_bytes=8 << 10),
  ),
  # Class ids from a csv, a class count given beyond the largest id.
  "word_id_labels": (
    "csv:{d}/ids.csv",
    dict(tokenizer="word", with_labels=True, num_classes=5, shard_bytes=4 << 10),
  ),
  # A subword tokenizer trained on a sample smaller than the corpus; a document in pieces.
  "bpe_sampled_book": (
    "text:{d}/book.txt,lines:{d}/more.txt",
    dict(tokenizer="bpe", vocab_size=320, tokenizer_sample_mb=0.5, shard_bytes=1 << 20),
  ),
  "unigram_sliced": (
    "jsonl:{d}/reviews.jsonl.gz[100:],lines:{d}/more.txt[:50%]",
    dict(tokenizer="unigram", vocab_size=300, shard_bytes=16 << 10),
  ),
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  directory = tmp_path_factory.mktemp("corpus")
  write_corpus(directory)
  return directory


@pytest.mark.parametrize("case", sorted(CASES))
def test_beam_writes_the_same_bytes_as_the_local_driver(corpus, tmp_path, case):
  spec, settings = CASES[case]
  data = spec.format(d=corpus)
  expected = local.prepare_corpus(data, str(tmp_path / "local"), num_workers=2, **settings)
  got = beam_prepare.prepare_on_beam(data, str(tmp_path / "beam"), num_workers=2, **settings)
  assert got == expected
  local_files, beam_files = files_of(tmp_path / "local"), files_of(tmp_path / "beam")
  assert sorted(beam_files) == sorted(local_files)
  for name, content in local_files.items():
    assert beam_files[name] == content, name
  assert sorted(os.listdir(tmp_path)) == ["beam", "local"]  # no temporaries left beside
  if case in ("word_two_sources", "bpe_sampled_book"):
    assert len(expected["shards"]) > 2  # (the layout is exercised, not one shard)
  if case == "bpe_sampled_book":
    dataset = PreparedDataset(str(tmp_path / "beam"))
    assert dataset.num_records > dataset.ends_document.sum() == 401  # the book in pieces


def test_the_in_memory_runner_writes_the_same_bytes(corpus, tmp_path):
  spec, settings = CASES["word_tied_counts"]
  data = spec.format(d=corpus)
  local.prepare_corpus(data, str(tmp_path / "local"), **settings)
  beam_prepare.prepare_on_beam(
    data, str(tmp_path / "beam"), beam_options="direct_running_mode=in_memory", **settings
  )
  assert files_of(tmp_path / "beam") == files_of(tmp_path / "local")


def test_an_evaluation_split_with_the_training_vocabulary_and_labels(corpus, tmp_path):
  train = f"jsonl:{corpus}/reviews.jsonl.gz"
  local.prepare_corpus(train, str(tmp_path / "train"), tokenizer="word", with_labels=True)
  settings = dict(tokenizer="word", with_labels=True, vocab_from=str(tmp_path / "train"))
  local.prepare_corpus(f"jsonl:{corpus}/dev.jsonl", str(tmp_path / "local"), **settings)
  beam_prepare.prepare_on_beam(f"jsonl:{corpus}/dev.jsonl", str(tmp_path / "beam"), **settings)
  assert files_of(tmp_path / "beam") == files_of(tmp_path / "local")


def test_a_failing_job_says_why_in_one_line_and_leaves_nothing(corpus, tmp_path):
  (tmp_path / "data").mkdir()
  train = tmp_path / "data" / "train.jsonl"
  train.write_text("".join(json.dumps({"text": "a b", "label": n}) + "\n" for n in ("x", "y")))
  local.prepare_corpus(f"jsonl:{train}", str(tmp_path / "train"), with_labels=True)
  # The dev split has a label that training never saw (on its line 3).
  bad = tmp_path / "data" / "dev.jsonl"
  bad.write_text("".join(json.dumps({"text": "a", "label": n}) + "\n" for n in ("x", "y", "z")))
  out = tmp_path / "out"
  with pytest.raises(DataError) as error:
    beam_prepare.prepare_on_beam(
      f"jsonl:{bad}", str(out), with_labels=True, vocab_from=str(tmp_path / "train")
    )
  message = str(error.value)
  assert "\n" not in message and f"{bad}:3" in message and "'z'" in message, message
  assert not out.exists()
  assert sorted(os.listdir(tmp_path)) == ["data", "train"]  # no temporary beside --out
  # And a dataset already at --out is never written over.
  with pytest.raises(DataError, match="already holds a prepared dataset"):
    beam_prepare.prepare_on_beam(f"jsonl:{train}", str(tmp_path / "train"), with_labels=True)
  assert PreparedDataset(str(tmp_path / "train")).num_records == 2


def test_a_job_killed_while_writing_leaves_no_dataset_and_the_next_prepare_cleans_up(tmp_path):
  corpus = killed_prepares.write_corpus(tmp_path / "corpus.txt", 100_000)
  out = tmp_path / "out"
  command = killed_prepares.prepare_command(corpus, out, "--shard_mb=1")
  # Killed as soon as its first shard is being written: the launcher and Beam's workers.
  pid = killed_prepares.kill_while_writing([*command, "--runner=beam"], tmp_path, timeout=240)
  assert not out.exists()
  temporaries = killed_prepares.temporaries(tmp_path)
  assert temporaries == [local.temporary_name("out", socket.gethostname(), pid)]
  again = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert again.returncode == 0, again.stderr[-3000:]
  assert f"removing what a prepare that died (process {pid})" in again.stderr
  assert killed_prepares.temporaries(tmp_path) == []
  assert PreparedDataset(str(out)).num_records == 100_000


def test_shards_that_miss_records_are_refused_before_anything_reaches_out(tmp_path):
  """The last step of the job counts the records the shards hold against the documents read: a
  runner that dropped data fails the job instead of publishing a dataset short of them."""
  tmp, out = tmp_path / ".out.tmp", tmp_path / "out"
  tmp.mkdir()
  shard = beam_prepare._write_shard(
    (0, [((0, 0, 0), b"\x01\x00\x00\x00", 1, True, None)]), str(tmp), False
  )
  vocab = Vocabulary.build(["a b"], "word")
  settings = dict(vocab_size=0, tokenizer_sample_mb=1, specs=[], vocab_from="", flag="data")
  with pytest.raises(DataError, match=r"--out=.*: the Beam job wrote 1 of the corpus's 2 records"):
    beam_prepare._finish([shard], str(tmp), str(out), vocab.to_json(), None, 2, settings)
  assert not out.exists()
  beam_prepare._finish([shard], str(tmp), str(out), vocab.to_json(), None, 1, settings)
  assert PreparedDataset(str(out)).num_records == 1 and not tmp.exists()


def test_pipeline_options_pass_through_and_default_to_the_local_multiprocess_runner():
  options = beam_prepare.pipeline_options("", 3).get_all_options()
  assert options["runner"] == "DirectRunner"
  assert options["direct_running_mode"] == "multi_processing"
  assert options["direct_num_workers"] == 3
  given = beam_prepare.pipeline_options(
    "runner=DataflowRunner,project=p,region=europe-west4,temp_location=gs://b/tmp", 3
  ).get_all_options()
  assert (given["runner"], given["project"], given["region"]) == (
    "DataflowRunner",
    "p",
    "europe-west4",
  )
  assert given["temp_location"] == "gs://b/tmp" and given["direct_num_workers"] == 1
  # One in-process worker, chosen over the default (what the lost-records error suggests).
  in_memory = beam_prepare.pipeline_options("direct_running_mode=in_memory", 3).get_all_options()
  assert (in_memory["runner"], in_memory["direct_running_mode"]) == ("DirectRunner", "in_memory")
  assert in_memory["direct_num_workers"] == 1
  with pytest.raises(DataError, match="--beam_pipeline_options: 'oops' is not key=value"):
    beam_prepare.pipeline_options("runner=DirectRunner,oops", 1)


def test_rnn_prepare_runner_beam_writes_what_the_local_runner_writes(corpus, tmp_path):
  def prepare(*flags):
    return subprocess.run(
      [sys.executable, "-m", "pipeline.prepare", f"--data=lines:{corpus}/more.txt", *flags],
      cwd=ROOT,
      capture_output=True,
      text=True,
      timeout=300,
    )

  common = ["--tokenizer=word", "--vocab_size=30", "--num_workers=2"]
  local_run = prepare(f"--out={tmp_path / 'local'}", *common)
  beam_run = prepare(f"--out={tmp_path / 'beam'}", "--runner=beam", *common)
  assert local_run.returncode == 0 and beam_run.returncode == 0, beam_run.stderr[-2000:]
  assert files_of(tmp_path / "beam") == files_of(tmp_path / "local")
  refused = prepare(f"--out={tmp_path / 'x'}", "--beam_pipeline_options=runner=DirectRunner")
  assert refused.returncode != 0
  assert (
    "--beam_pipeline_options: only with --runner=beam" in refused.stderr.strip().splitlines()[-1]
  )
  assert not (tmp_path / "x").exists()
