"""The local driver of preparing (`pipeline.preparing`): a process pool on one machine.

`prepare_corpus` is what `python -m pipeline.prepare` runs by default, and what the trainer runs
on a source given directly (into its workdir). A first pass reads the corpus for its size (which
fixes the shards, `preparing.ShardLayout`) and, without a given vocabulary, counts the tokens (or
samples the text a subword tokenizer trains on) and fixes the vocabulary; a second pass encodes
every example and writes the records. Both tokenise in `num_workers` processes and read `lines:`
and `jsonl:` files as streams (the corpus need not fit in memory). The output is written into a
temporary directory and renamed when complete, so `out` never holds half a dataset.
`pipeline.beam_prepare` writes the same bytes on Apache Beam.
"""

import collections
import multiprocessing
import os
import shutil
import socket
import sys
from collections.abc import Iterable, Iterator

import numpy as np
from absl import logging
from etils import epath

from launch.processes import is_alive
from pipeline import prepare_workers, prepared, preparing, sources
from pipeline.preparing import DEFAULT_SAMPLE_MB, Piece, ShardIndex, ShardLayout, ShardWriter
from pipeline.subwords import SubwordSample
from pipeline.tokenizers import SUBWORD_KINDS, Vocabulary

__all__ = ["DEFAULT_SAMPLE_MB", "prepare_corpus", "remove_dead_temporaries", "temporary_name"]

# Characters of text handed to a worker at a time.
CHUNK_CHARS = 1 << 21


def prepare_corpus(
  data: str,
  out: str,
  *,
  tokenizer: str = "char",
  vocab_size: int = 0,
  vocab_from: str = "",
  tokenizer_sample_mb: float = DEFAULT_SAMPLE_MB,
  with_labels: bool = False,
  num_classes: int = 0,
  num_workers: int = 1,
  shard_bytes: int = 256 << 20,
  read_options: dict | None = None,
  flag: str = "data",
  holdout: str = "",
) -> dict:
  """Writes the prepared dataset of `data` (specs) to `out`; returns its metadata.

  `holdout` (`holdout:P%`): the vocabulary and labels are fixed without the documents that a
  dev split `holdout:P%` of this dataset will hold out (they are written all the same).
  A subword tokenizer (`bpe`, `unigram`) is trained on a sample of at most
  `tokenizer_sample_mb` of the training text (`subwords.SubwordSample`).
  """
  read_options = read_options or {}
  preparing.check_out(out)
  out_path = epath.Path(out)
  specs = preparing.parse_specs(data, flag)
  examples = lambda: _numbered_examples(specs, with_labels, read_options)

  vocab, labels = preparing.given_vocabulary(vocab_from, tokenizer, with_labels)
  held = None
  if holdout and (vocab is None or (with_labels and labels is None)):
    held = sources.holdout_mask(sum(1 for _ in examples()), holdout, "eval_data")
  first = _first_pass(
    examples(),
    held,
    count_kind=tokenizer if preparing.needs_counts(vocab, tokenizer) else None,
    sample_mb=tokenizer_sample_mb if vocab is None and tokenizer in SUBWORD_KINDS else None,
    read_labels=with_labels and labels is None,
    num_workers=num_workers,
  )
  if vocab is None and tokenizer in SUBWORD_KINDS:
    vocab = Vocabulary.train_subwords(first.sample.lines(), tokenizer, vocab_size)
    if not first.sample.sampled_all:
      logging.info(
        "The %s tokenizer was trained on a %g MB sample of the text (--tokenizer_sample_mb)",
        tokenizer,
        tokenizer_sample_mb,
      )
  elif vocab is None:
    vocab = Vocabulary.from_counts(first.counts, tokenizer, vocab_size or None, first.counted_bytes)
  if with_labels and labels is None:
    labels = preparing.labels_of_first_examples(
      first.labels_seen.values(), num_classes, f"--{flag}={data}"
    )
  layout = ShardLayout(first.total_bytes, shard_bytes)

  remove_dead_temporaries(out_path)
  tmp = out_path.parent / temporary_name(out_path.name, socket.gethostname(), os.getpid())
  if tmp.exists():
    tmp.rmtree()
  (tmp / prepared.INDEX_DIR).mkdir(parents=True)
  try:
    shards = _write_records(
      examples(),
      vocab,
      labels,
      tmp,
      layout=layout,
      num_workers=num_workers,
      split_documents=not with_labels,
      flag=flag,
    )
    meta = preparing.dataset_meta(
      shards,
      vocab,
      labels,
      vocab_size=vocab_size,
      tokenizer_sample_mb=tokenizer_sample_mb,
      specs=specs,
      vocab_from=vocab_from,
      flag=flag,
    )
    for part, entry in preparing.shard_entries(shards):
      (tmp / part).rename(tmp / entry["file"])
    for name, content in preparing.index_files(shards, labels is not None).items():
      (tmp / prepared.INDEX_DIR / name).write_bytes(content)
    vocab.save(str(tmp / prepared.VOCAB_FILE))
    if labels is not None:
      labels.save(str(tmp / prepared.LABELS_FILE))
    # The metadata last: a directory without it is not a dataset (`PreparedDataset` says so).
    (tmp / prepared.META_FILE).write_text(preparing.meta_json(meta))
    if out_path.exists():
      out_path.rmdir()  # empty (checked above)
    tmp.rename(out_path)
  except BaseException:
    shutil.rmtree(str(tmp), ignore_errors=True)
    raise
  return meta


def temporary_name(name: str, host: str, pid: int) -> str:
  """Where a prepare writes `name` until it is complete: `.NAME.tmp-HOST-PID`, hidden, and naming
  the process that owns it so that another prepare can tell whether it is still running."""
  return f".{name}.tmp-{host}-{pid}"


def remove_dead_temporaries(out_path: epath.Path) -> None:
  """Removes what a prepare into `out_path` that was killed (SIGKILL, a lost machine) left
  beside it: a temporary directory whose process, on this machine, is gone. One owned by
  another machine cannot be checked from here, and is reported instead. (Names written before
  the host was part of them, `.NAME.tmp-PID`, are taken as this machine's.)"""
  prefix, here = f".{out_path.name}.tmp-", socket.gethostname()
  if not out_path.parent.exists():
    return
  for entry in out_path.parent.iterdir():
    if not entry.name.startswith(prefix):
      continue
    host, _, pid = entry.name[len(prefix) :].rpartition("-")
    if not pid.isdigit():
      continue
    if host and host != here:
      logging.warning(
        "%s: left by a prepare on %s (process %s); remove it if that prepare is no longer running",
        entry,
        host,
        pid,
      )
    elif not is_alive(int(pid)):
      logging.warning(
        "%s: removing what a prepare that died (process %s) left half written", entry, pid
      )
      entry.rmtree(missing_ok=True)


def _numbered_examples(specs, with_labels: bool, read_options: dict) -> Iterator[tuple]:
  """(source, document, example) of the corpus, in order."""
  for source, spec in enumerate(specs):
    for document, example in enumerate(preparing.examples_of(spec, with_labels, read_options)):
      yield source, document, example


class _FirstPass:
  def __init__(self, sample_mb: float | None):
    self.total_bytes = 0  # of every document, held out or not: the shards' layout
    self.counts, self.counted_bytes = collections.Counter(), 0  # of the training documents
    self.sample = SubwordSample(int(sample_mb * (1 << 20))) if sample_mb is not None else None
    self.labels_seen = {}  # label -> (key, example) of its first training document


def _first_pass(
  examples: Iterable[tuple],
  held,
  *,
  count_kind: str | None,
  sample_mb: float | None,
  read_labels: bool,
  num_workers: int,
) -> _FirstPass:
  """The corpus's size and, of its training documents (those not `held`): token counts
  (`count_kind`), the subword sample (`sample_mb`), the first document of each label."""
  first = _FirstPass(sample_mb)

  def training_texts():
    for i, (source, document, example) in enumerate(examples):
      text = example["text"]
      first.total_bytes += preparing.text_bytes(text)
      if held is not None and held[i]:
        continue
      if read_labels:
        first.labels_seen.setdefault(example["label"], ((source, document, 0), example))
      bar.update(1)
      yield text

  pool = _pool(num_workers if count_kind else 1, count_kind or "char", None)
  with _progress("counting tokens" if count_kind else "reading") as bar:
    try:
      chunks = _text_chunks(training_texts())
      if count_kind:
        for chunk_counts, chunk_bytes in _mapped(
          pool, prepare_workers.count_tokens, chunks, num_workers
        ):
          first.counts.update(chunk_counts)
          first.counted_bytes += chunk_bytes
      else:
        for texts in chunks:
          if first.sample is not None:
            first.sample.add(texts)
    finally:
      if pool is not None:
        pool.terminate()
  return first


def _text_chunks(texts: Iterable[str]) -> Iterator[list[str]]:
  """Lists of texts of about CHUNK_CHARS characters each."""
  chunk, size = [], 0
  for text in texts:
    chunk.append(text)
    size += len(text)
    if size >= CHUNK_CHARS:
      yield chunk
      chunk, size = [], 0
  if chunk:
    yield chunk


def _piece_chunks(examples: Iterable[tuple], split_documents: bool) -> Iterator[list[Piece]]:
  """The corpus's pieces (`preparing.Piece`), in lists of about CHUNK_CHARS characters."""
  chunk, size, offset = [], 0, 0
  for source, document, example in examples:
    for piece in preparing.pieces_of(example, source, document, offset, split_documents):
      chunk.append(piece)
      size += len(piece.text)
    offset += preparing.text_bytes(example["text"])
    if size >= CHUNK_CHARS:
      yield chunk
      chunk, size = [], 0
  if chunk:
    yield chunk


def _pool(num_workers: int, kind: str, vocab: Vocabulary | None):
  """A process pool, or None for one worker (everything then runs in this process)."""
  state = (kind, vocab.to_json() if vocab is not None else None)
  if num_workers <= 1:
    prepare_workers.start(*state)
    return None
  return multiprocessing.get_context("spawn").Pool(num_workers, prepare_workers.start, state)


def _mapped(pool, function, items: Iterable, num_workers: int) -> Iterator:
  """`map(function, items)` on the pool, in order, with at most two chunks per worker in flight
  (`Pool.imap` would read the whole corpus into its task queue)."""
  if pool is None:
    yield from map(function, items)
    return
  in_flight = collections.deque()
  for item in items:
    in_flight.append(pool.apply_async(function, (item,)))
    if len(in_flight) >= 2 * num_workers:
      yield in_flight.popleft().get()
  while in_flight:
    yield in_flight.popleft().get()


def _progress(description: str):
  from tqdm import tqdm  # a bar on a terminal only (disable=None)

  return tqdm(desc=description, unit=" docs", disable=None, file=sys.stderr, smoothing=0.1)


class _Shards:
  """The shards being written, one at a time (the pieces come in the corpus's order, and the
  layout's shards are contiguous runs of it)."""

  def __init__(self, directory: epath.Path, layout: ShardLayout, labelled: bool):
    self._directory, self._layout, self._labelled = directory, layout, labelled
    self._writer, self._current = None, None
    self.written: list[ShardIndex] = []
    self._lengths, self._ends, self._labels = [], [], []

  def write(self, piece: Piece, record: bytes, length: int, label: int | None) -> None:
    shard = self._layout.shard_of(piece.offset)
    if shard != self._current:
      self._close()
      self._current = shard
      self._writer = ShardWriter(str(self._directory / preparing.part_name(shard)))
    self._writer.write(record)
    self._lengths.append(length)
    self._ends.append(piece.ends_document)
    self._labels.append(label)

  def _close(self) -> None:
    if self._writer is None:
      return
    self._writer.close()
    self.written.append(
      ShardIndex(
        self._current,
        np.array(self._lengths, np.int32),
        np.array(self._ends, bool),
        np.array(self._labels, np.int32) if self._labelled else None,
      )
    )
    self._writer, self._lengths, self._ends, self._labels = None, [], [], []

  def close(self) -> list[ShardIndex]:
    self._close()
    return self.written


def _write_records(
  examples: Iterable[tuple],
  vocab: Vocabulary,
  labels,
  directory: epath.Path,
  *,
  layout: ShardLayout,
  num_workers: int,
  split_documents: bool,
  flag: str,
) -> list[ShardIndex]:
  shards = _Shards(directory, layout, labels is not None)
  pending = collections.deque()  # the chunks handed to the pool, in order

  def texts_of(chunk_stream):
    for chunk in chunk_stream:
      pending.append(chunk)
      yield [piece.text for piece in chunk]

  pool = _pool(num_workers, vocab.kind, vocab)
  with _progress("writing records") as bar:
    try:
      chunks = _piece_chunks(examples, split_documents)
      for records, lengths in _mapped(
        pool, prepare_workers.encode_texts, texts_of(chunks), num_workers
      ):
        chunk = pending.popleft()
        # A label this run does not know fails here
        label_ids = labels.ids([p.example() for p in chunk], f"--{flag}") if labels else None
        for i, (piece, record) in enumerate(zip(chunk, records)):
          shards.write(piece, record, int(lengths[i]), label_ids[i] if labels else None)
        bar.update(len(records))
    finally:
      if pool is not None:
        pool.terminate()
  return shards.close()
