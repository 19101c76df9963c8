"""Which examples go into which batch, decided for the whole job before any is read.

A plan is a list of global batches, each a row length (`width`) and rows of example indices.
Plans depend only on the examples' lengths, the seed and the epoch, so every process computes
the same plan and then builds only its rows: all processes agree on every batch's shape.

- `pad_plan`: rows of one example each, every batch `seq_len` wide.
- `bucket_plan`: examples grouped by length into buckets with fixed boundaries; each batch is
  as wide as its bucket's boundary. Every example appears exactly once per epoch (a bucket's
  last batch is filled up with empty rows rather than dropped).
- `pack_plan`: several examples share a row (first-fit decreasing within shuffled windows), each
  row `seq_len` wide and holding at most `max_segments` examples.
"""

import dataclasses

import numpy as np

BATCHINGS = ("pad", "bucket", "pack")  # the modes, one plan function each
MAX_BUCKETS = 8


@dataclasses.dataclass(frozen=True)
class PlannedBatch:
  width: int  # tokens per row
  rows: tuple[tuple[int, ...], ...]  # example indices per row; () is an empty (padding) row


def optimal_boundaries(lengths: np.ndarray, max_buckets: int, max_length: int) -> list[int]:
  """Bucket boundaries that minimise padding when each example is padded to its bucket's.

  Exact dynamic programming over the distinct lengths (after truncation to `max_length`):
  cost(bucket of lengths in (a, b]) = count * b - sum. At most `max_buckets` boundaries, the
  last one the longest length.
  """
  clipped = np.minimum(np.maximum(lengths, 1), max_length)
  values, counts = np.unique(clipped, return_counts=True)
  n = len(values)
  if n <= max_buckets:
    return [int(v) for v in values]
  prefix_count = np.concatenate([[0], np.cumsum(counts)])
  prefix_sum = np.concatenate([[0], np.cumsum(counts * values)])
  # cost[i, j]: the bucket holding distinct values i..j-1 (boundary values[j-1]).
  i, j = np.meshgrid(np.arange(n + 1), np.arange(n + 1), indexing="ij")
  valid = j > i
  top = values[np.clip(j - 1, 0, n - 1)]
  cost = np.where(
    valid, (prefix_count[j] - prefix_count[i]) * top - (prefix_sum[j] - prefix_sum[i]), np.inf
  )
  best = np.full((max_buckets + 1, n + 1), np.inf)
  best[0, 0] = 0
  choice = np.zeros((max_buckets + 1, n + 1), int)
  for k in range(1, max_buckets + 1):
    totals = best[k - 1][:, None] + cost  # [i, j]
    choice[k] = np.argmin(totals, axis=0)
    best[k] = totals[choice[k], np.arange(n + 1)]
  k = int(np.argmin(best[:, n]))
  boundaries, j = [], n
  while j > 0:
    boundaries.append(int(values[j - 1]))
    j, k = choice[k, j], k - 1
  return sorted(boundaries)


def _shuffled(count: int, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
  order = np.arange(count)
  if shuffle:
    np.random.default_rng([seed, epoch]).shuffle(order)
  return order


def pad_plan(
  num_examples: int, *, batch_size: int, seq_len: int, seed: int, epoch: int, shuffle: bool
) -> list[PlannedBatch]:
  order = _shuffled(num_examples, seed, epoch, shuffle)
  return [
    PlannedBatch(
      seq_len, _fill(tuple((int(i),) for i in order[start : start + batch_size]), batch_size)
    )
    for start in range(0, num_examples, batch_size)
  ]


def _fill(rows: tuple, batch_size: int) -> tuple:
  return rows + ((),) * (batch_size - len(rows))


def bucket_batch_sizes(
  boundaries: list[int], batch_size: int, batch_tokens: int, row_multiple: int
) -> list[int]:
  """Rows per batch for each bucket: `batch_size`, or as many as `batch_tokens` allows
  (a multiple of `row_multiple`, so that batches split evenly over devices and processes)."""
  if not batch_tokens:
    return [batch_size] * len(boundaries)
  return [
    max(row_multiple, (batch_tokens // width) // row_multiple * row_multiple)
    for width in boundaries
  ]


def pad_plan_size(num_examples: int, batch_size: int) -> int:
  """Batches in every epoch's `pad_plan`."""
  return -(-num_examples // batch_size)


def bucket_plan_size(lengths: np.ndarray, *, boundaries: list[int], batch_sizes: list[int]) -> int:
  """Batches in every epoch's `bucket_plan`: the shuffle moves examples between batches, never
  between buckets, so each bucket fills the same number of batches every epoch."""
  members = np.bincount(_bucket_of(lengths, boundaries), minlength=len(boundaries))
  return int(sum(-(-int(count) // size) for count, size in zip(members, batch_sizes)))


def _bucket_of(lengths: np.ndarray, boundaries: list[int]) -> np.ndarray:
  # Longer than the last boundary: the last bucket (the example is truncated to it).
  return np.minimum(np.searchsorted(boundaries, np.maximum(lengths, 1)), len(boundaries) - 1)


def bucket_plan(
  lengths: np.ndarray,
  *,
  boundaries: list[int],
  batch_sizes: list[int],
  seed: int,
  epoch: int,
  shuffle: bool,
) -> list[PlannedBatch]:
  """Every example once, in batches of one bucket each; batch order shuffled across buckets."""
  order = _shuffled(len(lengths), seed, epoch, shuffle)
  bucket_of = _bucket_of(lengths, boundaries)
  batches = []
  for bucket, (width, size) in enumerate(zip(boundaries, batch_sizes)):
    members = order[bucket_of[order] == bucket]
    for start in range(0, len(members), size):
      rows = tuple((int(i),) for i in members[start : start + size])
      batches.append(PlannedBatch(width, _fill(rows, size)))
  if shuffle:
    np.random.default_rng([seed, epoch, 1]).shuffle(batches)
  return batches


def pack_plan(
  lengths: np.ndarray,
  *,
  batch_size: int,
  seq_len: int,
  max_segments: int,
  seed: int,
  epoch: int,
  shuffle: bool,
  window: int = 4096,
) -> list[PlannedBatch]:
  """Rows of up to `max_segments` examples and `seq_len` tokens, first-fit decreasing within
  windows of `window` shuffled examples. Every example once (truncated to `seq_len`)."""
  order = _shuffled(len(lengths), seed, epoch, shuffle)
  clipped = np.minimum(np.maximum(lengths, 1), seq_len)
  rows = []
  for start in range(0, len(order), window):
    chunk = order[start : start + window]
    chunk = chunk[np.lexsort((chunk, -clipped[chunk]))]  # longest first; ties by example index
    rows.extend(_first_fit(chunk, clipped, seq_len, max_segments))
  if shuffle:
    np.random.default_rng([seed, epoch, 2]).shuffle(rows)
  return [
    PlannedBatch(seq_len, _fill(tuple(rows[start : start + batch_size]), batch_size))
    for start in range(0, len(rows), batch_size)
  ]


def _first_fit(
  examples: np.ndarray, lengths: np.ndarray, width: int, max_segments: int
) -> list[tuple[int, ...]]:
  """Each example into the first row with room for it and fewer than `max_segments` examples,
  else a new row. The search over open rows is one numpy comparison per example: 0.05 s for
  25,000 IMDB-like lengths, where a Python scan of the rows took 1.4-2.8 s."""
  room = np.full(len(examples), -1, np.int64)  # per row: tokens left; -1 once it is full
  rows: list[list[int]] = []
  for index in examples.tolist():
    need = int(lengths[index])
    fits = room[: len(rows)] >= need
    r = int(fits.argmax()) if rows else 0
    if not rows or not fits[r]:
      r = len(rows)
      rows.append([])
      room[r] = width
    rows[r].append(index)
    room[r] = room[r] - need if len(rows[r]) < max_segments else -1
  return [tuple(row) for row in rows]


def padding_efficiency(plan: list[PlannedBatch], lengths: np.ndarray) -> float:
  """Real tokens / fed tokens of a plan."""
  real = sum(min(int(lengths[i]), batch.width) for batch in plan for row in batch.rows for i in row)
  fed = sum(batch.width * len(batch.rows) for batch in plan)
  return real / fed
