"""What preparing a corpus means, whichever engine runs it: read, cut, count, fix the
vocabulary, encode, lay the records out in shards, write a shard, the index and the metadata.

Two drivers call these functions and nothing else decides what a prepared dataset holds: the
local one (`pipeline.prepared_writer`: a process pool on one machine, the default) and the
Apache Beam one (`pipeline.beam_prepare`: Dataflow, Flink, Spark or Beam's local runner). So
for the same input both write the same bytes. Nothing here imports Beam or starts a process.

The layout is fixed by the corpus alone, never by how it was read: records come in the order of
the input (source after source, document after document, a long unlabelled document in pieces),
and each piece has a byte offset, the UTF-8 bytes of the text before it. Shard `s` of `n` holds
the pieces whose offset falls in the `s`-th `n`-th of the corpus's bytes (`ShardLayout`): a
worker that knows a piece's offset and the corpus's size knows its shard, and the shards are
contiguous runs of the input, as a streaming writer fills them. (Not a hash of the record: that
would scatter a document's pieces and the input's order, which `prepared:DIR[:90%]` slices,
`holdout:P%` and a language model's token stream all follow.)
"""

import collections
import dataclasses
import io
import json
import math
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
from etils import epath

from pipeline import prepared, sources
from pipeline.errors import DataError
from pipeline.labels import Labels
from pipeline.tokenizers import KINDS, SUBWORD_KINDS, Vocabulary, split_tokens

# The longest piece an unlabelled document is cut into (at whitespace: no token spans it, so the
# pieces tokenise exactly as the whole).
PIECE_CHARS = 1 << 20
# The most text a subword tokenizer is trained on (MB); a larger corpus is sampled.
DEFAULT_SAMPLE_MB = 64


@dataclasses.dataclass(frozen=True)
class Piece:
  """One record-to-be: a document's text or a piece of it. `key` = (source, document in the
  source, piece in the document) orders the records; `offset`, the UTF-8 bytes of the corpus
  before it, places it in a shard. With the document's label and place (file and line)."""

  key: tuple[int, int, int]
  offset: int
  text: str
  ends_document: bool
  label: int | str | None = None
  where: str | None = None

  def example(self) -> dict:
    """What `Labels` reads: the label and where it was found."""
    return {"label": self.label, **({"where": self.where} if self.where else {})}


def parse_specs(data: str, flag: str = "data") -> list[sources.SourceSpec]:
  specs = [sources.parse_spec(spec, flag) for spec in data.split(",")]
  if any(spec.kind == sources.PREPARED for spec in specs):
    raise DataError(f"--{flag}={data}: already prepared; give the trainer prepared:DIR directly")
  return specs


def check_out(out: str) -> None:
  """`out` must not hold anything yet: a dataset is never written over another, nor into files."""
  out_path = epath.Path(out)
  if (out_path / prepared.META_FILE).exists():
    raise DataError(
      f"--out={out}: already holds a prepared dataset; remove it or choose another --out"
    )
  if out_path.exists() and any(out_path.iterdir()):
    raise DataError(f"--out={out}: exists and is not empty; choose another --out")


def slice_unit(specs: Sequence[sources.SourceSpec]) -> str:
  return "tokens" if all(spec.kind == "text" for spec in specs) else "examples"


def examples_of(spec: sources.SourceSpec, with_labels: bool, read_options: dict) -> Iterator[dict]:
  """The examples of one source, in order (streamed for `lines:` and `jsonl:`)."""
  return sources.iter_examples(spec, with_labels=with_labels, **read_options)


def text_bytes(text: str) -> int:
  return len(text.encode("utf-8"))


def piece_texts(text: str, split_documents: bool) -> list[str]:
  """`text` cut at whitespace into pieces of at most about PIECE_CHARS: before the whitespace, so
  that a subword that starts with a space keeps it, as in the whole text. Uncut when
  `split_documents` is False (a labelled example is one record)."""
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


def pieces_of(
  example: dict, source: int, document: int, offset: int, split_documents: bool
) -> Iterator[Piece]:
  """The records-to-be of document `document` of source `source`, which starts `offset` bytes
  into the corpus."""
  texts = piece_texts(example["text"], split_documents)
  last = len(texts) - 1
  for i, text in enumerate(texts):
    yield Piece(
      (source, document, i), offset, text, i == last, example.get("label"), example.get("where")
    )
    if i < last:  # (the next document's offset is its caller's: it has the whole text's size)
      offset += text_bytes(text)


def count_tokens(texts: Iterable[str], kind: str) -> tuple[collections.Counter, int]:
  """(token counts, UTF-8 bytes) of `texts`."""
  counts, size = collections.Counter(), 0
  for text in texts:
    counts.update(split_tokens(text, kind))
    size += text_bytes(text)
  return counts, size


def given_vocabulary(vocab_from: str, tokenizer: str, with_labels: bool):
  """(vocabulary, labels) of `--vocab_from` (either None where this data must fix it)."""
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


def needs_counts(vocab: Vocabulary | None, tokenizer: str) -> bool:
  return vocab is None and tokenizer not in SUBWORD_KINDS


@dataclasses.dataclass(frozen=True)
class ShardLayout:
  """Which shard a piece goes to: shard `s` of `num_shards` holds the pieces that start in the
  `s`-th `num_shards`-th of the corpus's `total_bytes`, so that every shard holds about
  `shard_bytes` of text (records take 4 bytes a token: 1-4 times that on disk). A shard that no
  piece starts in (a piece longer than a shard) is left out."""

  total_bytes: int
  shard_bytes: int

  @property
  def num_shards(self) -> int:
    return max(1, math.ceil(self.total_bytes / self.shard_bytes))

  def shard_of(self, offset: int) -> int:
    if self.total_bytes <= 0:
      return 0
    return min(offset * self.num_shards // self.total_bytes, self.num_shards - 1)


def encode_pieces(
  vocab: Vocabulary, pieces: Sequence[Piece], labels: Labels | None, flag: str
) -> tuple[list[bytes], np.ndarray, np.ndarray | None]:
  """(records, token counts, class ids or None) of `pieces`; an unknown label fails here."""
  encoded = [vocab.encode(piece.text) for piece in pieces]
  label_ids = labels.ids([p.example() for p in pieces], f"--{flag}") if labels else None
  return (
    [prepared.encode_record(ids) for ids in encoded],
    np.array([len(ids) for ids in encoded], np.int32),
    label_ids,
  )


class ShardWriter:
  """One ArrayRecord file of records, written as they come (never held in memory)."""

  def __init__(self, path: str):
    from array_record.python.array_record_module import ArrayRecordWriter

    self._writer = ArrayRecordWriter(path, prepared.WRITER_OPTIONS)
    self.records = 0

  def write(self, record: bytes) -> None:
    self._writer.write(record)
    self.records += 1

  def close(self) -> None:
    self._writer.close()


def part_name(shard: int) -> str:
  """A shard's file until the shards are counted (`prepared.shard_name` then)."""
  return f"records-{shard:05d}.part"


@dataclasses.dataclass
class ShardIndex:
  """What the index says of one written shard's records, in order."""

  shard: int
  lengths: np.ndarray
  ends_document: np.ndarray
  labels: np.ndarray | None


def npy_bytes(array: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  np.save(buffer, array)
  return buffer.getvalue()


def index_files(shards: Sequence[ShardIndex], labelled: bool) -> dict[str, bytes]:
  """The index's files (name -> bytes) of the written shards (in shard order)."""
  shards = sorted(shards, key=lambda s: s.shard)
  concat = lambda arrays, dtype: np.concatenate(arrays) if arrays else np.zeros(0, dtype)
  files = {
    "lengths.npy": concat([s.lengths for s in shards], np.int32),
    "ends_document.npy": concat([s.ends_document for s in shards], bool),
  }
  if labelled:
    files["labels.npy"] = concat([s.labels for s in shards], np.int32)
  return {name: npy_bytes(array) for name, array in files.items()}


def shard_entries(shards: Sequence[ShardIndex]) -> list[tuple[str, dict]]:
  """(part file, metadata entry) of each written shard, named K-of-N in shard order."""
  shards = sorted(shards, key=lambda s: s.shard)
  return [
    (
      part_name(s.shard),
      {"file": prepared.shard_name(k, len(shards)), "records": int(len(s.lengths))},
    )
    for k, s in enumerate(shards)
  ]


def dataset_meta(
  shards: Sequence[ShardIndex],
  vocab: Vocabulary,
  labels: Labels | None,
  *,
  vocab_size: int,
  tokenizer_sample_mb: float,
  specs: Sequence[sources.SourceSpec],
  vocab_from: str,
  flag: str,
) -> dict:
  """The dataset's `prepared.json`."""
  if not shards or not sum(len(s.lengths) for s in shards):
    raise DataError(f"--{flag}: no examples")
  lengths = np.concatenate([s.lengths for s in sorted(shards, key=lambda s: s.shard)])
  return {
    "num_records": int(len(lengths)),
    "num_documents": int(sum(int(s.ends_document.sum()) for s in shards)),
    "num_tokens": int(lengths.sum(dtype=np.int64)),
    "shards": [entry for _, entry in shard_entries(shards)],
    "format": prepared.FORMAT_VERSION,
    "tokenizer": vocab.kind,
    "vocab_size": vocab_size or 0,
    **({"tokenizer_sample_mb": tokenizer_sample_mb} if vocab.kind in SUBWORD_KINDS else {}),
    "vocab_tokens": len(vocab),
    "labelled": labels is not None,
    "num_classes": labels.num_classes if labels else 0,
    "slice_unit": slice_unit(specs),
    "sources": [str(spec) for spec in specs],
    "vocab_from": vocab_from,
  }


def meta_json(meta: dict) -> str:
  return json.dumps(meta, indent=1)


def labels_of_first_examples(first: Iterable[tuple[tuple, dict]], num_classes: int, what: str):
  """The labels fixed from one example per distinct label, each with the key of the first
  document that has it: `Labels.from_training` sees them in the corpus's order, as the local
  driver reads them (its errors name the first offending example)."""
  ordered = [example for _, example in sorted(first, key=lambda item: item[0])]
  return Labels.from_training(ordered, num_classes, what)
