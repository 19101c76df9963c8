"""Prepared datasets: `pipeline.prepare` writes what the in-memory sources would compute, and the
trainer's batches from a prepared dataset equal those from the same data read in memory."""

import gzip
import importlib.util
import json
import logging
import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest
from etils import epath

from pipeline import prepared_writer as prepare
from pipeline import preparing, sources
from pipeline.batch_plans import optimal_boundaries
from pipeline.errors import DataError
from pipeline.prepared import ArrayStream, PreparedDataset, PreparedStream
from pipeline.sequence_batches import encode_all, make_plan_function, sequence_batches
from pipeline.token_windows import ReversedStream, token_stream, window_batches
from pipeline.tokenizers import Vocabulary
from tests.killed_prepares import (
  ROOT,
  kill_while_writing,
  prepare_command,
  temporaries,
  write_corpus,
)

WORDS = "the cat sat on a mat while dogs ran far away from home and sang".split()


def make_jsonl(path, count, seed=0, labels=("neg", "pos"), gz=False):
  rng = np.random.default_rng(seed)
  opener = gzip.open if gz else open
  with opener(path, "wt", encoding="utf-8") as f:
    for i in range(count):
      text = " ".join(rng.choice(WORDS, size=int(rng.integers(0, 30))))  # some empty
      f.write(
        json.dumps({"text": text.capitalize() + ".", "label": labels[i % len(labels)]}) + "\n"
      )
  return str(path)


def read_all(spec, with_labels):
  return sources.read_examples(sources.parse_spec(spec, "data"), with_labels=with_labels)


def records_of(dataset):
  return dataset.read(range(dataset.num_records))


def test_prepared_records_and_index_equal_the_in_memory_encoding(tmp_path):
  path = make_jsonl(tmp_path / "train.jsonl.gz", 300, gz=True)
  meta = prepare.prepare_corpus(
    f"jsonl:{path}", str(tmp_path / "out"), tokenizer="word", with_labels=True
  )
  dataset = PreparedDataset(str(tmp_path / "out"))
  examples = read_all(f"jsonl:{path}", True)
  vocab = Vocabulary.build((e["text"] for e in examples), "word")
  assert dataset.vocab == vocab  # the vocabulary the trainer would build from the same data
  assert dataset.labels.names == ("neg", "pos")
  expected = [vocab.encode(e["text"]) for e in examples]
  assert [r.tolist() for r in records_of(dataset)] == [e.tolist() for e in expected]
  assert dataset.lengths.tolist() == [len(e) for e in expected]
  assert dataset.label_ids.tolist() == [0 if e["label"] == "neg" else 1 for e in examples]
  assert dataset.ends_document.all() and meta["num_documents"] == meta["num_records"] == 300
  assert meta["num_tokens"] == sum(len(e) for e in expected)


def test_workers_and_shards_change_nothing_in_what_is_read(tmp_path):
  path = make_jsonl(tmp_path / "train.jsonl", 400)
  one = prepare.prepare_corpus(
    f"jsonl:{path}", str(tmp_path / "one"), tokenizer="char", vocab_size=20
  )
  many = prepare.prepare_corpus(
    f"jsonl:{path}",
    str(tmp_path / "many"),
    tokenizer="char",
    vocab_size=20,
    num_workers=2,
    shard_bytes=4096,
  )
  assert len(one["shards"]) == 1 and len(many["shards"]) > 3
  a, b = PreparedDataset(str(tmp_path / "one")), PreparedDataset(str(tmp_path / "many"))
  assert a.vocab == b.vocab and len(a.vocab) == 20
  assert [r.tolist() for r in records_of(a)] == [r.tolist() for r in records_of(b)]
  assert a.lengths.tolist() == b.lengths.tolist()
  # And the same input gives the same bytes.
  prepare.prepare_corpus(f"jsonl:{path}", str(tmp_path / "again"), tokenizer="char", vocab_size=20)
  for name in ("records-00000-of-00001.array_record", "index/lengths.npy", "vocab.json"):
    assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "again" / name).read_bytes()


@pytest.mark.parametrize("tokenizer", ["word", "bpe"])
def test_a_long_document_is_split_at_whitespace_and_streams_as_the_whole(
  tmp_path, monkeypatch, tokenizer
):
  monkeypatch.setattr(preparing, "PIECE_CHARS", 50)
  words = np.random.default_rng(1).choice(WORDS, size=400)
  text = " ".join(w.capitalize() if i % 7 == 0 else w for i, w in enumerate(words)) + "\n"
  (tmp_path / "book.txt").write_text(text)
  (tmp_path / "other.txt").write_text("short one")
  spec = f"text:{tmp_path / 'book.txt'},text:{tmp_path / 'other.txt'}"
  prepare.prepare_corpus(
    spec, str(tmp_path / "out"), tokenizer=tokenizer, vocab_size=300 if tokenizer == "bpe" else 0
  )
  dataset = PreparedDataset(str(tmp_path / "out"))
  assert dataset.num_records > 20 and dataset.ends_document.sum() == 2
  vocab = dataset.vocab
  whole = token_stream(
    read_all(f"text:{tmp_path / 'book.txt'}", False)
    + read_all(f"text:{tmp_path / 'other.txt'}", False),
    vocab,
  )
  stream = dataset.view(None, spec).stream()
  assert len(stream) == len(whole)
  starts = dataset.document_records()  # two documents: the book's many records, then one
  assert dataset.documents_view(np.array([1, 0])).records.tolist() == (
    list(range(starts[1], starts[2])) + list(range(starts[0], starts[1]))
  )
  assert stream.read(0, len(whole)).tolist() == whole.tolist()
  rng = np.random.default_rng(0)
  ranges = [tuple(sorted(rng.integers(-3, len(whole) + 3, size=2))) for _ in range(50)]
  for (start, stop), got in zip(ranges, stream.read_many(ranges)):
    assert got.tolist() == whole[max(start, 0) : max(stop, 0)].tolist(), (start, stop)
  # Windows as rows of one padded array: from the prepared records, and by the in-memory gather.
  starts, width = rng.integers(0, len(whole) + 3, size=20), 7
  expected = ArrayStream(whole).read_many([(start, start + width) for start in starts])
  for blocks in (
    stream.read_block(starts, width, -1),
    ArrayStream(whole).read_block(starts, width, -1),
  ):
    tokens, real = blocks
    assert tokens.shape == real.shape == (20, width) and tokens.dtype == np.int32
    for row, piece in enumerate(expected):
      assert tokens[row].tolist() == piece.tolist() + [-1] * (width - len(piece)), starts[row]
      assert real[row].tolist() == [True] * len(piece) + [False] * (width - len(piece))


def test_slices_select_tokens_of_text_and_documents_of_the_rest(tmp_path):
  (tmp_path / "a.txt").write_text("hello world, " * 50)
  prepare.prepare_corpus(f"text:{tmp_path / 'a.txt'}", str(tmp_path / "text"))
  text = PreparedDataset(str(tmp_path / "text"))
  full = token_stream(read_all(f"text:{tmp_path / 'a.txt'}", False), text.vocab)
  head = text.view("[:90%]", "x").stream()
  tail = text.view("[90%:]", "x").stream()
  cut = len(full) * 90 // 100
  assert head.read(0, len(head)).tolist() == full[:cut].tolist()
  assert tail.read(0, len(tail)).tolist() == full[cut:].tolist()

  path = make_jsonl(tmp_path / "d.jsonl", 50)
  prepare.prepare_corpus(f"jsonl:{path}", str(tmp_path / "docs"), with_labels=True)
  docs = PreparedDataset(str(tmp_path / "docs"))
  view = docs.view("[10:20]", "x")
  assert view.records.tolist() == list(range(10, 20))
  assert view.label_ids().tolist() == docs.label_ids[10:20].tolist()
  with pytest.raises(DataError, match="selects none"):
    docs.view("[20:10]", "x")


def sequence_batch_list(sequences, labels, lengths, batching, shard_index=0, shard_count=1):
  plan, segments = make_plan_function(
    lengths,
    batching=batching,
    batch_size=8,
    seq_len=12,
    seed=3,
    shuffle=True,
    boundaries=optimal_boundaries(lengths, 3, 12),
    batch_tokens=0,
    max_segments=3,
    row_multiple=1,
  )
  iterator = iter(
    sequence_batches(
      sequences,
      labels,
      plan,
      train=True,
      segments_per_row=segments,
      shard_index=shard_index,
      shard_count=shard_count,
    )
  )
  return [next(iterator) for _ in range(2 * len(plan(0)) + 1)]  # past an epoch boundary


@pytest.mark.parametrize("batching", ["pad", "bucket", "pack"])
def test_sequence_batches_from_a_prepared_dataset_equal_in_memory_ones(tmp_path, batching):
  path = make_jsonl(tmp_path / "train.jsonl", 90)
  prepare.prepare_corpus(f"jsonl:{path}", str(tmp_path / "out"), tokenizer="word", with_labels=True)
  dataset = PreparedDataset(str(tmp_path / "out"))
  examples = read_all(f"jsonl:{path}", True)
  in_memory = encode_all(examples, dataset.vocab)
  lengths = np.array([len(ids) for ids in in_memory])
  sequences = dataset.view(None, "x").sequences()
  # Empty texts read as one <unk>, as in memory
  assert sequences.lengths.tolist() == lengths.tolist()
  labels = dataset.view(None, "x").label_ids()
  for shard in range(2):
    expected = sequence_batch_list(in_memory, labels, lengths, batching, shard, 2)
    got = sequence_batch_list(sequences, labels, sequences.lengths, batching, shard, 2)
    for a, b in zip(expected, got):
      assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_window_batches_from_a_prepared_stream_equal_in_memory_ones(tmp_path):
  path = make_jsonl(tmp_path / "train.jsonl", 120)
  prepare.prepare_corpus(f"jsonl:{path}", str(tmp_path / "out"), tokenizer="char")
  dataset = PreparedDataset(str(tmp_path / "out"))
  tokens = token_stream(read_all(f"jsonl:{path}", False), dataset.vocab)
  stream = dataset.view(None, "x").stream()
  for shard in range(2):
    args = dict(
      batch_size=6, seq_len=16, train=True, carry_state=True, shard_index=shard, shard_count=2
    )
    expected, got = iter(window_batches(tokens, **args)), iter(window_batches(stream, **args))
    for _ in range(2 * len(tokens) // (6 * 16) + 3):  # past the end of an epoch
      a, b = next(expected), next(got)
      assert all(np.array_equal(a[k], b[k]) for k in a)


def test_a_reversed_stream_reads_the_stream_backwards_in_memory_and_prepared(tmp_path):
  """`--read_backward`: the windows of a stream read from its end equal the windows of the
  reversed token array, from memory and from a prepared dataset (whose records are read in
  pieces), for every shard and past an epoch's end."""
  path = make_jsonl(tmp_path / "train.jsonl", 120)
  prepare.prepare_corpus(f"jsonl:{path}", str(tmp_path / "out"), tokenizer="char")
  dataset = PreparedDataset(str(tmp_path / "out"))
  tokens = token_stream(read_all(f"jsonl:{path}", False), dataset.vocab)
  for source in (tokens, dataset.view(None, "x").stream()):
    for shard in range(2):
      args = dict(
        batch_size=6, seq_len=16, train=True, carry_state=True, shard_index=shard, shard_count=2
      )
      expected = iter(window_batches(tokens[::-1].copy(), **args))
      got = iter(window_batches(source, reverse=True, **args))
      for _ in range(2 * len(tokens) // (6 * 16) + 3):
        a, b = next(expected), next(got)
        assert all(np.array_equal(a[k], b[k]) for k in a)
  # Ranges that run past the end read only what is there, padded.
  reversed_stream = ReversedStream(ArrayStream(np.arange(3, 13, dtype=np.int32)))
  block, real = reversed_stream.read_block([0, 6, 8, 12], 4, pad=0)
  np.testing.assert_array_equal(block, [[12, 11, 10, 9], [6, 5, 4, 3], [4, 3, 0, 0], [0, 0, 0, 0]])
  np.testing.assert_array_equal(real.sum(axis=1), [4, 4, 2, 0])


class CountingReads:
  """Records which records a dataset reads (the real reads still happen)."""

  def __init__(self, dataset):
    self.read_records, self._read = set(), dataset.read
    dataset.read = self

  def __call__(self, records):
    self.read_records.update(int(r) for r in records)
    return self._read(records)


@pytest.mark.parametrize("cache_bytes", [0, 400, 64 << 20])
def test_stream_reads_equal_the_whole_stream_for_any_cache_and_cached_records_are_not_read_again(
  tmp_path, monkeypatch, cache_bytes
):
  # A book in many records, some ranges spanning several
  monkeypatch.setattr(preparing, "PIECE_CHARS", 50)
  text = " ".join(np.random.default_rng(2).choice(WORDS, size=300)) + "\n"
  (tmp_path / "book.txt").write_text(text)
  prepare.prepare_corpus(f"text:{tmp_path / 'book.txt'}", str(tmp_path / "out"), tokenizer="word")
  dataset = PreparedDataset(str(tmp_path / "out"))
  whole = token_stream(read_all(f"text:{tmp_path / 'book.txt'}", False), dataset.vocab)
  view = dataset.view(None, "x")
  counter = CountingReads(dataset)
  stream = PreparedStream(dataset, view.records, None, cache_bytes=cache_bytes)
  rng = np.random.default_rng(0)
  ranges = [tuple(sorted(rng.integers(0, len(whole) + 2, size=2))) for _ in range(8)]
  for _ in range(2):  # the second pass reads from the cache, where it holds them
    counter.read_records.clear()
    for (start, stop), got in zip(ranges, stream.read_many(ranges)):
      assert got.tolist() == whole[start:stop].tolist(), (start, stop)
  assert stream._cached_bytes <= cache_bytes
  assert (not counter.read_records) == (cache_bytes == 64 << 20)


def test_each_process_reads_only_the_records_of_its_own_rows(tmp_path):
  path = make_jsonl(tmp_path / "train.jsonl", 64)
  prepare.prepare_corpus(f"jsonl:{path}", str(tmp_path / "out"), with_labels=True)
  touched = []
  for shard in range(2):
    dataset = PreparedDataset(str(tmp_path / "out"))
    counter = CountingReads(dataset)
    view = dataset.view(None, "x")
    sequences = view.sequences()
    plan, _ = make_plan_function(
      sequences.lengths,
      batching="pad",
      batch_size=8,
      seq_len=12,
      seed=0,
      shuffle=True,
      boundaries=[],
      batch_tokens=0,
      max_segments=1,
      row_multiple=1,
    )
    iterator = iter(
      sequence_batches(
        sequences,
        view.label_ids(),
        plan,
        train=False,
        segments_per_row=1,
        shard_index=shard,
        shard_count=2,
      )
    )
    list(iterator)
    touched.append(counter.read_records)
  assert not touched[0] & touched[1] and len(touched[0]) == len(touched[1]) == 32


def test_prepare_refuses_to_overwrite_and_leaves_nothing_when_the_data_is_bad(tmp_path):
  path = make_jsonl(tmp_path / "train.jsonl", 20)
  out = str(tmp_path / "out")
  prepare.prepare_corpus(f"jsonl:{path}", out)
  with pytest.raises(DataError, match="already holds a prepared dataset"):
    prepare.prepare_corpus(f"jsonl:{path}", out)
  with open(path, "a") as f:
    f.write("{not json\n")
  with pytest.raises(DataError, match=r"train.jsonl:21: malformed JSON"):
    prepare.prepare_corpus(f"jsonl:{path}", str(tmp_path / "bad"))
  assert sorted(os.listdir(tmp_path)) == ["out", "train.jsonl"]  # no half-written dataset


@pytest.mark.parametrize("num_workers", [1, 2])
def test_an_error_in_the_write_pass_leaves_nothing(tmp_path, num_workers):
  """With the vocabulary given there is no counting pass: the malformed line is found while the
  records are being written into the temporary directory, which goes with the error."""
  train = make_jsonl(tmp_path / "train.jsonl", 20)
  prepare.prepare_corpus(f"jsonl:{train}", str(tmp_path / "train"), tokenizer="word")
  dev = make_jsonl(tmp_path / "dev.jsonl", 20, seed=1)
  with open(dev, "a") as f:
    f.write("{not json\n")
  with pytest.raises(DataError, match=r"dev.jsonl:21: malformed JSON"):
    prepare.prepare_corpus(
      f"jsonl:{dev}",
      str(tmp_path / "dev"),
      vocab_from=str(tmp_path / "train"),
      num_workers=num_workers,
    )
  assert sorted(os.listdir(tmp_path)) == ["dev.jsonl", "train", "train.jsonl"]


@pytest.mark.slow
def test_a_prepare_killed_while_writing_leaves_no_dataset_and_the_next_one_cleans_up(tmp_path):
  corpus = write_corpus(tmp_path / "corpus.txt", 300_000)  # (the write pass takes seconds)
  out = tmp_path / "out"
  pid = kill_while_writing(prepare_command(corpus, out), tmp_path, timeout=120)
  assert not out.exists()
  assert temporaries(tmp_path) == [prepare.temporary_name("out", socket.gethostname(), pid)]
  again = subprocess.run(
    prepare_command(corpus, out), cwd=ROOT, capture_output=True, text=True, timeout=300
  )
  assert again.returncode == 0, again.stderr[-3000:]
  assert f"removing what a prepare that died (process {pid}) left half written" in again.stderr
  assert temporaries(tmp_path) == []
  assert PreparedDataset(str(out)).num_records == 300_000


def test_temporaries_of_live_processes_and_of_other_machines_are_left(tmp_path, caplog):
  out = tmp_path / "out"
  alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
  try:
    here = socket.gethostname()
    names = {
      "live": prepare.temporary_name("out", here, alive.pid),
      "elsewhere": prepare.temporary_name("out", "another-host.example", 12345),
      "dead": prepare.temporary_name("out", here, dead_pid()),
      "old_dead": f".out.tmp-{dead_pid()}",  # as named before the host was part of it
      "other_dataset": prepare.temporary_name("other", here, dead_pid()),
    }
    for name in names.values():
      (tmp_path / name).mkdir()
    with caplog.at_level(logging.WARNING):
      prepare.remove_dead_temporaries(epath.Path(out))
    assert sorted(os.listdir(tmp_path)) == sorted(
      [names["live"], names["elsewhere"], names["other_dataset"]]
    )
    assert any(
      "left by a prepare on another-host.example (process 12345)" in m for m in caplog.messages
    )
  finally:
    alive.kill()
    alive.wait()


def dead_pid() -> int:
  """The id of a process that has exited."""
  process = subprocess.Popen([sys.executable, "-c", "pass"])
  process.wait()
  return process.pid


def test_eval_split_with_the_training_vocabulary_and_unknown_labels_refused(tmp_path):
  train = make_jsonl(tmp_path / "train.jsonl", 50)
  dev = make_jsonl(tmp_path / "dev.jsonl", 10, seed=1)
  prepare.prepare_corpus(
    f"jsonl:{train}", str(tmp_path / "train"), tokenizer="word", with_labels=True
  )
  prepare.prepare_corpus(
    f"jsonl:{dev}", str(tmp_path / "dev"), vocab_from=str(tmp_path / "train"), with_labels=True
  )
  assert (
    PreparedDataset(str(tmp_path / "dev")).vocab == PreparedDataset(str(tmp_path / "train")).vocab
  )
  odd = make_jsonl(tmp_path / "odd.jsonl", 3, labels=("pos", "other"))
  with pytest.raises(
    DataError, match=r"odd.jsonl:2: label 'other' is not one of the training labels"
  ):
    prepare.prepare_corpus(
      f"jsonl:{odd}", str(tmp_path / "odd"), vocab_from=str(tmp_path / "train"), with_labels=True
    )
  # (refused in the write pass: nothing of it is left)
  assert sorted(os.listdir(tmp_path)) == ["dev", "dev.jsonl", "odd.jsonl", "train", "train.jsonl"]


def test_streamed_examples_equal_the_examples_read_whole(tmp_path):
  path = make_jsonl(tmp_path / "a.jsonl.gz", 40, gz=True)
  lines = tmp_path / "l.txt"
  lines.write_text("1 good film\n\n0 bad one\r\n2 ok\n")
  for spec, with_labels in (
    (f"jsonl:{path}", True),
    (f"lines:{lines}", True),
    (f"lines:{lines}", False),
  ):
    parsed = sources.parse_spec(spec, "data")
    assert list(sources.iter_examples(parsed, with_labels=with_labels)) == list(
      sources.read_examples(parsed, with_labels=with_labels)
    )
  (tmp_path / "bad.txt").write_bytes(b"1 fine\n0 caf\xe9\n")
  with pytest.raises(DataError, match=r"bad.txt:2: not valid UTF-8"):
    list(
      sources.iter_examples(
        sources.parse_spec(f"lines:{tmp_path / 'bad.txt'}", "data"), with_labels=True
      )
    )


def test_not_a_prepared_dataset_is_named(tmp_path):
  with pytest.raises(DataError, match="is not a prepared dataset: no prepared.json"):
    PreparedDataset(str(tmp_path), "--train_data")


def test_prepare_command_with_relative_paths(tmp_path):
  make_jsonl(tmp_path / "train.jsonl", 30)
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = {**os.environ, "PYTHONPATH": repo}
  run = lambda *args: subprocess.run(
    [sys.executable, "-m", "pipeline.prepare", *args],
    cwd=tmp_path,
    env=env,
    capture_output=True,
    text=True,
    timeout=120,
  )
  done = run(
    "--data=jsonl:train.jsonl",
    "--labels",
    "--tokenizer=word",
    "--out=data/train",
    "--num_workers=2",
  )
  assert done.returncode == 0, done.stderr
  assert done.stdout.strip() == str(tmp_path / "data" / "train")
  assert "30 documents" in done.stderr
  again = run("--data=jsonl:train.jsonl", "--out=data/train")
  assert (
    again.returncode == 2
    and again.stderr.strip().startswith("error: --out=")
    and "Traceback" not in again.stderr
  )
  if importlib.util.find_spec("apache_beam") is None:  # (the [beam] venv runs the Beam tests)
    beam = run("--data=jsonl:train.jsonl", "--out=data/beam", "--runner=beam")
    assert beam.returncode == 2 and beam.stderr.strip().splitlines()[-1].startswith(
      "error: --runner=beam: Apache Beam is not installed"
    ), beam.stderr
    assert 'pip install -e ".[beam]"' in beam.stderr and not (tmp_path / "data" / "beam").exists()


# The trainer on prepared data.
TINY = dict(
  hidden_size=16,
  embed_size=8,
  head_widths=(8,),
  batch_size=8,
  seq_len=16,
  num_steps=30,
  log_every=5,
  eval_every=15,
  checkpoint_every=10,
)


@pytest.mark.parametrize(
  "task,batching", [("classify", "bucket"), ("classify", "pack"), ("lm", "pad")]
)
def test_a_run_on_prepared_data_equals_the_run_on_the_same_data_in_memory(tmp_path, task, batching):
  from training.config import Config
  from training.loop.trainer import train_and_evaluate

  train = make_jsonl(tmp_path / "train.jsonl", 120)
  dev = make_jsonl(tmp_path / "dev.jsonl", 30, seed=1)
  test = make_jsonl(tmp_path / "test.jsonl", 30, seed=2)
  labelled = task == "classify"
  prepare.prepare_corpus(
    f"jsonl:{train}", str(tmp_path / "p_train"), tokenizer="word", with_labels=labelled
  )
  for name, path in (("dev", dev), ("test", test)):
    prepare.prepare_corpus(
      f"jsonl:{path}",
      str(tmp_path / f"p_{name}"),
      vocab_from=str(tmp_path / "p_train"),
      with_labels=labelled,
    )
  common = dict(TINY, task=task, batching=batching)
  in_memory = dict(
    tokenizer="word",
    train_data=f"jsonl:{train}",
    eval_data=f"jsonl:{dev}",
    test_data=f"jsonl:{test}",
  )
  # The tokenizer comes from the prepared dataset: the flag is left at its default here.
  from_prepared = dict(
    train_data=f"prepared:{tmp_path / 'p_train'}",
    eval_data=f"prepared:{tmp_path / 'p_dev'}",
    test_data=f"prepared:{tmp_path / 'p_test'}",
  )
  summaries = []
  for data, workdir in ((in_memory, tmp_path / "a"), (from_prepared, tmp_path / "b")):
    assert (
      train_and_evaluate(Config(**{**common, "num_steps": 10}, **data), str(workdir))["step"] == 10
    )
    summaries.append(train_and_evaluate(Config(**common, **data), str(workdir)))  # resumed at 10
  expected, got = summaries
  assert got["param_fingerprint"] == expected["param_fingerprint"]
  assert (
    got["best"] == expected["best"] and got["test"] == expected["test"] and got["test"] is not None
  )
  assert json.loads((tmp_path / "b" / "vocab.json").read_text()) == json.loads(
    (tmp_path / "a" / "vocab.json").read_text()
  )


def test_a_resumed_run_reuses_its_copy_of_a_source_and_reads_a_changed_one_in_its_place(tmp_path):
  """Sources given directly are read once into WORKDIR/data/; a resume reads that copy, also when
  the file was copied anew (new time, same bytes); a file changed since is read again (with the
  run's vocabulary) in its place, and a copy under another name (other flags, or the naming of
  earlier versions, which held the file's time) is removed."""
  from training.config import Config
  from training.loop.trainer import train_and_evaluate

  train = make_jsonl(tmp_path / "train.jsonl", 60)
  config = dict(TINY, task="lm", tokenizer="word", train_data=f"jsonl:{train}", eval_every=0)
  workdir = tmp_path / "run"

  def copies():
    return {
      path.name: (path / "prepared.json").stat().st_mtime_ns
      for path in (workdir / "data").iterdir()
    }

  uninterrupted = train_and_evaluate(Config(**{**config, "num_steps": 20}), str(tmp_path / "whole"))
  train_and_evaluate(Config(**{**config, "num_steps": 10}), str(workdir))
  first = copies()
  [name] = first
  vocabulary = (workdir / "vocab.json").read_text()
  shutil.copytree(workdir / "data" / name, workdir / "data" / "train_data-0123456789abcdef")
  os.utime(train, ns=(1, 1))  # copied anew: another time, the same bytes
  resumed = train_and_evaluate(Config(**{**config, "num_steps": 20}), str(workdir))
  assert resumed["param_fingerprint"] == uninterrupted["param_fingerprint"]
  assert copies() == first  # reused, not read again; the other copy removed
  make_jsonl(train, 80, seed=3)  # the file changes under the run
  assert train_and_evaluate(Config(**config), str(workdir))["step"] == 30
  [(second, written)] = copies().items()
  assert second == name and written != first[name]  # read again, in its place
  assert (workdir / "vocab.json").read_text() == vocabulary


def test_trainer_refuses_prepared_data_it_cannot_use(tmp_path):
  from training.config import Config
  from training.loop.trainer import train_and_evaluate

  train = make_jsonl(tmp_path / "train.jsonl", 40)
  prepare.prepare_corpus(f"jsonl:{train}", str(tmp_path / "lm_data"), tokenizer="word")
  prepare.prepare_corpus(
    f"jsonl:{train}", str(tmp_path / "other_vocab"), tokenizer="word", vocab_size=10
  )
  base = dict(TINY, num_steps=2, train_data=f"prepared:{tmp_path / 'lm_data'}")
  with pytest.raises(DataError, match="prepared without labels; prepare it again with --labels"):
    train_and_evaluate(Config(**base, task="classify"), str(tmp_path / "w1"))
  with pytest.raises(
    DataError,
    match=r"--eval_data=prepared:.*another vocabulary than the run's; prepare it with --vocab_from",
  ):
    train_and_evaluate(
      Config(**base, eval_data=f"prepared:{tmp_path / 'other_vocab'}"), str(tmp_path / "w2")
    )
  with pytest.raises(DataError, match="cannot be joined"):
    train_and_evaluate(
      Config(**{**base, "train_data": f"prepared:{tmp_path / 'lm_data'},jsonl:{train}"}),
      str(tmp_path / "w3"),
    )


def test_holdout_of_a_prepared_dataset_holds_out_the_same_documents_as_in_memory(tmp_path):
  from training.config import Config
  from training.loop.data import prepare_data

  train = make_jsonl(tmp_path / "train.jsonl", 60)
  prepare.prepare_corpus(f"jsonl:{train}", str(tmp_path / "p"), tokenizer="char", with_labels=True)
  config = Config(
    task="classify",
    batch_size=4,
    seq_len=64,
    train_data=f"prepared:{tmp_path / 'p'}",
    eval_data="holdout:10%",
  )
  (tmp_path / "w").mkdir()
  data = prepare_data(config, str(tmp_path / "w"))
  vocab = data.vocab
  seen = sorted(
    vocab.decode(row[batch["mask"][r]])
    for batch in data.eval_batches()
    for r, row in enumerate(batch["inputs"])
    if batch["example_mask"][r].any()
  )
  examples = read_all(f"jsonl:{train}", True)
  _, held = sources.holdout_split(examples, "holdout:10%", "eval_data")
  assert seen == sorted(vocab.decode(vocab.encode(e["text"])[:64]) for e in held) and len(seen) == 6
