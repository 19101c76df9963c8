"""Wires the pipeline to a run: reads the data, fixes the vocabulary, makes the datasets.

The vocabulary (and number of classes) is built from the training data on the first run and
saved in the workdir; a resumed run loads it, so token ids never shift under a checkpoint.
"""

import dataclasses
import os
from collections.abc import Callable, Iterator, Sequence

import jax
import numpy as np
from absl import logging

from pipeline import batch_plans, sources
from pipeline.errors import DataError
from pipeline.labels import Labels
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


def prepare_data(config: Config, workdir: str) -> RunData:
  process_index, process_count = jax.process_index(), jax.process_count()
  train_spec, eval_spec = config.data_specs()
  with_labels = config.task == "classify"
  read = lambda spec, flag: sources.read_joined(
      spec, flag, with_labels=with_labels, text_field=config.text_field,
      label_field=config.label_field, tfds_data_dir=config.tfds_data_dir or None,
      utf8_errors=config.utf8_errors, encoding=config.encoding)
  train_examples = read(train_spec, "train_data")
  if eval_spec.startswith(sources.HOLDOUT):
    train_examples, eval_examples = sources.holdout_split(train_examples, eval_spec, "eval_data")
  else:
    eval_examples = read(eval_spec, "eval_data") if eval_spec else None
  test_examples = read(config.test_data, "test_data") if config.test_data else None
  vocab = _load_or_build_vocabulary(train_examples, config, os.path.join(workdir, VOCAB_FILE))

  if config.task == "lm":
    train_tokens = token_stream(train_examples, vocab)
    lm_args = dict(batch_size=config.batch_size, seq_len=config.seq_len, carry_state=config.carry_state,
                   shard_index=process_index, shard_count=process_count, num_threads=config.data_workers)
    train = lambda start=0: iter(window_batches(train_tokens, train=True, what="--train_data", start=start,
                                                **lm_args))

    def held_out(examples, flag):
      if examples is None:
        return None
      tokens = token_stream(examples, vocab)
      batches = lambda: iter(window_batches(tokens, train=False, what=f"--{flag}", **lm_args))
      batches()  # Fail now, not at the first evaluation, if the stream cannot fill the lanes.
      return batches

    return RunData(vocab, 0, train, held_out(eval_examples, "eval_data"), eval_spec,
                   test_batches=held_out(test_examples, "test_data"))

  labels = _load_or_fix_labels(train_examples, config, train_spec, os.path.join(workdir, LABELS_FILE))
  num_classes = labels.num_classes
  train_labels = labels.ids(train_examples, train_spec)  # a label the run does not know fails here
  if len(train_examples) < config.batch_size:
    raise DataError(f"--train_data={train_spec}: {len(train_examples)} examples cannot fill one"
                    f" batch of --batch_size={config.batch_size}")

  train_ids = encode_all(train_examples, vocab)
  train_lengths = np.array([len(ids) for ids in train_ids])
  boundaries, width = [], config.seq_len  # only bucketing has boundaries
  if config.batching == "bucket":
    boundaries = list(config.bucket_boundaries) or batch_plans.optimal_boundaries(
        train_lengths, batch_plans.MAX_BUCKETS, config.seq_len)
    width = boundaries[-1]
  truncated = int((train_lengths > width).sum())
  if truncated:
    logging.warning("%d of %d training sequences are longer than %d tokens and are truncated to it",
                    truncated, len(train_ids), width)

  def batches(token_ids, labels, train: bool):
    lengths = np.array([len(ids) for ids in token_ids])
    plan_for_epoch, segments = make_plan_function(
        lengths, batching=config.batching, batch_size=config.batch_size, seq_len=config.seq_len,
        seed=config.seed, shuffle=train, boundaries=boundaries, batch_tokens=config.batch_tokens,
        max_segments=config.max_segments, row_multiple=jax.device_count())
    return lambda start=0: iter(sequence_batches(
        token_ids, labels, plan_for_epoch, train=train, segments_per_row=segments, shard_index=process_index,
        shard_count=process_count, num_threads=config.data_workers, start=start))

  def held_out(examples, spec):
    if examples is None:
      return None
    return batches(encode_all(examples, vocab), labels.ids(examples, spec), train=False)

  return RunData(vocab, num_classes, batches(train_ids, train_labels, train=True),
                 held_out(eval_examples, eval_spec), eval_spec, truncated,
                 test_batches=held_out(test_examples, config.test_data))


def _load_or_build_vocabulary(examples: Sequence[dict], config: Config, path: str) -> Vocabulary:
  if os.path.exists(path):
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
  if os.path.exists(path):
    return Labels.load(path)
  labels = Labels.from_training(examples, config.num_classes, f"--train_data={spec}")
  if jax.process_index() == 0:
    labels.save(path)
  return labels
