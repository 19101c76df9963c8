"""Prepared datasets: token ids in sharded ArrayRecord files, beside a small memory-mapped index.

`python -m pipeline.prepare` writes one (tokenising the corpus once); `--train_data=prepared:DIR`
reads it. A process then touches only the index and the records it trains on, so start-up time
and memory do not grow with the corpus (the in-memory sources read and tokenise everything).

    DIR/prepared.json                 what the dataset is: tokenizer, counts, shards, sources
    DIR/vocab.json, DIR/labels.json   the vocabulary (and class names) the ids refer to
    DIR/index/lengths.npy             int32 [R]: tokens in each record
    DIR/index/ends_document.npy       bool [R]: the record ends a document (<eos> follows it
                                      in a per-token stream)
    DIR/index/labels.npy              int32 [R]: class ids (labelled datasets)
    DIR/records-00000-of-00004.array_record ...   record r: its token ids, int32 little-endian

A record is one example, except that an unlabelled document too long for one record (a whole
book in a `text:` file) is split into several, at whitespace, so no token is cut. Slices
(`prepared:DIR[:90%]`) select documents, or tokens of the stream when the dataset was prepared
from `text:` files (one document each), as the `text:` kind itself does.

Everything here is read through `etils.epath`, so DIR may be on any filesystem it supports
(`gs://...`); the index is memory-mapped where DIR is local and read whole elsewhere.
"""

import collections
import dataclasses
import json
import threading
from collections.abc import Sequence

import numpy as np
from etils import epath

from pipeline.errors import DataError
from pipeline.labels import Labels
from pipeline.slicing import slice_range
from pipeline.tokenizers import EOS, UNK, Vocabulary

FORMAT_VERSION = 1
META_FILE = "prepared.json"
VOCAB_FILE = "vocab.json"
LABELS_FILE = "labels.json"
INDEX_DIR = "index"
TOKEN_DTYPE = np.dtype("<i4")
# Random access reads one record at a time: ArrayRecord chunks of one record each.
WRITER_OPTIONS = "group_size:1"


def shard_name(index: int, count: int) -> str:
  return f"records-{index:05d}-of-{count:05d}.array_record"


def encode_record(ids: np.ndarray) -> bytes:
  return np.asarray(ids, TOKEN_DTYPE).tobytes()


def decode_record(record: bytes) -> np.ndarray:
  return np.frombuffer(record, TOKEN_DTYPE).astype(np.int32)


@dataclasses.dataclass(frozen=True)
class _Shard:
  """One file's part of the records (the shape `ArrayRecordDataSource` reads without opening
  every file at start-up to count its records)."""

  filename: str
  skip: int
  take: int
  examples_in_shard: int


def _load_array(path: epath.Path) -> np.ndarray:
  try:
    if "://" not in str(path):
      return np.load(str(path), mmap_mode="r")  # local: pages are read when used
    with path.open("rb") as f:
      return np.load(f)
  except (OSError, ValueError) as e:
    raise DataError(f"{path}: unreadable index of a prepared dataset ({e})") from None


class PreparedDataset:
  """A prepared dataset opened for reading: metadata and index now, records when asked."""

  def __init__(self, directory: str, what: str = "data"):
    self.directory = epath.Path(directory)
    self.what = what  # the flag that named it, for errors
    meta_path = self.directory / META_FILE
    if not meta_path.exists():
      hint = (
        " (it is being written, or its prepare was interrupted)" if self.directory.exists() else ""
      )
      raise DataError(
        f"{what}: {directory} is not a prepared dataset: no {META_FILE}{hint};"
        " make one with python -m pipeline.prepare --out=DIR"
      )
    try:
      self.meta = json.loads(meta_path.read_text())
    except ValueError as e:
      raise DataError(f"{meta_path}: unreadable ({e})") from None
    if self.meta.get("format") != FORMAT_VERSION:
      raise DataError(
        f"{meta_path}: format {self.meta.get('format')!r}; this version reads format"
        f" {FORMAT_VERSION}: prepare the corpus again"
      )
    self.vocab = Vocabulary.load(str(self.directory / VOCAB_FILE))
    self.labels = Labels.load(str(self.directory / LABELS_FILE)) if self.labelled else None
    index = self.directory / INDEX_DIR
    self.lengths = _load_array(index / "lengths.npy")
    self.ends_document = _load_array(index / "ends_document.npy")
    self.label_ids = _load_array(index / "labels.npy") if self.labelled else None
    self._source = None

  @property
  def labelled(self) -> bool:
    return bool(self.meta["labelled"])

  @property
  def tokenizer(self) -> str:
    return self.meta["tokenizer"]

  @property
  def num_records(self) -> int:
    return int(self.meta["num_records"])

  def _records(self):
    if self._source is None:  # opened on first read: many processes open only what they read
      from array_record.python.array_record_data_source import ArrayRecordDataSource

      self._source = ArrayRecordDataSource(
        [
          _Shard(str(self.directory / shard["file"]), 0, shard["records"], shard["records"])
          for shard in self.meta["shards"]
        ]
      )
    return self._source

  def read(self, records: Sequence[int]) -> list[np.ndarray]:
    """The token ids of `records` (global record indices), in that order."""
    if not len(records):
      return []
    return [decode_record(r) for r in self._records().__getitems__([int(i) for i in records])]

  def document_records(self) -> np.ndarray:
    """int64 [D + 1]: document d is records [starts[d], starts[d + 1])."""
    ends = np.flatnonzero(self.ends_document) + 1
    return np.concatenate([[0], ends]).astype(np.int64)

  def view(self, slice_text: str | None, spec: str) -> "PreparedView":
    """The records (and for token slices, the stream range) that `[SLICE]` selects."""
    if self.meta["slice_unit"] == "tokens" and slice_text:
      records = np.arange(self.num_records)
      length = len(PreparedStream(self, records, None))
      tokens = slice_range(slice_text, length, f"{self.what}={spec}")
      if not tokens:
        raise DataError(f"{self.what}={spec}: the slice selects none of the {length} tokens")
      return PreparedView(self, records, token_range=(tokens.start, tokens.stop))
    starts = self.document_records()
    documents = slice_range(slice_text, len(starts) - 1, f"{self.what}={spec}")
    if not documents:
      raise DataError(
        f"{self.what}={spec}: the slice selects none of the {len(starts) - 1} documents"
      )
    return PreparedView(self, np.arange(starts[documents.start], starts[documents.stop]))

  def documents_view(self, documents: np.ndarray) -> "PreparedView":
    """The records of the given documents (indices into the dataset's documents), in order."""
    starts = self.document_records()
    documents = np.asarray(documents, np.int64)
    counts = starts[documents + 1] - starts[documents]
    # Each document's first record, repeated over its records, plus the position within it.
    firsts = np.repeat(starts[documents], counts)
    within = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    return PreparedView(self, firsts + within)


class PreparedView:
  """Some records of a prepared dataset, as per-sequence examples or as one token stream."""

  def __init__(
    self, dataset: PreparedDataset, records: np.ndarray, token_range: tuple[int, int] | None = None
  ):
    self.dataset, self.records, self._token_range = (
      dataset,
      np.asarray(records, np.int64),
      token_range,
    )

  def __len__(self):
    return len(self.records)

  # Per sequence.
  def sequences(self) -> "PreparedSequences":
    if not self.dataset.labelled:
      raise DataError(
        f"{self.dataset.what}: {self.dataset.directory} was prepared without labels;"
        " prepare it again with --labels for --task=classify"
      )
    return PreparedSequences(self.dataset, self.records)

  def label_ids(self) -> np.ndarray:
    return np.asarray(self.dataset.label_ids[self.records], np.int32)

  # Per token.
  def stream(self) -> "PreparedStream":
    return PreparedStream(self.dataset, self.records, self._token_range)


class PreparedSequences:
  """Random access to the token ids of each example (an empty one reads as one `<unk>`, as
  in-memory sources do)."""

  def __init__(self, dataset: PreparedDataset, records: np.ndarray):
    self._dataset, self._records = dataset, records
    self.lengths = np.maximum(np.asarray(dataset.lengths[records]), 1).astype(np.int64)

  def __len__(self):
    return len(self._records)

  def get(self, indices: Sequence[int]) -> list[np.ndarray]:
    ids = self._dataset.read(self._records[np.asarray(indices, np.int64)])
    return [x if len(x) else np.array([UNK], np.int32) for x in ids]


EOS_PIECE = np.array([EOS], np.int32)


class PreparedStream:
  """The records' tokens as one stream, each document followed by `<eos>`; `read(start, stop)`
  touches only the records that overlap the range.

  Consecutive windows of a lane read the same records (a record split from a book holds a
  million tokens, a review a few windows' worth), so the records read last are kept, decoded, up
  to `cache_bytes`: without it every window read and decoded whole records again, and a small
  model waited on its data.
  """

  def __init__(
    self,
    dataset: PreparedDataset,
    records: np.ndarray,
    token_range: tuple[int, int] | None,
    cache_bytes: int = 64 << 20,
  ):
    self._dataset, self._records = dataset, records
    ends = np.asarray(dataset.ends_document[records], bool)
    sizes = np.asarray(dataset.lengths[records], np.int64) + ends
    self._ends = ends
    # Record k covers [offsets[k], offsets[k+1])
    self._offsets = np.concatenate([[0], np.cumsum(sizes)])
    self._start, self._stop = token_range or (0, int(self._offsets[-1]))
    self._cache: collections.OrderedDict[int, np.ndarray] = collections.OrderedDict()
    self._cache_bytes, self._cached_bytes = cache_bytes, 0
    self._lock = threading.Lock()  # Grain reads windows from several threads

  def __len__(self):
    return self._stop - self._start

  def read(self, start: int, stop: int) -> np.ndarray:
    return self.read_many([(start, stop)])[0]

  def read_many(self, ranges: Sequence[tuple[int, int]]) -> list[np.ndarray]:
    """The tokens of each `[start, stop)` range of the stream (clipped to it), with one batched
    read of every record they need that is not cached."""
    if not ranges:
      return []
    starts, stops = np.asarray(ranges, np.int64).reshape(-1, 2).T
    return [
      np.concatenate(pieces) if pieces else np.zeros(0, np.int32)
      for pieces in self._pieces(starts, stops)
    ]

  def read_block(
    self, starts: Sequence[int], width: int, pad: int
  ) -> tuple[np.ndarray, np.ndarray]:
    """`read_many` of `[start, start + width)` for each start, as rows of a [len(starts), width]
    array padded with `pad`, and where each row is real."""
    starts = np.asarray(starts, np.int64)
    tokens = np.full((len(starts), width), pad, np.int32)
    real = np.zeros((len(starts), width), bool)
    for row, pieces in enumerate(self._pieces(starts, starts + width)):
      filled = 0
      for piece in pieces:  # written in place: no concatenation per row
        tokens[row, filled : filled + len(piece)] = piece
        filled += len(piece)
      real[row, :filled] = True
    return tokens, real

  def _pieces(self, starts: np.ndarray, stops: np.ndarray) -> list[list[np.ndarray]]:
    """For each range, the parts of the records it covers, in order. The records each range
    spans are found for all ranges at once: a small model reads a window of every lane each few
    milliseconds, and a search per range cost a tenth of a millisecond per 10 lanes."""
    starts = np.maximum(starts, 0) + self._start
    stops = np.maximum(np.minimum(stops + self._start, self._stop), starts)
    firsts = np.searchsorted(self._offsets, starts, side="right") - 1
    # Exclusive
    lasts = np.where(stops > starts, np.searchsorted(self._offsets, stops, side="left"), firsts)
    fetched = self._fetch(
      sorted(
        {k for first, last in zip(firsts.tolist(), lasts.tolist()) for k in range(first, last)}
      )
    )
    out = []
    for start, stop, first, last in zip(
      starts.tolist(), stops.tolist(), firsts.tolist(), lasts.tolist()
    ):
      pieces = []
      for k in range(first, last):
        # Only the part of record k (its tokens, then <eos> if it ends a document) in the range.
        base, record = int(self._offsets[k]), fetched[k]
        lo, hi = max(start - base, 0), min(stop - base, len(record) + int(self._ends[k]))
        pieces.append(record[lo : min(hi, len(record))])
        if hi > len(record):
          pieces.append(EOS_PIECE)
      out.append(pieces)
    return out

  def _fetch(self, needed: list[int]) -> dict[int, np.ndarray]:
    """Records `needed` (stream record numbers) decoded: from the cache, the rest in one read."""
    with self._lock:
      found = {k: self._cache[k] for k in needed if k in self._cache}
      for k in found:
        self._cache.move_to_end(k)
    missing = [k for k in needed if k not in found]
    read = dict(zip(missing, self._dataset.read(self._records[missing])))
    with self._lock:
      for k, tokens in read.items():
        if k not in self._cache and tokens.nbytes <= self._cache_bytes:
          self._cache[k] = tokens
          self._cached_bytes += tokens.nbytes
      while self._cached_bytes > self._cache_bytes:
        _, evicted = self._cache.popitem(last=False)
        self._cached_bytes -= evicted.nbytes
    return {**found, **read}


class ArrayStream:
  """An in-memory token stream with the interface of `PreparedStream`."""

  def __init__(self, tokens: np.ndarray):
    self._tokens = tokens

  def __len__(self):
    return len(self._tokens)

  def read(self, start: int, stop: int) -> np.ndarray:
    return self._tokens[max(start, 0) : max(stop, 0)]

  def read_many(self, ranges: Sequence[tuple[int, int]]) -> list[np.ndarray]:
    return [self.read(start, stop) for start, stop in ranges]

  def read_block(
    self, starts: Sequence[int], width: int, pad: int
  ) -> tuple[np.ndarray, np.ndarray]:
    """As `PreparedStream.read_block`, by one gather: a small model's step is a few milliseconds,
    and a row-by-row copy took a tenth of a millisecond per 10 rows of it."""
    positions = np.asarray(starts, np.int64)[:, None] + np.arange(width)
    real = (positions >= 0) & (positions < len(self._tokens))
    if not len(self._tokens):
      return np.full(positions.shape, pad, np.int32), real
    tokens = self._tokens[np.clip(positions, 0, len(self._tokens) - 1)]
    return np.where(real, tokens, pad).astype(np.int32, copy=False), real


class InMemorySequences:
  """In-memory token ids of each example with the interface of `PreparedSequences`."""

  def __init__(self, token_ids: list[np.ndarray]):
    self._token_ids = token_ids
    self.lengths = np.array([len(ids) for ids in token_ids], np.int64)

  def __len__(self):
    return len(self._token_ids)

  def get(self, indices: Sequence[int]) -> list[np.ndarray]:
    return [self._token_ids[i] for i in indices]
