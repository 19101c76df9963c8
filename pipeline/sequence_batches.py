"""Per-sequence batches: one labelled example per row, padded to `seq_len`.

Batch: `inputs [B, T]` int32 token ids (0 = padding), `mask [B, T]` bool (real tokens),
`labels [B]` int32, `example_mask [B]` bool (False for rows that only pad the last
evaluation batch to the full batch size, so that every batch has one shape).
"""

from collections.abc import Sequence

import grain
import numpy as np

from pipeline.tokenizers import PAD, Vocabulary


class EncodeExample:
  """Maps `{"text", "label"}` to fixed-length token ids, truncating to `seq_len`."""

  def __init__(self, vocab: Vocabulary, seq_len: int):
    self.vocab, self.seq_len = vocab, seq_len

  def __call__(self, example: dict) -> dict:
    ids = self.vocab.encode(example["text"])[:self.seq_len]
    inputs = np.full(self.seq_len, PAD, np.int32)
    inputs[:len(ids)] = ids
    return {"inputs": inputs, "length": np.int32(len(ids)), "label": np.int32(example["label"])}


class StackAndPadBatch:
  """Stacks encoded examples into a batch of exactly `batch_size` rows."""

  def __init__(self, batch_size: int):
    self.batch_size = batch_size

  def __call__(self, examples: Sequence[dict]) -> dict:
    num_real = len(examples)
    seq_len = examples[0]["inputs"].shape[0]
    inputs = np.full((self.batch_size, seq_len), PAD, np.int32)
    lengths = np.zeros(self.batch_size, np.int32)
    labels = np.zeros(self.batch_size, np.int32)
    for row, example in enumerate(examples):
      inputs[row], lengths[row], labels[row] = example["inputs"], example["length"], example["label"]
    return {
        "inputs": inputs,
        "mask": np.arange(seq_len)[None, :] < lengths[:, None],
        "labels": labels,
        "example_mask": np.arange(self.batch_size) < num_real,
    }


def sequence_batches(examples: Sequence[dict], vocab: Vocabulary, *, batch_size: int, seq_len: int,
                     train: bool, seed: int, shard_index: int = 0, shard_count: int = 1,
                     num_threads: int = 2) -> grain.IterDataset:
  """Batches of this process's share of `examples`.

  Training data is shuffled with `seed` (the same on every process), reshuffled every epoch
  and repeated forever; evaluation data is read once in order, the last batch padded.
  `batch_size` is per process.
  """
  dataset = grain.MapDataset.source(examples)
  if train:
    dataset = dataset.shuffle(seed=seed).repeat()
  # Shuffled first (the same order on every process), then split by stride: the processes'
  # batch k together hold exactly the examples of a single process's batch k, so the job
  # computes the same thing on any number of processes. Each process reads only its share.
  dataset = dataset[shard_index::shard_count]
  dataset = dataset.map(EncodeExample(vocab, seq_len))
  dataset = dataset.batch(batch_size, drop_remainder=train, batch_fn=StackAndPadBatch(batch_size))
  return dataset.to_iter_dataset(grain.ReadOptions(num_threads=num_threads,
                                                   prefetch_buffer_size=max(2, 2 * num_threads)))
