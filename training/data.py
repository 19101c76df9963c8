"""Wires the pipeline to a run: reads the data, fixes the vocabulary, makes the datasets.

Training data is a prepared dataset (`prepared:DIR`: only its index is read at start-up, and
each process reads the records of its own rows as it goes) or any other source, read and
tokenised in memory at start-up (small data). The vocabulary (and the class names) come from
the prepared dataset, or are built from the in-memory training data on the first run; either
way they are saved in the workdir and a resumed run loads them, so token ids never shift under a
checkpoint. Dev and test splits may be prepared (with the training data's vocabulary) or not.
"""

import dataclasses
import os
from collections.abc import Callable, Iterator, Sequence

import jax
import numpy as np
from absl import logging

from pipeline import batch_plans, paths, sources
from pipeline.errors import DataError
from pipeline.labels import Labels
from pipeline.prepared import InMemorySequences, PreparedDataset
from pipeline.sequence_batches import encode_all, make_plan_function, sequence_batches
from pipeline.token_windows import token_stream, window_batches
from pipeline.tokenizers import Vocabulary
from training.config import Config, ConfigError

VOCAB_FILE = "vocab.json"
LABELS_FILE = "labels.json"


@dataclasses.dataclass
class RunData:
  vocab: Vocabulary
  num_classes: int  # 0 for per-token training
  train_batches: Callable[[int], Iterator[dict]]  # start (global batch index) -> this process's batches
  eval_batches: Callable[[], Iterator[dict]] | None  # one pass over this process's share of the dev split
  eval_spec: str
  truncated_examples: int = 0  # training sequences cut to the row width (classify)
  test_batches: Callable[[], Iterator[dict]] | None = None  # the test split, read once at the end


@dataclasses.dataclass
class _Split:
  """One split, however it was read: per-token data as a token stream, per-sequence data as
  random-access sequences and their labels (in memory, or a prepared dataset's records)."""
  stream: object = None
  sequences: object = None
  labels: np.ndarray | None = None


def prepare_data(config: Config, workdir: str) -> RunData:
  process_index, process_count = jax.process_index(), jax.process_count()
  train_spec, eval_spec = config.data_specs()
  read_training = _prepared_training if is_prepared(train_spec) else _in_memory_training
  train, holdout, vocab, labels = read_training(config, workdir, train_spec, eval_spec)
  held_out = {"eval_data": holdout or _held_out_split(eval_spec, "eval_data", config, vocab, labels),
              "test_data": _held_out_split(config.test_data, "test_data", config, vocab, labels)}

  if config.task == "lm":
    lm_args = dict(batch_size=config.batch_size, seq_len=config.seq_len, carry_state=config.carry_state,
                   shard_index=process_index, shard_count=process_count, num_threads=config.data_workers)
    train_batches = lambda start=0: iter(window_batches(train.stream, train=True, what="--train_data",
                                                        start=start, **lm_args))

    def lm_batches(split, flag):
      if split is None:
        return None
      batches = lambda: iter(window_batches(split.stream, train=False, what=f"--{flag}", **lm_args))
      batches()  # Fail now, not at the first evaluation, if the stream cannot fill the lanes.
      return batches

    return RunData(vocab, 0, train_batches, lm_batches(held_out["eval_data"], "eval_data"), eval_spec,
                   test_batches=lm_batches(held_out["test_data"], "test_data"))

  if len(train.sequences) < config.batch_size:
    raise DataError(f"--train_data={train_spec}: {len(train.sequences)} examples cannot fill one"
                    f" batch of --batch_size={config.batch_size}")
  train_lengths = train.sequences.lengths
  boundaries, width = [], config.seq_len  # only bucketing has boundaries
  if config.batching == "bucket":
    boundaries = list(config.bucket_boundaries) or batch_plans.optimal_boundaries(
        train_lengths, batch_plans.MAX_BUCKETS, config.seq_len)
    width = boundaries[-1]
  truncated = int((train_lengths > width).sum())
  if truncated:
    logging.warning("%d of %d training sequences are longer than %d tokens and are truncated to it",
                    truncated, len(train_lengths), width)

  def batches(split: _Split | None, train: bool):
    if split is None:
      return None
    plan_for_epoch, segments = make_plan_function(
        split.sequences.lengths, batching=config.batching, batch_size=config.batch_size, seq_len=config.seq_len,
        seed=config.seed, shuffle=train, boundaries=boundaries, batch_tokens=config.batch_tokens,
        max_segments=config.max_segments, row_multiple=jax.device_count())
    return lambda start=0: iter(sequence_batches(
        split.sequences, split.labels, plan_for_epoch, train=train, segments_per_row=segments,
        shard_index=process_index, shard_count=process_count, num_threads=config.data_workers, start=start))

  return RunData(vocab, labels.num_classes, batches(train, train=True), batches(held_out["eval_data"], False),
                 eval_spec, truncated, test_batches=batches(held_out["test_data"], False))


def is_prepared(spec: str) -> bool:
  return spec.startswith(sources.PREPARED + ":")


def _read_examples(config: Config, spec: str, flag: str) -> Sequence[dict]:
  return sources.read_joined(spec, flag, with_labels=config.task == "classify", text_field=config.text_field,
                             label_field=config.label_field, tfds_data_dir=config.tfds_data_dir or None,
                             utf8_errors=config.utf8_errors, encoding=config.encoding)


def _in_memory_split(examples: Sequence[dict], spec: str, config: Config, vocab: Vocabulary,
                     labels: Labels | None) -> _Split:
  if config.task == "lm":
    return _Split(stream=token_stream(examples, vocab))
  ids = labels.ids(examples, spec)  # a label the run does not know fails here
  return _Split(sequences=InMemorySequences(encode_all(examples, vocab)), labels=ids)


def _view_split(view, config: Config) -> _Split:
  if config.task == "lm":
    return _Split(stream=view.stream())
  return _Split(sequences=view.sequences(), labels=view.label_ids())


def _in_memory_training(config: Config, workdir: str, train_spec: str, eval_spec: str):
  """Reads and tokenises the training sources at start-up (small data); the vocabulary and
  labels are fixed from the training examples on the first run. Returns (train split, holdout
  dev split or None, vocabulary, labels)."""
  examples = _read_examples(config, train_spec, "train_data")
  dev = None
  if eval_spec.startswith(sources.HOLDOUT):
    examples, dev = sources.holdout_split(examples, eval_spec, "eval_data")
  vocab = _load_or_build_vocabulary(examples, config, os.path.join(workdir, VOCAB_FILE))
  labels = None
  if config.task == "classify":
    labels = _load_or_fix_labels(examples, config, train_spec, os.path.join(workdir, LABELS_FILE))
  train = _in_memory_split(examples, train_spec, config, vocab, labels)
  return train, dev and _in_memory_split(dev, eval_spec, config, vocab, labels), vocab, labels


def _open_prepared(spec: str, flag: str) -> tuple[PreparedDataset, object]:
  parsed = sources.parse_spec(spec, flag)
  if "," in spec:
    raise DataError(f"--{flag}={spec}: a prepared dataset cannot be joined with other specs; prepare them"
                    " together (python -m pipeline.prepare --data=SPEC,SPEC)")
  dataset = PreparedDataset(parsed.path, f"--{flag}")
  return dataset, dataset.view(parsed.slice, spec)


def _prepared_training(config: Config, workdir: str, train_spec: str, eval_spec: str):
  """Reads a prepared dataset's index (its records are read batch by batch, each process its
  own rows); the run's vocabulary and labels are the dataset's. Returns what
  `_in_memory_training` does."""
  dataset, view = _open_prepared(train_spec, "train_data")
  dev = None
  if eval_spec.startswith(sources.HOLDOUT):
    # Held out by document, like the in-memory sources' examples (the same fixed draw).
    documents = _documents_of(dataset, view)
    held = sources.holdout_mask(len(documents), eval_spec, "eval_data")
    view, dev = dataset.documents_view(documents[~held]), dataset.documents_view(documents[held])
  vocab = _adopt_vocabulary(dataset.vocab, os.path.join(workdir, VOCAB_FILE), train_spec)
  labels = None
  if config.task == "classify":
    labels = _adopt_labels(view.dataset, config, os.path.join(workdir, LABELS_FILE), train_spec)
  return _view_split(view, config), dev and _view_split(dev, config), vocab, labels


def _documents_of(dataset: PreparedDataset, view) -> np.ndarray:
  """The documents (indices) whose records a view holds."""
  starts = dataset.document_records()
  return np.unique(np.searchsorted(starts, view.records, side="right") - 1)


def _held_out_split(spec: str, flag: str, config: Config, vocab: Vocabulary, labels: Labels | None) -> _Split | None:
  """A dev or test split, prepared or read in memory, in the run's vocabulary and labels."""
  if not spec:
    return None
  if not is_prepared(spec):
    return _in_memory_split(_read_examples(config, spec, flag), spec, config, vocab, labels)
  dataset, view = _open_prepared(spec, flag)
  if dataset.vocab != vocab:
    raise DataError(f"--{flag}={spec}: prepared with another vocabulary than the run's; prepare it with"
                    " --vocab_from=THE_TRAINING_DATASET (or this run's workdir)")
  if labels is not None and dataset.labelled and dataset.labels.names != labels.names:
    raise DataError(f"--{flag}={spec}: its class names {dataset.labels.names} differ from the run's"
                    f" {labels.names}; prepare it with --vocab_from=THE_TRAINING_DATASET")
  if labels is not None and dataset.labelled and dataset.labels.num_classes > labels.num_classes:
    raise DataError(f"--{flag}={spec}: {dataset.labels.num_classes} classes, more than the run's {labels.num_classes}")
  return _view_split(view, config)


def _adopt_vocabulary(vocab: Vocabulary, path: str, spec: str) -> Vocabulary:
  """The prepared dataset's vocabulary becomes the run's (saved on the first run); a run that
  already has one (resumed, or from --init_from) must match it."""
  if paths.exists(path):
    saved = Vocabulary.load(path)
    if saved != vocab:
      raise DataError(f"--train_data={spec}: prepared with another vocabulary than the run's ({path}: its first"
                      " run's, or the --init_from language model's); prepare the data with --vocab_from=THAT_DIR")
    return saved
  if jax.process_index() == 0:
    vocab.save(path)
  return vocab


def _adopt_labels(dataset: PreparedDataset, config: Config, path: str, spec: str) -> Labels:
  if not dataset.labelled:
    raise DataError(f"--train_data={spec}: prepared without labels; prepare it again with --labels for"
                    " --task=classify")
  labels = dataset.labels
  if config.num_classes and config.num_classes != labels.num_classes:
    raise DataError(f"--num_classes={config.num_classes}: --train_data={spec} was prepared with"
                    f" {labels.num_classes} classes (pipeline.prepare --num_classes)")
  if paths.exists(path):
    saved = Labels.load(path)
    if saved != labels:
      raise DataError(f"--train_data={spec}: its labels differ from the run's ({path}); use a new --workdir")
    return saved
  if jax.process_index() == 0:
    labels.save(path)
  return labels


def adopt_prepared_tokenizer(config: Config) -> Config:
  """With `--train_data=prepared:DIR`, the dataset fixes the tokenizer and vocabulary size (the
  flags for them are overridden, as `--init_from` does with a language model's)."""
  train_spec = config.train_data  # (the embedded default is never a prepared dataset)
  if not is_prepared(train_spec) or config.init_from:
    return config
  dataset, _ = _open_prepared(train_spec, "train_data")
  adopted = {"tokenizer": dataset.tokenizer, "vocab_size": int(dataset.meta["vocab_size"])}
  changed = {name: value for name, value in adopted.items() if getattr(config, name) != value}
  if changed:
    logging.info("From --train_data: %s", "  ".join(f"--{k}={v}" for k, v in changed.items()))
  return dataclasses.replace(config, **adopted)


def _load_or_build_vocabulary(examples: Sequence[dict], config: Config, path: str) -> Vocabulary:
  if paths.exists(path):
    vocab = Vocabulary.load(path)
    if vocab.kind != config.tokenizer:
      raise ConfigError(f"--tokenizer={config.tokenizer} differs from the {vocab.kind!r} vocabulary"
                        f" saved in {path}; resume with the same flags or use a new --workdir")
    return vocab
  vocab = Vocabulary.build((example["text"] for example in examples), config.tokenizer,
                           config.vocab_size or None)
  if jax.process_index() == 0:
    vocab.save(path)
  return vocab


def _load_or_fix_labels(examples: Sequence[dict], config: Config, spec: str, path: str) -> Labels:
  """The run's labels: fixed from the training data on the first run, then loaded (so that a
  resumed run, prediction and export map names to the same ids)."""
  if paths.exists(path):
    return Labels.load(path)
  labels = Labels.from_training(examples, config.num_classes, f"--train_data={spec}")
  if jax.process_index() == 0:
    labels.save(path)
  return labels
