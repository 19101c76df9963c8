"""Data sources named by `KIND:PATH[SLICE]` specs, read into sequences of example dicts.

An example is `{"text": str}` (per-token data) or `{"text": str, "label": int}` (per-sequence
data). Kinds:

- `text:FILE` one document (UTF-8); a slice selects characters (`text:input.txt[:90%]`).
- `lines:FILE` one example per non-empty line; `LABEL TEXT` when labels are needed.
- `jsonl:FILE` `.jsonl` or `.jsonl.gz`, one JSON object per line with text and label fields.
- `csv:FILE`, `tsv:FILE` a header row naming the columns, then one example per record (quoted
  fields may hold commas, tabs and newlines, as Python's csv module reads them).
- `parquet:FILE` a Parquet table with text and label columns.
- `tfds:NAME/SPLIT` a prepared TFDS dataset in ArrayRecord format, read with random access
  through `tfds.data_source` (no TensorFlow); NAME may hold a config (`glue/sst2/train`).
- `synthetic:NAME` a generated task (`pipeline.synthetic`).
- `prepared:DIR` a dataset that `pipeline.prepare` tokenised once (`pipeline.prepared`): read
  by the trainer record by record, never through `read_examples`.

Several specs joined by commas are read one after the other as one source
(`jsonl:unsup.jsonl.gz,jsonl:train.jsonl.gz`). The dev split may also be `holdout:P%`: a fixed
random P% of the training examples, taken out of training (`holdout_split`), for corpora that come
without one (the same examples for every `--seed`, so runs stay comparable).

Labels are class ids (`0`, `1`, ...) or names (`pos`, `negative`): names are kept as strings here
and mapped to ids by the run (`pipeline.labels`). Files are UTF-8 unless `encoding` says otherwise.
Every error names the flag, and the file and line (or row) where there is one.
"""

import contextlib
import csv
import dataclasses
import gzip
import io
import json
import os
import re
from collections.abc import Iterator, Sequence

import numpy as np
from absl import logging
from etils import epath

from pipeline import synthetic
from pipeline.errors import DataError
from pipeline.paths import absolute, is_local
from pipeline.slicing import slice_range

KINDS = ("text", "lines", "jsonl", "csv", "tsv", "parquet", "tfds", "synthetic", "prepared")
# PATH is a file or directory (tfds: and synthetic: name one); prepared: is a directory.
FILE_KINDS = ("text", "lines", "jsonl", "csv", "tsv", "parquet", "prepared")
PREPARED = "prepared"
_PATH_AND_SLICE = re.compile(r"^(.*?)(\[[^\[\]]*\])?$")  # "PATH[SLICE]" -> PATH, "[SLICE]" or None


@dataclasses.dataclass(frozen=True)
class SourceSpec:
  kind: str
  path: str
  slice: str | None  # e.g. "[:90%]"
  flag: str  # the flag it came from, for error messages

  def __str__(self):
    return f"{self.kind}:{self.path}{self.slice or ''}"


def parse_spec(spec: str, flag: str) -> SourceSpec:
  """Parses `KIND:PATH[SLICE]`; `flag` names where the spec came from."""
  kind, sep, rest = spec.partition(":")
  if not sep or not rest:
    raise DataError(
      f"--{flag}={spec!r}: expected KIND:PATH[SLICE] with KIND one of {', '.join(KINDS)}"
    )
  if kind not in KINDS:
    raise DataError(
      f"--{flag}={spec!r}: unknown data kind {kind!r}; expected one of {', '.join(KINDS)}"
    )
  path, slice_text = _PATH_AND_SLICE.match(rest).groups()
  if not path:
    raise DataError(f"--{flag}={spec!r}: missing path or name after {kind}:")
  if kind == "synthetic" and not synthetic.is_task(path):
    raise DataError(
      f"--{flag}={spec!r}: unknown synthetic task {path!r}; expected one of {', '.join(synthetic.TASK_NAMES)}"
    )
  return SourceSpec(kind, path, slice_text, flag)


def with_absolute_path(spec: str, resolve_links: bool = False) -> str:
  """`spec` with its file path made absolute (`lines:data/x.txt[:10]` -> `lines:/cwd/data/x.txt[:10]`),
  each of them for comma-joined specs; with `resolve_links`, local paths also through symbolic
  links (`os.path.realpath`), so that two spellings of the same files compare equal.

  Specs that name no file, or that do not parse (reported later, with the flag), are returned
  unchanged.
  """
  if "," in spec:
    return ",".join(with_absolute_path(part, resolve_links) for part in spec.split(","))
  kind, sep, rest = spec.partition(":")
  path, slice_text = _PATH_AND_SLICE.match(rest).groups()
  if not sep or kind not in FILE_KINDS or not path:
    return spec
  path = absolute(path)
  if resolve_links and is_local(path):
    path = os.path.realpath(path)
  return f"{kind}:{path}{slice_text or ''}"


HOLDOUT = "holdout:"
_HOLDOUT_SEED = 20130  # fixed: the held-out examples must not change with --seed


def read_joined(specs: str, flag: str, **kwargs) -> Sequence[dict]:
  """The examples of one spec, or of several joined by commas, in order (`read_examples`'s
  keyword arguments)."""
  parts = [read_examples(parse_spec(spec, flag), **kwargs) for spec in specs.split(",")]
  return parts[0] if len(parts) == 1 else [example for part in parts for example in part]


def holdout_split(examples: Sequence[dict], spec: str, flag: str) -> tuple[list[dict], list[dict]]:
  """(training examples, dev examples) for `--eval_data=holdout:P%`: a fixed random P% of the
  examples is held out, the rest keeps its order."""
  held = holdout_mask(len(examples), spec, flag)
  return ([e for e, h in zip(examples, held) if not h], [e for e, h in zip(examples, held) if h])


def holdout_mask(num_examples: int, spec: str, flag: str) -> np.ndarray:
  """bool [num_examples]: the examples `holdout:P%` holds out (a fixed random P%)."""
  text = spec[len(HOLDOUT) :]
  if not re.fullmatch(r"\d+(\.\d+)?%", text) or not 0 < float(text[:-1]) < 100:
    raise DataError(f"--{flag}={spec!r}: expected holdout:P% with 0 < P < 100, e.g. holdout:10%")
  count = int(num_examples * float(text[:-1]) / 100)
  if count < 1 or count >= num_examples:
    raise DataError(
      f"--{flag}={spec!r}: {text} of {num_examples} training examples leaves no"
      " dev or no training example (a text: file is one example: slice it instead)"
    )
  held = np.zeros(num_examples, bool)
  held[np.random.default_rng(_HOLDOUT_SEED).permutation(num_examples)[:count]] = True
  return held


def read_examples(
  spec: SourceSpec,
  *,
  with_labels: bool,
  text_field: str = "text",
  label_field: str = "label",
  tfds_data_dir: str | None = None,
  utf8_errors: str = "strict",
  encoding: str = "utf-8",
) -> Sequence[dict]:
  """Reads the examples a spec names (a list, or a lazy random-access view for TFDS).

  File examples carry `where` (`FILE:LINE`) so that later checks can name their line.
  Text files are decoded with `encoding`; `utf8_errors="replace"` turns bytes that do not decode
  into U+FFFD with a warning, `"strict"` refuses them.
  """
  if spec.kind == PREPARED:
    raise DataError(
      f"--{spec.flag}={spec}: a prepared dataset holds token ids, not text; the trainer"
      " reads it directly (it cannot be joined with other specs or prepared again)"
    )
  if spec.kind == "tfds":
    return _tfds_examples(spec, with_labels, text_field, label_field, tfds_data_dir)
  if spec.kind == "synthetic":
    examples = synthetic.generate(spec.path)
    if with_labels and "label" not in examples[0]:
      raise DataError(
        f"--{spec.flag}={spec}: synthetic task {spec.path!r} has no labels; use it with --task=lm"
      )
  elif spec.kind == "text":
    if with_labels:
      raise DataError(
        f"--{spec.flag}={spec}: a text: source is one unlabelled document; use lines: or jsonl: for --task=classify"
      )
    text = _read_text(spec, utf8_errors, encoding)
    chars = slice_range(spec.slice, len(text), f"--{spec.flag}")
    if not chars:
      raise DataError(f"--{spec.flag}={spec}: the slice selects none of the {len(text)} characters")
    return [{"text": text[chars.start : chars.stop]}]
  elif spec.kind == "lines":
    examples = _lines_examples(spec, with_labels, utf8_errors, encoding)
  elif spec.kind in ("csv", "tsv"):
    examples = _csv_examples(spec, with_labels, text_field, label_field, utf8_errors, encoding)
  elif spec.kind == "parquet":
    examples = _parquet_examples(spec, with_labels, text_field, label_field)
  else:
    examples = _jsonl_examples(spec, with_labels, text_field, label_field, utf8_errors, encoding)
  selected = slice_range(spec.slice, len(examples), f"--{spec.flag}")
  if not selected:
    raise DataError(f"--{spec.flag}={spec}: the slice selects none of the {len(examples)} examples")
  return examples[selected.start : selected.stop]


def _check_file(spec: SourceSpec) -> None:
  if not epath.Path(spec.path).is_file():
    raise DataError(f"--{spec.flag}: no such file: {spec.path}")
  if epath.Path(spec.path).stat().length == 0:
    raise DataError(f"--{spec.flag}: empty file: {spec.path}")


@contextlib.contextmanager
def _open_binary(path: str):
  """A file (local or on any filesystem epath reaches), decompressed when it ends in `.gz`."""
  with epath.Path(path).open("rb") as f:
    if path.endswith(".gz"):
      with gzip.GzipFile(fileobj=f, mode="rb") as unzipped:
        yield unzipped
    else:
      yield f


def _decode(
  data: bytes, path: str, utf8_errors: str, encoding: str = "utf-8", line: int | None = None
) -> str:
  """`data` decoded: the whole file, or its line number `line` (errors then name that line)."""
  try:
    return data.decode(encoding)
  except LookupError:
    raise DataError(f"--encoding={encoding}: unknown text encoding") from None
  except UnicodeDecodeError as e:
    number = line if line is not None else data[: e.start].count(b"\n") + 1
    position = f"column {e.start + 1}" if line is not None else f"offset {e.start}"
    name = "UTF-8" if encoding.lower().replace("_", "-") in ("utf-8", "utf8") else encoding
    where = f"{path}:{number}: not valid {name} (byte {data[e.start]:#04x} at {position})"
    if utf8_errors != "replace":
      raise DataError(
        f"{where}; pass --encoding if the file is in another encoding (e.g. latin-1),"
        " or --utf8_errors=replace to replace such bytes"
      ) from None
    text = data.decode(encoding, errors="replace")
    logging.warning("%s; replaced %d such characters with U+FFFD", where, text.count("\ufffd"))
    return text


def _read_text(spec: SourceSpec, utf8_errors: str, encoding: str = "utf-8") -> str:
  _check_file(spec)
  try:
    with _open_binary(spec.path) as f:
      data = f.read()
  except (OSError, EOFError) as e:  # e.g. a truncated or corrupt .gz file
    raise DataError(f"{spec.path}: cannot read ({e})") from None
  return _decode(data, spec.path, utf8_errors, encoding)


def _numbered_lines(spec: SourceSpec, utf8_errors: str, encoding: str):
  # Split on "\n" only: str.splitlines() also splits on U+2028, U+0085 and others, which
  # occur inside the texts (and inside JSON strings) of real corpora such as IMDB.
  for number, line in enumerate(_read_text(spec, utf8_errors, encoding).split("\n"), start=1):
    line = line.removesuffix("\r")
    if line.strip():
      yield number, line


def _parse_label(value, where: str) -> int | str:
  """A class id (int >= 0) or a class name (a non-empty string that is not an integer)."""
  if isinstance(value, bool) or not isinstance(value, (int, str)):
    raise DataError(
      f"{where}: label {value!r} is neither a class id (integer) nor a class name (string)"
    )
  if isinstance(value, str):
    value = value.strip()
    if not re.fullmatch(r"[+-]?\d+", value):
      if not value:
        raise DataError(f"{where}: empty label")
      return value  # a class name, mapped to an id by the run
  label = int(value)
  if label < 0:
    raise DataError(f"{where}: label {label} is negative; labels are class indices 0..C-1 or names")
  return label


def _lines_records(spec: SourceSpec, with_labels: bool, numbered_lines) -> Iterator[dict]:
  for number, line in numbered_lines:
    where = f"{spec.path}:{number}"
    if not with_labels:
      yield {"text": line, "where": where}
      continue
    label, _, text = line.strip().partition(" ")
    yield {"text": text, "label": _parse_label(label, where), "where": where}


def _jsonl_records(
  spec: SourceSpec, with_labels: bool, text_field: str, label_field: str, numbered_lines
) -> Iterator[dict]:
  for number, line in numbered_lines:
    where = f"{spec.path}:{number}"
    try:
      record = json.loads(line)
    except json.JSONDecodeError as e:
      raise DataError(f"{where}: malformed JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
      raise DataError(f"{where}: expected a JSON object with a string field {text_field!r}")
    example = {"text": record[text_field], "where": where}
    if with_labels:
      if label_field not in record:
        raise DataError(f"{where}: no label field {label_field!r}")
      example["label"] = _parse_label(record[label_field], where)
    yield example


def _lines_examples(
  spec: SourceSpec, with_labels: bool, utf8_errors: str, encoding: str
) -> list[dict]:
  return _nonempty(
    list(_lines_records(spec, with_labels, _numbered_lines(spec, utf8_errors, encoding))), spec
  )


def _jsonl_examples(
  spec: SourceSpec,
  with_labels: bool,
  text_field: str,
  label_field: str,
  utf8_errors: str,
  encoding: str,
) -> list[dict]:
  numbered = _numbered_lines(spec, utf8_errors, encoding)
  return _nonempty(list(_jsonl_records(spec, with_labels, text_field, label_field, numbered)), spec)


# Encodings in which b"\n" is always a line break, so a file can be read line by line as bytes.
_LINE_SAFE_ENCODINGS = ("utf-8", "utf8", "latin-1", "latin1", "iso-8859-1", "ascii", "cp1252")


def iter_examples(
  spec: SourceSpec,
  *,
  with_labels: bool,
  text_field: str = "text",
  label_field: str = "label",
  tfds_data_dir: str | None = None,
  utf8_errors: str = "strict",
  encoding: str = "utf-8",
) -> Iterator[dict]:
  """The examples of `spec` one by one (what `read_examples` returns), reading `lines:` and
  `jsonl:` files as a stream, so that a corpus larger than memory can be prepared; other kinds,
  and sliced files (a percentage needs the count), are read whole first."""
  if (
    spec.kind not in ("lines", "jsonl")
    or spec.slice
    or encoding.lower().replace("_", "-") not in _LINE_SAFE_ENCODINGS
  ):
    yield from read_examples(
      spec,
      with_labels=with_labels,
      text_field=text_field,
      label_field=label_field,
      tfds_data_dir=tfds_data_dir,
      utf8_errors=utf8_errors,
      encoding=encoding,
    )
    return
  numbered = _streamed_lines(spec, utf8_errors, encoding)
  records = (
    _lines_records(spec, with_labels, numbered)
    if spec.kind == "lines"
    else _jsonl_records(spec, with_labels, text_field, label_field, numbered)
  )
  empty = True
  for example in records:
    empty = False
    yield example
  if empty:
    _nonempty([], spec)


def _streamed_lines(spec: SourceSpec, utf8_errors: str, encoding: str) -> Iterator[tuple[int, str]]:
  _check_file(spec)
  try:
    with _open_binary(spec.path) as f:
      for number, data in enumerate(f, start=1):
        line = (
          _decode(data, spec.path, utf8_errors, encoding, line=number)
          .rstrip("\n")
          .removesuffix("\r")
        )
        if line.strip():
          yield number, line
  except (OSError, EOFError) as e:  # e.g. a truncated or corrupt .gz file
    raise DataError(f"{spec.path}: cannot read ({e})") from None


def _record_example(
  record: dict, where: str, with_labels: bool, text_field: str, label_field: str
) -> dict:
  """An example from one table record (csv, tsv, parquet), whose columns were checked."""
  text = record[text_field]
  if not isinstance(text, str):
    raise DataError(f"{where}: column {text_field!r} holds {text!r}, not text")
  example = {"text": text, "where": where}
  if with_labels:
    example["label"] = _parse_label(record[label_field], where)
  return example


def _check_columns(
  columns, spec: SourceSpec, with_labels: bool, text_field: str, label_field: str
) -> None:
  needed = [text_field] + ([label_field] if with_labels else [])
  missing = [name for name in needed if name not in columns]
  if missing:
    flags = {text_field: "--text_field", label_field: "--label_field"}
    raise DataError(
      f"{spec.path}: no column {missing[0]!r} (see {flags[missing[0]]}); the columns are"
      f" {', '.join(map(repr, columns))}"
    )


def _csv_examples(
  spec: SourceSpec,
  with_labels: bool,
  text_field: str,
  label_field: str,
  utf8_errors: str,
  encoding: str,
) -> list[dict]:
  text = _read_text(spec, utf8_errors, encoding)
  reader = csv.DictReader(
    io.StringIO(text, newline=""), delimiter="\t" if spec.kind == "tsv" else ","
  )
  try:
    _check_columns(reader.fieldnames or [], spec, with_labels, text_field, label_field)
    examples = []
    start = reader.line_num + 1
    for record in reader:
      where = (
        f"{spec.path}:{start}"  # the line the record starts on (a quoted field may span lines)
      )
      start = reader.line_num + 1
      extra = record.pop(None, None)  # fields beyond the header's; missing ones read as None
      if extra is not None or None in record.values():
        count = sum(value is not None for value in record.values()) + len(extra or ())
        raise DataError(f"{where}: {count} fields where the header has {len(reader.fieldnames)}")
      if not any(value.strip() for value in record.values()):
        continue  # a blank line
      examples.append(_record_example(record, where, with_labels, text_field, label_field))
  except csv.Error as e:
    raise DataError(f"{spec.path}:{reader.line_num}: malformed {spec.kind.upper()} ({e})") from None
  return _nonempty(examples, spec)


def _parquet_examples(
  spec: SourceSpec, with_labels: bool, text_field: str, label_field: str
) -> list[dict]:
  import pyarrow.parquet as pq  # Installed with TFDS; imported only for this kind.

  _check_file(spec)
  try:
    with _open_binary(spec.path) as f:
      schema = pq.read_schema(f)
    _check_columns(schema.names, spec, with_labels, text_field, label_field)
    columns = [text_field] + ([label_field] if with_labels else [])
    with _open_binary(spec.path) as f:
      records = pq.read_table(f, columns=columns).to_pylist()
  except DataError:
    raise
  except Exception as e:  # pyarrow raises several types for a file that is not Parquet
    raise DataError(
      f"{spec.path}: cannot read as Parquet ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
    ) from None
  examples = [
    _record_example(record, f"{spec.path} row {index + 1}", with_labels, text_field, label_field)
    for index, record in enumerate(records)
  ]
  return _nonempty(examples, spec)


def _nonempty(examples: list[dict], spec: SourceSpec) -> list[dict]:
  if not examples:
    raise DataError(f"--{spec.flag}: no examples in {spec.path}")
  return examples


class _TfdsExamples(Sequence):
  """A random-access view of a TFDS data source as example dicts (decoded on access)."""

  def __init__(self, source, with_labels: bool, text_field: str, label_field: str, where: str):
    self._source, self._with_labels = source, with_labels
    self._text_field, self._label_field, self._where = text_field, label_field, where

  def __len__(self):
    return len(self._source)

  def __getitem__(self, index):
    if isinstance(index, slice):
      return [self[i] for i in range(*index.indices(len(self)))]
    if not -len(self) <= index < len(self):
      raise IndexError(index)
    record = self._source[index % len(self)]
    text = record[self._text_field]
    example = {
      "text": text.decode("utf-8", errors="replace") if isinstance(text, bytes) else str(text),
      "where": f"{self._where} record {index}",
    }
    if self._with_labels:
      example["label"] = _parse_label(
        int(record[self._label_field]), f"{self._where} record {index}"
      )
    return example


def _tfds_examples(spec, with_labels, text_field, label_field, data_dir) -> Sequence[dict]:
  import tensorflow_datasets as tfds  # Imported here: it is slow to import and only tfds: needs it.

  name, sep, split = spec.path.rpartition("/")
  if not sep or not name or not split:
    raise DataError(f"--{spec.flag}={spec}: expected tfds:NAME/SPLIT, e.g. tfds:imdb_reviews/train")
  try:
    # `tfds.builder` finds catalog datasets and, read-only, those `pipeline.prepare` wrote.
    builder = tfds.builder(name, data_dir=data_dir)
    source = builder.as_data_source(split=split + (spec.slice or ""))
  except Exception as e:  # TFDS raises many types; the user needs the name and the reason.
    reason = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise DataError(
      f"--{spec.flag}={spec}: cannot open TFDS dataset {name!r} split {split!r}"
      f" in {data_dir or 'the default data dir'}: {reason}"
    ) from None
  features = builder.info.features
  for field in [text_field] + ([label_field] if with_labels else []):
    if field not in features:
      raise DataError(
        f"--{spec.flag}={spec}: TFDS dataset {name!r} has no field {field!r};"
        f" it has {', '.join(features.keys())}"
      )
  if len(source) == 0:
    raise DataError(f"--{spec.flag}={spec}: no examples")
  return _TfdsExamples(source, with_labels, text_field, label_field, str(spec))
