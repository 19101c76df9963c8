r"""Tokenises a corpus once into a prepared dataset (`pipeline.prepared`) that every host streams.

  python -m pipeline.prepare --data='jsonl:imdb/unsup.jsonl.gz,jsonl:imdb/train.jsonl.gz' \
      --tokenizer=word --vocab_size=20000 --out=data/imdb_text
  python -m pipeline.prepare --data='jsonl:imdb/test.jsonl.gz' --vocab_from=data/imdb_text \
      --out=data/imdb_text_test
  python -m training.train --train_data=prepared:data/imdb_text --eval_data=prepared:data/imdb_text_test ...

`--data` takes the trainer's data specs (`KIND:PATH[SLICE]`, several joined by commas).
Without `--vocab_from` a first pass counts the tokens and fixes the vocabulary (as the trainer
would from the same data); a second pass encodes every example and writes the records. Both
passes tokenise in `--num_workers` processes, read `lines:` and `jsonl:` files as streams (so
the corpus need not fit in memory), and show a progress bar on a terminal. An evaluation or
test split is prepared with the training split's vocabulary and labels (`--vocab_from=DIR`, a
prepared dataset or a training run's workdir). With `--labels` records carry class labels
(per-sequence data: `LABEL TEXT` lines, a label field or column). The output is written
into a temporary directory and renamed when complete, so `--out` never holds half a dataset.

`--runner=beam` runs the same passes as an Apache Beam pipeline (`pipeline.beam_prepare`: Dataflow,
Flink, Spark, or Beam's runner on this machine) and writes the same dataset, byte for byte; see
docs/beam.md.

With `--name`, `--data_dir` and `--split=SPLIT=SPEC` it writes instead a TFDS dataset of the
text (`pipeline.tfds_corpus`), read by `--train_data=tfds:NAME/SPLIT`.
"""

import os
import sys

from absl import flags

from pipeline import sources
from pipeline.errors import DataError
from pipeline.paths import absolute
from pipeline.prepared_writer import DEFAULT_SAMPLE_MB, prepare_corpus
from pipeline.tfds_corpus import write_tfds_dataset
from pipeline.tokenizers import KINDS

_DATA = flags.DEFINE_string(
  "data", None, "KIND:PATH[SLICE] (several joined by commas): the corpus to tokenise."
)
_OUT = flags.DEFINE_string(
  "out", None, "Directory to write the prepared dataset into (must not exist, or be empty)."
)
_TOKENIZER = flags.DEFINE_enum(
  "tokenizer",
  "char",
  list(KINDS),
  "Tokenizer (as the trainer's --tokenizer); bpe and unigram are trained on the data.",
)
_VOCAB_SIZE = flags.DEFINE_integer(
  "vocab_size",
  0,
  "Keep the most frequent tokens (specials included); 0: all. bpe, unigram: the number of"
  " subwords to learn (needed).",
)
_VOCAB_FROM = flags.DEFINE_string(
  "vocab_from",
  "",
  "Use the vocabulary (and labels) of this prepared dataset or"
  " run workdir: for evaluation and test splits.",
)
_TOKENIZER_SAMPLE_MB = flags.DEFINE_float(
  "tokenizer_sample_mb",
  DEFAULT_SAMPLE_MB,
  "bpe, unigram: train the tokenizer on at most this many MB of the text (a sample fixed by the"
  " lines' hashes: the same for the same data).",
)
_LABELS = flags.DEFINE_bool("labels", False, "Read and store class labels (per-sequence data).")
_NUM_CLASSES = flags.DEFINE_integer(
  "num_classes", 0, "With --labels and class ids: the class count (0: 1 + the largest)."
)
_NUM_WORKERS = flags.DEFINE_integer(
  "num_workers",
  max(1, min(os.cpu_count() or 1, 8)),
  "Processes that tokenise (1: in this process).",
)
_SHARD_MB = flags.DEFINE_integer(
  "shard_mb",
  256,
  "MiB of the text each ArrayRecord file holds, about (records take 4 bytes a token: 1-4 times that"
  " on disk).",
)
_TEXT_FIELD = flags.DEFINE_string(
  "text_field", "text", "jsonl/csv/tsv/parquet/tfds: the text field."
)
_LABEL_FIELD = flags.DEFINE_string(
  "label_field", "label", "jsonl/csv/tsv/parquet/tfds: the label field."
)
_ENCODING = flags.DEFINE_string("encoding", "utf-8", "Text encoding of the data files.")
_UTF8_ERRORS = flags.DEFINE_enum(
  "utf8_errors", "strict", ["strict", "replace"], "Undecodable bytes: refuse or replace."
)
_RUNNER = flags.DEFINE_enum(
  "runner",
  "local",
  ["local", "beam"],
  "local: a process pool on this machine (--num_workers). beam: an Apache Beam pipeline (pip"
  ' install -e ".[beam]"), on the runner --beam_pipeline_options names; the same dataset, byte for'
  " byte.",
)
_BEAM_PIPELINE_OPTIONS = flags.DEFINE_string(
  "beam_pipeline_options",
  "",
  "With --runner=beam: Beam's options as key=value,... (e.g. runner=DataflowRunner,project=P,"
  "region=R,temp_location=gs://B/tmp). Without runner=, Beam's Python runner on this machine"
  " with --num_workers processes.",
)
_TFDS_DATA_DIR = flags.DEFINE_string(
  "tfds_data_dir", "", "For tfds: sources: the TFDS data directory."
)
# The TFDS text export.
_NAME = flags.DEFINE_string("name", None, "TFDS export: the dataset name (snake_case).")
_DATA_DIR = flags.DEFINE_string(
  "data_dir", None, "TFDS export: the TFDS data directory to write into."
)
_SPLITS = flags.DEFINE_multi_string(
  "split", [], "TFDS export: SPLIT=KIND:PATH[SLICE], once per split."
)


def _prepare_from_flags() -> str:
  if _DATA.value is None or _OUT.value is None:
    raise DataError(
      "give --data=KIND:PATH[SLICE] and --out=DIR (or, for a TFDS text dataset, --name, --data_dir"
      " and --split)"
    )
  for flag in (_NUM_WORKERS, _SHARD_MB, _TOKENIZER_SAMPLE_MB):
    if flag.value < 1:
      raise DataError(f"--{flag.name}: must be positive, got {flag.value}")
  read_options = dict(
    text_field=_TEXT_FIELD.value,
    label_field=_LABEL_FIELD.value,
    tfds_data_dir=absolute(_TFDS_DATA_DIR.value) or None,
    utf8_errors=_UTF8_ERRORS.value,
    encoding=_ENCODING.value,
  )
  out = absolute(_OUT.value)
  settings = dict(
    tokenizer=_TOKENIZER.value,
    vocab_size=_VOCAB_SIZE.value,
    vocab_from=absolute(_VOCAB_FROM.value),
    tokenizer_sample_mb=_TOKENIZER_SAMPLE_MB.value,
    with_labels=_LABELS.value,
    num_classes=_NUM_CLASSES.value,
    num_workers=_NUM_WORKERS.value,
    shard_bytes=_SHARD_MB.value << 20,
    read_options=read_options,
  )
  data = sources.with_absolute_path(_DATA.value)
  if _RUNNER.value == "beam":
    meta = _beam_driver().prepare_on_beam(
      data, out, beam_options=_BEAM_PIPELINE_OPTIONS.value, **settings
    )
  else:
    if _BEAM_PIPELINE_OPTIONS.value:
      raise DataError("--beam_pipeline_options: only with --runner=beam")
    meta = prepare_corpus(data, out, **settings)
  print(
    f"{out}: {meta['num_documents']:,} documents, {meta['num_tokens']:,} tokens, {meta['vocab_tokens']:,}"
    f" {meta['tokenizer']} tokens in the vocabulary, {len(meta['shards'])} shard(s)",
    file=sys.stderr,
  )
  return out


def _beam_driver():
  """`pipeline.beam_prepare`, imported only when asked for: Beam is an optional extra."""
  try:
    from pipeline import beam_prepare
  except ImportError as e:
    raise DataError(
      f'--runner=beam: Apache Beam is not installed ({e}); pip install -e ".[beam]"'
    ) from None
  return beam_prepare


def _tfds_from_flags() -> str:
  if not _NAME.value or not _DATA_DIR.value:
    raise DataError("a TFDS export needs --name, --data_dir and --split=SPLIT=KIND:PATH[SLICE]")
  splits = {}
  for value in _SPLITS.value:
    split, sep, spec = value.partition("=")
    if not sep or not split:
      raise DataError(f"--split={value!r}: expected SPLIT=KIND:PATH[SLICE]")
    spec = sources.parse_spec(sources.with_absolute_path(spec), "split")
    splits[split] = sources.read_examples(spec, with_labels=_LABELS.value)
  if not splits:
    raise DataError("--split: give at least one SPLIT=KIND:PATH[SLICE]")
  return write_tfds_dataset(
    _NAME.value, splits, data_dir=absolute(_DATA_DIR.value), with_labels=_LABELS.value
  )


def main(argv):
  from launch import cli

  cli.no_arguments(argv)
  with cli.one_line_errors(DataError):
    tfds_export = _NAME.value is not None or _SPLITS.value
    print(_tfds_from_flags() if tfds_export else _prepare_from_flags())


def run_main():
  """Console entry point (`rnn-prepare`)."""
  from launch import cli

  cli.run(main, __name__)


if __name__ == "__main__":
  run_main()
