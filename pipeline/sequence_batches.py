"""Per-sequence batches from a batch plan (`pipeline.batch_plans`): pad, bucket or pack.

Batch (B rows, W tokens wide, at most S sequences per row; S = 1 unless packing):
- `inputs [B, W]` int32 token ids (0 = padding), `mask [B, W]` bool (real tokens);
- `segment_ids [B, W]` int32: 1..S for the sequence a token belongs to, 0 for padding (the
  recurrent state restarts where the segment id changes);
- `segment_ends [B, S]` int32: the position of each sequence's last token;
- `labels [B, S]` int32 and `example_mask [B, S]` bool (False where a slot holds no sequence).

Every process computes the same plan and builds only its rows of each global batch, so all
processes agree on every batch's shape. To plan, every process needs every example's length
(a prepared dataset's memory-mapped index, or in-memory sources tokenised at start-up); the
batches themselves are built lazily, in worker threads, reading only this process's rows.
"""

import concurrent.futures
import dataclasses
import sys
import threading
from collections.abc import Callable, Sequence

import grain
import numpy as np

from pipeline import batch_plans
from pipeline.errors import DataError
from pipeline.prepared import InMemorySequences
from pipeline.tokenizers import UNK, Vocabulary


def encode_all(examples: Sequence[dict], vocab: Vocabulary) -> list[np.ndarray]:
  """Token ids of every example; an example with no tokens is read as one `<unk>`."""
  encoded = []
  for example in examples:
    ids = vocab.encode(example["text"])
    encoded.append(ids if len(ids) else np.array([UNK], np.int32))
  return encoded


@dataclasses.dataclass(frozen=True)
class EpochPlanner:
  """epoch -> that epoch's plan, and how many batches every epoch has where that is known
  without planning (pad, bucket; a packing plan's size changes with its shuffle)."""

  plan: Callable[[int], list]
  batches_per_epoch: int | None = None

  def __call__(self, epoch: int) -> list:
    return self.plan(epoch)


class PlannedBatches:
  """Random access to the batches of consecutive epochs' plans (this process's rows).

  `plan_for_epoch`: an `EpochPlanner` or any epoch -> plan function. Where the epoch size is
  known, batch `index` is found by division; else by planning every earlier epoch once (a run
  resumed far in pays that at its start).
  """

  def __init__(
    self,
    sequences,
    labels: np.ndarray,
    plan_for_epoch: Callable[[int], list],
    *,
    repeat: bool,
    segments_per_row: int,
    shard_index: int,
    shard_count: int,
  ):
    # (a list of token-id arrays is read as in-memory sequences)
    self._sequences = InMemorySequences(sequences) if isinstance(sequences, list) else sequences
    self._labels = labels
    self._plan_for_epoch, self._repeat = plan_for_epoch, repeat
    self._segments = segments_per_row
    self._shard_index, self._shard_count = shard_index, shard_count
    self._lock = threading.Lock()
    self._plans: dict[int, concurrent.futures.Future] = {}
    self._epoch_starts = [0]  # index of each planned epoch's first batch
    self._epoch_size = (
      plan_for_epoch.batches_per_epoch if isinstance(plan_for_epoch, EpochPlanner) else None
    )
    # Training plans the next epoch in the background while this one is read, so the trainer
    # does not wait at an epoch boundary (a packing plan takes about 0.05 s per IMDB epoch).
    self._planner = (
      concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="plan-ahead") if repeat else None
    )

  def __len__(self):
    return sys.maxsize if self._repeat else len(self._plan(0))

  def _planned(self, epoch: int) -> concurrent.futures.Future:
    if self._planner is not None:
      return self._planner.submit(self._plan_for_epoch, epoch)
    done = concurrent.futures.Future()
    done.set_result(self._plan_for_epoch(epoch))
    return done

  def _plan(self, epoch: int) -> list:
    with self._lock:  # Grain reads from several threads.
      for wanted in (epoch, epoch + 1) if self._repeat else (epoch,):
        if wanted not in self._plans:
          self._plans[wanted] = self._planned(wanted)
      for old in [e for e in self._plans if e < epoch - 1]:
        del self._plans[old]  # keep memory flat over long runs
      plan = self._plans[epoch]
    return plan.result()

  def _locate(self, index: int) -> tuple[int, int]:
    if self._epoch_size:
      return divmod(index, self._epoch_size)
    epoch = 0
    while True:
      with self._lock:
        known = len(self._epoch_starts) > epoch + 1
        start = self._epoch_starts[epoch]
      if not known:
        size = len(self._plan(epoch))
        if size == 0:
          raise DataError("a batch plan came out empty")
        with self._lock:
          if len(self._epoch_starts) == epoch + 1:
            self._epoch_starts.append(start + size)
      with self._lock:
        end = self._epoch_starts[epoch + 1]
      if index < end:
        return epoch, index - start
      epoch += 1

  def __getitem__(self, index: int) -> dict:
    if not self._repeat and index >= len(self):
      raise IndexError(index)
    epoch, position = self._locate(index)
    planned = self._plan(epoch)[position]
    return self._build(planned.width, planned.rows[self._shard_index :: self._shard_count])

  def _build(self, width: int, rows: Sequence[tuple[int, ...]]) -> dict:
    size, segments = len(rows), self._segments
    inputs = np.zeros((size, width), np.int32)
    segment_ids = np.zeros((size, width), np.int32)
    segment_ends = np.zeros((size, segments), np.int32)
    labels = np.zeros((size, segments), np.int32)
    example_mask = np.zeros((size, segments), bool)
    # One batched read
    fetched = iter(self._sequences.get([example for row in rows for example in row]))
    for r, row in enumerate(rows):
      position = 0
      for s, example in enumerate(row):
        ids = next(fetched)[: width - position]  # truncated to what fits
        inputs[r, position : position + len(ids)] = ids
        segment_ids[r, position : position + len(ids)] = s + 1
        position += len(ids)
        segment_ends[r, s], labels[r, s], example_mask[r, s] = (
          position - 1,
          self._labels[example],
          True,
        )
    return {
      "inputs": inputs,
      "mask": segment_ids > 0,
      "segment_ids": segment_ids,
      "segment_ends": segment_ends,
      "labels": labels,
      "example_mask": example_mask,
    }


def make_plan_function(
  lengths: np.ndarray,
  *,
  batching: str,
  batch_size: int,
  seq_len: int,
  seed: int,
  shuffle: bool,
  boundaries: list[int],
  batch_tokens: int,
  max_segments: int,
  row_multiple: int,
) -> tuple[EpochPlanner, int]:
  """(epoch -> plan, sequences per row) for a batching mode."""
  if batching == "pad":
    return EpochPlanner(
      lambda epoch: batch_plans.pad_plan(
        len(lengths),
        batch_size=batch_size,
        seq_len=seq_len,
        seed=seed,
        epoch=epoch,
        shuffle=shuffle,
      ),
      batch_plans.pad_plan_size(len(lengths), batch_size),
    ), 1
  if batching == "bucket":
    sizes = batch_plans.bucket_batch_sizes(boundaries, batch_size, batch_tokens, row_multiple)
    return EpochPlanner(
      lambda epoch: batch_plans.bucket_plan(
        lengths, boundaries=boundaries, batch_sizes=sizes, seed=seed, epoch=epoch, shuffle=shuffle
      ),
      batch_plans.bucket_plan_size(lengths, boundaries=boundaries, batch_sizes=sizes),
    ), 1
  if batching == "pack":
    return EpochPlanner(
      lambda epoch: batch_plans.pack_plan(
        lengths,
        batch_size=batch_size,
        seq_len=seq_len,
        max_segments=max_segments,
        seed=seed,
        epoch=epoch,
        shuffle=shuffle,
      )
    ), max_segments
  raise DataError(
    f"--batching={batching!r}: unknown; expected one of {', '.join(batch_plans.BATCHINGS)}"
  )


def sequence_batches(
  sequences,
  labels: np.ndarray,
  plan_for_epoch,
  *,
  train: bool,
  segments_per_row: int,
  shard_index: int = 0,
  shard_count: int = 1,
  num_threads: int = 2,
  start: int = 0,
) -> grain.IterDataset:
  """This process's batches: training repeats epochs (each planned anew), evaluation is one epoch.

  `sequences`: the examples' token ids, read only for this process's rows
  (`pipeline.prepared.InMemorySequences` or `PreparedSequences`).

  `start`: the global index of the first batch (a resumed run's step). The plan fixes every
  global batch, so the position is the same number for any process count (elastic resume).
  """
  source = PlannedBatches(
    sequences,
    labels,
    plan_for_epoch,
    repeat=train,
    segments_per_row=segments_per_row,
    shard_index=shard_index,
    shard_count=shard_count,
  )
  return grain.MapDataset.source(source)[start:].to_iter_dataset(
    grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=max(2, 2 * num_threads))
  )
