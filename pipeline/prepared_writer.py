"""Writes prepared datasets (`pipeline.prepared`): tokenises a corpus once, in parallel.

`prepare_corpus` is what `python -m pipeline.prepare` runs, and what the trainer runs on a
source given directly (into its workdir). Without a given vocabulary a first pass counts the
tokens and fixes it (as the trainer would from the same data); a second pass encodes every
example and writes the records. Both tokenise in `num_workers` processes and read `lines:` and
`jsonl:` files as streams (the corpus need not fit in memory). The output is written into a
temporary directory and renamed when complete, so `out` never holds half a dataset.
"""

import collections
import itertools
import json
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
from pipeline import prepare_workers, prepared, sources
from pipeline.errors import DataError
from pipeline.labels import Labels
from pipeline.subwords import SubwordSample
from pipeline.tokenizers import KINDS, SUBWORD_KINDS, Vocabulary

# Texts handed to a worker at a time, and the longest piece an unlabelled document is cut into
# (at whitespace: no token spans it, so the pieces tokenise exactly as the whole).
CHUNK_CHARS = 1 << 21
PIECE_CHARS = 1 << 20
# The most text a subword tokenizer is trained on (MB); a larger corpus is sampled.
DEFAULT_SAMPLE_MB = 64


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
  out_path = epath.Path(out)
  if (out_path / prepared.META_FILE).exists():
    raise DataError(
      f"--out={out}: already holds a prepared dataset; remove it or choose another --out"
    )
  if out_path.exists() and any(out_path.iterdir()):
    raise DataError(f"--out={out}: exists and is not empty; choose another --out")
  specs = [sources.parse_spec(spec, flag) for spec in data.split(",")]
  if any(spec.kind == sources.PREPARED for spec in specs):
    raise DataError(f"--{flag}={data}: already prepared; give the trainer prepared:DIR directly")
  examples = lambda: itertools.chain.from_iterable(
    sources.iter_examples(spec, with_labels=with_labels, **read_options) for spec in specs
  )
  slice_unit = "tokens" if all(spec.kind == "text" for spec in specs) else "examples"

  vocab, labels = _fixed_vocabulary(vocab_from, tokenizer, with_labels)
  if vocab is None or (with_labels and labels is None):
    training_examples = examples()
    if holdout:
      held = sources.holdout_mask(sum(1 for _ in examples()), holdout, "eval_data")
      training_examples = (e for e, is_held in zip(examples(), held) if not is_held)
    if vocab is None and tokenizer in SUBWORD_KINDS:
      sample, labels_seen = _sample_pass(training_examples, with_labels, tokenizer_sample_mb)
      vocab = Vocabulary.train_subwords(sample.lines(), tokenizer, vocab_size)
      if not sample.sampled_all:
        logging.info(
          "The %s tokenizer was trained on a %g MB sample of the text (--tokenizer_sample_mb)",
          tokenizer,
          tokenizer_sample_mb,
        )
    else:
      (counts, text_bytes), labels_seen = _first_pass(
        training_examples, tokenizer if vocab is None else None, with_labels, num_workers
      )
      if vocab is None:
        vocab = Vocabulary.from_counts(counts, tokenizer, vocab_size or None, text_bytes)
    if with_labels and labels is None:
      labels = Labels.from_training(labels_seen, num_classes, f"--{flag}={data}")

  remove_dead_temporaries(out_path)
  tmp = out_path.parent / temporary_name(out_path.name, socket.gethostname(), os.getpid())
  if tmp.exists():
    tmp.rmtree()
  (tmp / prepared.INDEX_DIR).mkdir(parents=True)
  try:
    meta = _write_records(
      examples(),
      vocab,
      labels,
      tmp,
      num_workers=num_workers,
      shard_bytes=shard_bytes,
      split_documents=not with_labels,
      flag=flag,
    )
    meta.update(
      format=prepared.FORMAT_VERSION,
      tokenizer=vocab.kind,
      vocab_size=vocab_size or 0,
      **({"tokenizer_sample_mb": tokenizer_sample_mb} if vocab.kind in SUBWORD_KINDS else {}),
      vocab_tokens=len(vocab),
      labelled=with_labels,
      num_classes=labels.num_classes if labels else 0,
      slice_unit=slice_unit,
      sources=[str(spec) for spec in specs],
      vocab_from=vocab_from,
    )
    vocab.save(str(tmp / prepared.VOCAB_FILE))
    if labels is not None:
      labels.save(str(tmp / prepared.LABELS_FILE))
    # The metadata last: a directory without it is not a dataset (`PreparedDataset` says so).
    (tmp / prepared.META_FILE).write_text(json.dumps(meta, indent=1))
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


def _fixed_vocabulary(vocab_from: str, tokenizer: str, with_labels: bool):
  """(vocabulary, labels) of `--vocab_from` (either may be None: fixed from this data)."""
  if not vocab_from:
    if tokenizer not in KINDS:
      raise DataError(
        f"--tokenizer={tokenizer!r}: unknown tokenizer; expected one of {', '.join(KINDS)}"
      )
    return None, None
  directory = epath.Path(vocab_from)
  if not (directory / prepared.VOCAB_FILE).exists():
    raise DataError(
      f"--vocab_from={vocab_from}: no {prepared.VOCAB_FILE} there (give a prepared dataset or"
      " a training run's workdir)"
    )
  vocab = Vocabulary.load(str(directory / prepared.VOCAB_FILE))
  labels_path = directory / prepared.LABELS_FILE
  labels = Labels.load(str(labels_path)) if with_labels and labels_path.exists() else None
  return vocab, labels


def _pieces(example: dict, split_documents: bool) -> list[str]:
  """The example's text, cut at whitespace into pieces of at most about PIECE_CHARS: before the
  whitespace, so that a subword that starts with a space keeps it, as in the whole text."""
  text = example["text"]
  if not split_documents or len(text) <= PIECE_CHARS:
    return [text]
  pieces, start = [], 0
  while len(text) - start > PIECE_CHARS:
    cut = max(
      text.rfind(" ", start, start + PIECE_CHARS), text.rfind("\n", start, start + PIECE_CHARS)
    )
    cut = cut if cut > start else start + PIECE_CHARS  # no whitespace at all: cut anyway
    pieces.append(text[start:cut])
    start = cut
  pieces.append(text[start:])
  return pieces


def _chunks(
  examples: Iterable[dict], split_documents: bool
) -> Iterator[tuple[list[str], list[dict], list[bool]]]:
  """(texts, their examples, ends_document) of about CHUNK_CHARS characters each."""
  texts, owners, ends, size = [], [], [], 0
  for example in examples:
    pieces = _pieces(example, split_documents)
    for i, piece in enumerate(pieces):
      texts.append(piece)
      owners.append(example)
      ends.append(i == len(pieces) - 1)
      size += len(piece)
    if size >= CHUNK_CHARS:
      yield texts, owners, ends
      texts, owners, ends, size = [], [], [], 0
  if texts:
    yield texts, owners, ends


def _pool(num_workers: int, kind: str, tokens: list[str] | None, model: bytes | None = None):
  """A process pool, or None for one worker (everything then runs in this process)."""
  if num_workers <= 1:
    prepare_workers.start(kind, tokens, model)
    return None
  return multiprocessing.get_context("spawn").Pool(
    num_workers, prepare_workers.start, (kind, tokens, model)
  )


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


def _first_pass(examples: Iterable[dict], kind: str | None, with_labels: bool, num_workers: int):
  """(token counts, one example per distinct label) of the corpus; counts only when `kind`."""
  counts, text_bytes, labels_seen = collections.Counter(), 0, {}
  chunks = _chunks(examples, split_documents=False)

  def texts_of(chunk_stream):
    for texts, owners, _ in chunk_stream:
      if with_labels:
        for example in owners:
          labels_seen.setdefault(example["label"], example)
      bar.update(len(texts))
      yield texts if kind else []

  pool = _pool(num_workers if kind else 1, kind or "char", None)  # (no tokenising: no workers)
  with _progress("counting tokens" if kind else "reading labels") as bar:
    try:
      for chunk_counts, chunk_bytes in _mapped(
        pool, prepare_workers.count_tokens, texts_of(chunks), num_workers
      ):
        counts.update(chunk_counts)
        text_bytes += chunk_bytes
    finally:
      if pool is not None:
        pool.terminate()
  return (counts, text_bytes), list(labels_seen.values())


def _sample_pass(examples: Iterable[dict], with_labels: bool, sample_mb: float):
  """(the training text's sample for a subword tokenizer, one example per distinct label)."""
  sample, labels_seen = SubwordSample(int(sample_mb * (1 << 20))), {}
  with _progress("sampling text for the tokenizer") as bar:
    for texts, owners, _ in _chunks(examples, split_documents=False):
      if with_labels:
        for example in owners:
          labels_seen.setdefault(example["label"], example)
      sample.add(texts)
      bar.update(len(texts))
  return sample, list(labels_seen.values())


class _ShardWriter:
  """Records into ArrayRecord files of about `shard_bytes` each, in order."""

  def __init__(self, directory: epath.Path, shard_bytes: int):
    self._directory, self._shard_bytes = directory, shard_bytes
    self._writer, self._written, self.shards = None, 0, []

  def write(self, record: bytes) -> None:
    from array_record.python.array_record_module import ArrayRecordWriter

    if self._writer is None:
      path = self._directory / f"records-{len(self.shards):05d}.part"
      self._writer = ArrayRecordWriter(str(path), prepared.WRITER_OPTIONS)
      self.shards.append({"file": path.name, "records": 0})
      self._written = 0
    self._writer.write(record)
    self.shards[-1]["records"] += 1
    self._written += len(record)
    if self._written >= self._shard_bytes:
      self._close_shard()

  def _close_shard(self) -> None:
    self._writer.close()
    self._writer = None

  def close(self) -> list[dict]:
    """Closes the last shard and names every shard `records-K-of-N.array_record`."""
    if self._writer is not None:
      self._close_shard()
    for index, shard in enumerate(self.shards):
      name = prepared.shard_name(index, len(self.shards))
      (self._directory / shard["file"]).rename(self._directory / name)
      shard["file"] = name
    return self.shards


def _write_records(
  examples: Iterable[dict],
  vocab: Vocabulary,
  labels: Labels | None,
  directory: epath.Path,
  *,
  num_workers: int,
  shard_bytes: int,
  split_documents: bool,
  flag: str,
) -> dict:
  lengths, ends, label_ids = [], [], []
  writer = _ShardWriter(directory, shard_bytes)
  chunks = _chunks(examples, split_documents)
  pending = []  # (owners, ends) of the chunks handed to the pool, in order

  def texts_of(chunk_stream):
    for texts, owners, chunk_ends in chunk_stream:
      pending.append((owners, chunk_ends))
      yield texts

  pool = _pool(num_workers, vocab.kind, vocab.tokens, vocab.model)
  documents = 0
  with _progress("writing records") as bar:
    try:
      for records, chunk_lengths in _mapped(
        pool, prepare_workers.encode_texts, texts_of(chunks), num_workers
      ):
        owners, chunk_ends = pending.pop(0)
        for record in records:
          writer.write(record)
        lengths.append(chunk_lengths)
        ends.append(np.array(chunk_ends, bool))
        if labels is not None:
          # A label this run does not know fails here
          label_ids.append(labels.ids(owners, f"--{flag}"))
        documents += int(sum(chunk_ends))
        bar.update(len(records))
    finally:
      if pool is not None:
        pool.terminate()
  shards = writer.close()
  if not shards:
    raise DataError(f"--{flag}: no examples")
  lengths = np.concatenate(lengths)
  index = directory / prepared.INDEX_DIR
  for name, array in (
    ("lengths", lengths),
    ("ends_document", np.concatenate(ends)),
    *((("labels", np.concatenate(label_ids)),) if labels is not None else ()),
  ):
    with (index / f"{name}.npy").open("wb") as f:
      np.save(f, array)
  return {
    "num_records": int(len(lengths)),
    "num_documents": documents,
    "num_tokens": int(lengths.sum(dtype=np.int64)),
    "shards": shards,
  }
