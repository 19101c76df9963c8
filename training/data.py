"""Wires the pipeline to a run: reads the data, fixes the vocabulary, makes the datasets.

The vocabulary (and number of classes) is built from the training data on the first run and
saved in the workdir; a resumed run loads it, so token ids never shift under a checkpoint.
"""

import dataclasses
import math
import os
from collections.abc import Callable, Iterator, Sequence

import jax
import numpy as np

from pipeline import sources
from pipeline.errors import DataError
from pipeline.sequence_batches import sequence_batches
from pipeline.token_windows import token_stream, window_batches
from pipeline.tokenizers import Vocabulary
from training.config import Config, ConfigError

VOCAB_FILE = "vocab.json"


@dataclasses.dataclass
class RunData:
  vocab: Vocabulary
  num_classes: int  # 0 for per-token training
  train_batches: Callable[[], object]  # a fresh, checkpointable Grain iterator
  eval_batches: Callable[[], Iterator[dict]] | None  # one pass over this process's eval share
  eval_spec: str


def prepare_data(config: Config, workdir: str) -> RunData:
  process_index, process_count = jax.process_index(), jax.process_count()
  train_spec, eval_spec = config.data_specs()
  with_labels = config.task == "classify"
  read = lambda spec, flag: sources.read_examples(
      sources.parse_spec(spec, flag), with_labels=with_labels, text_field=config.text_field,
      label_field=config.label_field, tfds_data_dir=config.tfds_data_dir or None,
      utf8_errors=config.utf8_errors)
  train_examples = read(train_spec, "train_data")
  eval_examples = read(eval_spec, "eval_data") if eval_spec else None
  vocab = _load_or_build_vocabulary(train_examples, config, os.path.join(workdir, VOCAB_FILE))
  local_batch = config.batch_size // process_count
  common = dict(batch_size=local_batch, seq_len=config.seq_len, shard_index=process_index,
                shard_count=process_count, num_threads=config.data_workers)

  if config.task == "lm":
    train_tokens = token_stream(train_examples, vocab)
    eval_tokens = token_stream(eval_examples, vocab) if eval_examples is not None else None
    lm_args = dict(common, batch_size=config.batch_size, carry_state=config.carry_state)
    train = lambda: iter(window_batches(train_tokens, train=True, what="--train_data", **lm_args))
    evaluate = None if eval_tokens is None else (
        lambda: iter(window_batches(eval_tokens, train=False, what="--eval_data", **lm_args)))
    # Fail now, not at the first evaluation, if the eval stream cannot fill the lanes.
    if evaluate is not None:
      evaluate()
    return RunData(vocab, 0, train, evaluate, eval_spec)

  num_classes = config.num_classes or 1 + max(example["label"] for example in train_examples)
  if num_classes < 2:
    raise DataError(f"--train_data={train_spec}: every label is 0; a classifier needs 2 or more classes")
  for examples in (train_examples, eval_examples or []):
    bad = next((e for e in examples if e["label"] >= num_classes), None)
    if bad is not None:
      raise DataError(f"{bad['where']}: label {bad['label']} is out of range for {num_classes} classes"
                      f" ({'--num_classes' if config.num_classes else 'inferred from --train_data'})")
  if len(train_examples) < config.batch_size:
    raise DataError(f"--train_data={train_spec}: {len(train_examples)} examples cannot fill one"
                    f" batch of --batch_size={config.batch_size}")
  train = lambda: iter(sequence_batches(train_examples, vocab, train=True, seed=config.seed, **common))
  evaluate = None
  if eval_examples is not None:
    # Every process must run the same number of eval steps (they meet in collectives), so
    # a process whose share is one example shorter pads with an empty batch.
    num_batches = math.ceil(math.ceil(len(eval_examples) / process_count) / local_batch)
    evaluate = lambda: _exactly(num_batches, iter(sequence_batches(
        eval_examples, vocab, train=False, seed=config.seed, **common)))
  return RunData(vocab, num_classes, train, evaluate, eval_spec)


def _exactly(count: int, batches: Iterator[dict]) -> Iterator[dict]:
  """`count` batches: those of `batches`, then all-padding copies of the last one."""
  last = None
  for _ in range(count):
    last = next(batches, None) or {**last, "example_mask": np.zeros_like(last["example_mask"])}
    yield last


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
