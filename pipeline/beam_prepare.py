"""The Apache Beam driver of preparing (`pipeline.preparing`): `rnn-prepare --runner=beam`.

For a corpus larger than one machine: the same passes as the local driver
(`pipeline.prepared_writer`), as a Beam pipeline that Dataflow, Flink or Spark spread over many
workers, and the same bytes at the end (`tests/test_beam_prepare.py` compares them):

  sources -> read (a worker per source: documents, their offsets),
             spread over the workers ------------------------------+-> bytes per source, total
                                                                   +-> token counts (CombinePerKey)
                                                                   |     -> the top of them -> vocabulary
                                                                   |   or the subword sample -> tokenizer
                                                                   +-> first document of each label -> labels
                                                                   +-> encode (vocabulary, labels, offsets
                                                                         as side inputs) -> shard of each
                                                                         record -> GroupByKey -> write shard
  written shards -> index, vocabulary, labels, metadata -> renamed to --out

Each source (a file, a TFDS split) is read by one worker, in order: a document's place in the
corpus must be known, and a gzip file cannot be split anyway. Give a large corpus as many files.
Tokenising, the expensive part, is spread over every worker. `--beam_pipeline_options` takes
Beam's options as `key=value,...` (TFDS's convention); without `runner=` the pipeline runs here
on Beam's multi-process Python runner (FnApiRunner), one worker per `--num_workers`.
"""

import collections
import functools
import json
import logging as std_logging
import os
import re
import shutil
import socket
import tempfile

import apache_beam as beam
import numpy as np
from absl import logging
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions
from etils import epath

from pipeline import paths, prepared, preparing
from pipeline.errors import DataError
from pipeline.prepared_writer import remove_dead_temporaries, temporary_name
from pipeline.preparing import ShardIndex, ShardLayout
from pipeline.subwords import SubwordSample
from pipeline.tokenizers import SUBWORD_KINDS, Vocabulary, kept_size, split_tokens, token_totals


def pipeline_options(options: str, num_workers: int):
  """Beam's PipelineOptions of `key=value,...`; without a runner, Beam's Python runner on this
  machine in `num_workers` processes (never Prism, which Beam would first download)."""
  flags = []
  for item in filter(None, (part.strip() for part in options.split(","))):
    key, sep, value = item.partition("=")
    if not sep or not key:
      raise DataError(f"--beam_pipeline_options: {item!r} is not key=value")
    flags.append(f"--{key.removeprefix('--')}={value}")
  given = {flag.partition("=")[0] for flag in flags}
  if "--runner" not in given:
    flags.append("--runner=DirectRunner")
    if "--direct_running_mode" not in given:
      flags.append("--direct_running_mode=multi_processing")
    in_memory = "--direct_running_mode=in_memory" in flags
    if "--direct_num_workers" not in given and not in_memory:
      flags.append(f"--direct_num_workers={num_workers}")
  return PipelineOptions(flags)


def prepare_on_beam(
  data: str,
  out: str,
  *,
  tokenizer: str = "char",
  vocab_size: int = 0,
  vocab_from: str = "",
  tokenizer_sample_mb: float = preparing.DEFAULT_SAMPLE_MB,
  with_labels: bool = False,
  num_classes: int = 0,
  shard_bytes: int = 256 << 20,
  read_options: dict | None = None,
  beam_options: str = "",
  num_workers: int = 1,
  flag: str = "data",
) -> dict:
  """Writes the prepared dataset of `data` to `out` with a Beam pipeline; returns its metadata
  (the same dataset, byte for byte, as `prepared_writer.prepare_corpus` with the same arguments)."""
  read_options = read_options or {}
  preparing.check_out(out)
  specs = preparing.parse_specs(data, flag)
  vocab, labels = preparing.given_vocabulary(vocab_from, tokenizer, with_labels)
  if vocab is None and tokenizer in SUBWORD_KINDS and vocab_size <= 0:
    Vocabulary.train_subwords([], tokenizer, vocab_size)  # the one-line error about the flag
  options = pipeline_options(beam_options, num_workers)
  if logging.get_verbosity() < logging.DEBUG:
    # Beam's local runner relays every worker's start-up warnings; its errors still show.
    std_logging.getLogger("apache_beam").setLevel(std_logging.ERROR)
  out = out.rstrip("/")
  parent, name = out.rsplit("/", 1) if "/" in out else (".", out)
  if paths.is_local(out):
    remove_dead_temporaries(epath.Path(out))
  tmp = f"{parent}/{temporary_name(name, socket.gethostname(), os.getpid())}"
  settings = dict(
    vocab_size=vocab_size,
    tokenizer_sample_mb=tokenizer_sample_mb,
    specs=specs,
    vocab_from=vocab_from,
    flag=flag,
  )
  split_documents = not with_labels
  try:
    with beam.Pipeline(options=options) as p:
      documents = (
        p
        | "Sources" >> beam.Create(list(enumerate(specs)))
        | "OneWorkerEach" >> beam.Reshuffle()
        | "Read" >> beam.FlatMap(_read_source, with_labels, read_options)
        # Without this, a runner fuses what follows into the reading: one worker per source
        # would also count and tokenise all of it. Spread, each document keeps its key and
        # offset, so the bytes written are the same.
        | "SpreadDocuments" >> beam.Reshuffle()
      )
      source_bytes = (
        documents
        | "SizeOfEach" >> beam.Map(lambda d: (d[0], preparing.text_bytes(d[3]["text"])))
        | "SizePerSource" >> beam.CombinePerKey(sum)
      )
      total_bytes = source_bytes | "Sizes" >> beam.Values() | "Size" >> beam.CombineGlobally(sum)
      texts = documents | "Texts" >> beam.Map(lambda d: d[3]["text"])

      if vocab is not None:
        vocab_json = p | "GivenVocabulary" >> beam.Create([vocab.to_json()])
      elif tokenizer in SUBWORD_KINDS:
        vocab_json = (
          texts
          | "Sample" >> beam.CombineGlobally(_SampleFn(int(tokenizer_sample_mb * (1 << 20))))
          | "TrainTokenizer" >> beam.Map(_train_subwords, tokenizer, vocab_size)
        )
      else:
        counts = (
          texts
          | "Tokens" >> beam.FlatMap(lambda text: _counted(text, tokenizer))
          | "Count" >> beam.CombinePerKey(sum)
        )
        ranked = (
          counts | "Top" >> beam.combiners.Top.Of(kept_size(vocab_size), key=_rank)
          if vocab_size
          else counts | "All" >> beam.combiners.ToList()
        )
        totals = counts | "Totals" >> beam.CombineGlobally(_TotalsFn())
        vocab_json = ranked | "Vocabulary" >> beam.Map(
          _vocabulary_of_ranked,
          tokenizer,
          beam.pvalue.AsSingleton(totals),
          beam.pvalue.AsSingleton(total_bytes),
        )

      if not with_labels or labels is not None:
        labels_pc = p | "GivenLabels" >> beam.Create([labels])
      else:
        labels_pc = (
          documents
          | "LabelOf" >> beam.Map(lambda d: (d[3]["label"], (d[:2], _label_example(d[3]))))
          | "FirstOfEach" >> beam.CombinePerKey(_first)
          | "FirstDocuments" >> beam.Values()
          | "Seen" >> beam.combiners.ToList()
          | "Labels"
          >> beam.Map(preparing.labels_of_first_examples, num_classes, f"--{flag}={data}")
        )

      # Counted beside the encoding, from the documents as read: what the written shards must
      # hold, checked before anything reaches --out (a runner that dropped data fails the job).
      expected_records = (
        documents
        | "PiecesOfEach"
        >> beam.Map(lambda d: len(preparing.piece_texts(d[3]["text"], split_documents)))
        | "Pieces" >> beam.CombineGlobally(sum)
      )
      written = (
        documents
        | "Encode"
        >> beam.ParDo(
          _EncodeFn(shard_bytes, split_documents, flag),
          beam.pvalue.AsSingleton(vocab_json),
          beam.pvalue.AsSingleton(labels_pc),
          beam.pvalue.AsDict(source_bytes),
          beam.pvalue.AsSingleton(total_bytes),
        )
        | "ByShard" >> beam.GroupByKey()
        | "WriteShard" >> beam.Map(_write_shard, tmp, with_labels)
      )
      _ = (
        written
        | "Written" >> beam.combiners.ToList()
        | "Finish"
        >> beam.Map(
          _finish,
          tmp,
          out,
          beam.pvalue.AsSingleton(vocab_json),
          beam.pvalue.AsSingleton(labels_pc),
          beam.pvalue.AsSingleton(expected_records),
          settings,
        )
      )
  except DataError:
    _remove(tmp)
    raise
  except Exception as e:
    _remove(tmp)
    found = re.search(r"DataError: ([^\n]+)", str(e))
    if found:
      raise DataError(found.group(1)) from None
    raise
  except BaseException:
    _remove(tmp)
    raise
  return json.loads(paths.read_text(f"{out}/{prepared.META_FILE}"))


def _read_source(element, with_labels: bool, read_options: dict):
  """(source, document, offset in the source, example) of every document of one source."""
  source, spec = element
  offset = 0
  for document, example in enumerate(preparing.examples_of(spec, with_labels, read_options)):
    yield source, document, offset, example
    offset += preparing.text_bytes(example["text"])


def _counted(text: str, kind: str):
  return collections.Counter(split_tokens(text, kind)).items()


class _Descending(str):
  """A token that sorts after the tokens it precedes alphabetically: the top of (count, token)
  is then the most frequent tokens, ties to the alphabetically first, as `from_counts` ranks."""

  def __lt__(self, other):
    return str.__gt__(self, other)

  def __gt__(self, other):
    return str.__lt__(self, other)


def _rank(token_count):
  token, count = token_count
  return count, _Descending(token)


class _TotalsFn(beam.CombineFn):
  """(tokens counted, their UTF-8 bytes) of (token, count) pairs: `token_totals`, summed."""

  def create_accumulator(self):
    return 0, 0

  def add_input(self, accumulator, token_count):
    total, size = token_totals([token_count])
    return accumulator[0] + total, accumulator[1] + size

  def merge_accumulators(self, accumulators):
    accumulators = list(accumulators)
    return sum(a[0] for a in accumulators), sum(a[1] for a in accumulators)

  def extract_output(self, accumulator):
    return accumulator


def _vocabulary_of_ranked(ranked, kind: str, totals, total_bytes: int) -> str:
  ranked = sorted(ranked, key=lambda tc: (-tc[1], tc[0]))
  return Vocabulary.from_ranked(ranked, kind, tuple(totals), total_bytes).to_json()


class _SampleFn(beam.CombineFn):
  """`subwords.SubwordSample` of the texts (a sample depends only on the multiset of lines, so
  partial samples merge into the whole's)."""

  def __init__(self, max_bytes: int):
    self._max_bytes = max_bytes

  def create_accumulator(self):
    return SubwordSample(self._max_bytes)

  def add_input(self, sample, text):
    sample.add([text])
    return sample

  def merge_accumulators(self, samples):
    return SubwordSample.merged(list(samples), self._max_bytes)

  def extract_output(self, sample):
    return sample


def _train_subwords(sample: SubwordSample, kind: str, vocab_size: int) -> str:
  return Vocabulary.train_subwords(sample.lines(), kind, vocab_size).to_json()


def _label_example(example: dict) -> dict:
  return {"label": example["label"], **({"where": example["where"]} if "where" in example else {})}


def _first(seen):
  """The first in the corpus of (key, example) pairs."""
  return min(seen, key=lambda item: item[0])


@functools.lru_cache(maxsize=2)
def _vocabulary(vocab_json: str) -> Vocabulary:
  return Vocabulary.from_json(vocab_json)


class _EncodeFn(beam.DoFn):
  """Encodes a document's pieces: (shard, (key, record, tokens, ends document, class id))."""

  def __init__(self, shard_bytes: int, split_documents: bool, flag: str):
    self._shard_bytes, self._split_documents, self._flag = shard_bytes, split_documents, flag

  def process(self, document, vocab_json, labels, source_bytes, total_bytes):
    source, number, offset, example = document
    start = sum(size for s, size in source_bytes.items() if s < source)
    layout = ShardLayout(total_bytes, self._shard_bytes)
    pieces = list(
      preparing.pieces_of(example, source, number, start + offset, self._split_documents)
    )
    records, lengths, label_ids = preparing.encode_pieces(
      _vocabulary(vocab_json), pieces, labels, self._flag
    )
    for i, piece in enumerate(pieces):
      label = int(label_ids[i]) if label_ids is not None else None
      yield (
        layout.shard_of(piece.offset),
        (piece.key, records[i], int(lengths[i]), piece.ends_document, label),
      )


def _write_shard(grouped, tmp: str, labelled: bool) -> ShardIndex:
  """Writes one shard's records, in the corpus's order, to `tmp`; returns its index."""
  shard, records = grouped
  records = sorted(records, key=lambda r: r[0])  # held once: GroupByKey gives them unordered
  target = f"{tmp}/{preparing.part_name(shard)}"
  local = paths.is_local(tmp)
  if local:
    os.makedirs(tmp, exist_ok=True)
    path = target
  else:  # ArrayRecord writes local files only: write one, then copy it through Beam
    handle, path = tempfile.mkstemp(suffix=".array_record")
    os.close(handle)
  writer = preparing.ShardWriter(path)
  for _, record, _, _, _ in records:
    writer.write(record)
  writer.close()
  if not local:
    with open(path, "rb") as source, FileSystems.create(target) as sink:
      shutil.copyfileobj(source, sink, 16 << 20)
    os.remove(path)
  return ShardIndex(
    shard,
    np.array([r[2] for r in records], np.int32),
    np.array([r[3] for r in records], bool),
    np.array([r[4] for r in records], np.int32) if labelled else None,
  )


def _finish(
  shards, tmp: str, out: str, vocab_json: str, labels, expected_records: int, settings: dict
):
  """The index, vocabulary, labels and metadata beside the shards; then `tmp` becomes `out`."""
  written = sum(len(shard.lengths) for shard in shards)
  if written != expected_records:
    raise DataError(
      f"--out={out}: the Beam job wrote {written:,} of the corpus's {expected_records:,} records"
      " (the runner lost data); nothing was written there; run it again (on this machine,"
      " --beam_pipeline_options=direct_running_mode=in_memory runs one worker without gRPC)"
    )
  vocab = _vocabulary(vocab_json)
  meta = preparing.dataset_meta(shards, vocab, labels, **settings)
  entries = preparing.shard_entries(shards)
  FileSystems.rename(
    [f"{tmp}/{part}" for part, _ in entries], [f"{tmp}/{entry['file']}" for _, entry in entries]
  )
  files = {
    f"{prepared.INDEX_DIR}/{name}": content
    for name, content in preparing.index_files(shards, labels is not None).items()
  }
  files[prepared.VOCAB_FILE] = vocab.to_json().encode("utf-8")
  if labels is not None:
    files[prepared.LABELS_FILE] = labels.to_json().encode("utf-8")
  for name, content in files.items():
    _write(f"{tmp}/{name}", content)
  if paths.is_local(out):
    _write(f"{tmp}/{prepared.META_FILE}", preparing.meta_json(meta).encode("utf-8"))
    if os.path.isdir(out):
      os.rmdir(out)  # empty (checked before the pipeline)
    os.rename(tmp, out)
  else:
    # No directory rename on object stores: copy everything, then the metadata, which makes it
    # a dataset (`PreparedDataset` refuses a directory without it).
    names = [entry["file"] for _, entry in entries] + list(files)
    FileSystems.copy([f"{tmp}/{n}" for n in names], [f"{out}/{n}" for n in names])
    _write(f"{out}/{prepared.META_FILE}", preparing.meta_json(meta).encode("utf-8"))
    FileSystems.delete([tmp])
  logging.info("%s: %d records in %d shard(s)", out, meta["num_records"], len(entries))


def _write(path: str, content: bytes) -> None:
  if paths.is_local(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
  with FileSystems.create(path) as f:
    f.write(content)


def _remove(tmp: str) -> None:
  """Removes what a failed pipeline wrote (nothing at `--out`: it is renamed there last)."""
  if paths.is_local(tmp):
    shutil.rmtree(tmp, ignore_errors=True)
    return
  try:
    FileSystems.delete([tmp])
  except Exception as e:  # (best effort: the job's own error is the one to report)
    logging.warning("%s: could not remove what the failed job wrote (%s)", tmp, e)
