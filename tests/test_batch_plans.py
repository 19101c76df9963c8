"""Batch plans: optimal bucket boundaries, token budgets, packing limits."""

import itertools

import numpy as np
import pytest

from pipeline import batch_plans


def padding_cost(lengths, boundaries):
  widths = np.array(boundaries)[np.searchsorted(boundaries, lengths)]
  return int((widths - lengths).sum())


@pytest.mark.parametrize("seed", range(5))
def test_boundaries_are_optimal_against_brute_force(seed):
  lengths = np.random.default_rng(seed).integers(1, 40, size=60)
  values = sorted(set(lengths.tolist()))
  best = min(
    padding_cost(lengths, list(chosen) + [values[-1]])
    for k in range(0, 3)
    for chosen in itertools.combinations(values[:-1], k)
  )
  boundaries = batch_plans.optimal_boundaries(lengths, 3, 100)
  assert len(boundaries) <= 3 and boundaries[-1] == values[-1]
  assert padding_cost(lengths, boundaries) == best


def test_boundaries_never_exceed_the_truncation_length():
  boundaries = batch_plans.optimal_boundaries(np.array([3, 5, 50, 900, 2000]), 8, 1024)
  assert boundaries == [3, 5, 50, 900, 1024]


def test_token_budget_gives_short_buckets_more_rows_in_device_multiples():
  assert batch_plans.bucket_batch_sizes([16, 64, 256], 32, 0, 4) == [32, 32, 32]
  assert batch_plans.bucket_batch_sizes([16, 64, 256, 4096], 32, 4096, 4) == [256, 64, 16, 4]


def test_pack_rows_respect_width_and_segment_limit_and_hold_everything_once():
  lengths = np.random.default_rng(0).integers(1, 30, size=500)
  plan = batch_plans.pack_plan(
    lengths, batch_size=8, seq_len=64, max_segments=5, seed=0, epoch=0, shuffle=True
  )
  rows = [row for batch in plan for row in batch.rows if row]
  assert sorted(i for row in rows for i in row) == list(range(500))
  assert all(len(row) <= 5 and sum(lengths[i] for i in row) <= 64 for row in rows)
  assert batch_plans.padding_efficiency(plan, lengths) > 0.8  # padding each to 64: 0.23
  assert {batch.width for batch in plan} == {64} and all(len(batch.rows) == 8 for batch in plan)


@pytest.mark.parametrize("batch_tokens", [0, 48])
def test_pad_and_bucket_epochs_have_the_size_known_before_planning(batch_tokens):
  lengths = np.random.default_rng(3).integers(1, 40, size=101)
  boundaries = batch_plans.optimal_boundaries(lengths, 4, 32)
  sizes = batch_plans.bucket_batch_sizes(boundaries, 8, batch_tokens, 2)
  for epoch in range(4):
    assert len(
      batch_plans.bucket_plan(
        lengths, boundaries=boundaries, batch_sizes=sizes, seed=0, epoch=epoch, shuffle=True
      )
    ) == batch_plans.bucket_plan_size(lengths, boundaries=boundaries, batch_sizes=sizes)
    assert (
      len(
        batch_plans.pad_plan(
          len(lengths), batch_size=8, seq_len=32, seed=0, epoch=epoch, shuffle=True
        )
      )
      == batch_plans.pad_plan_size(len(lengths), 8)
      == 13
    )


def _first_fit_decreasing_reference(
  lengths, *, batch_size, seq_len, max_segments, seed, epoch, window
):
  """The packing plan's rows as the first version computed them: a Python scan of the open rows."""
  order = np.arange(len(lengths))
  np.random.default_rng([seed, epoch]).shuffle(order)
  clipped = np.minimum(np.maximum(lengths, 1), seq_len)
  rows = []
  for start in range(0, len(order), window):
    open_rows, room = [], []
    for index in sorted(order[start : start + window], key=lambda i: (-clipped[i], i)):
      for r, space in enumerate(room):
        if space >= clipped[index] and len(open_rows[r]) < max_segments:
          open_rows[r].append(int(index))
          room[r] -= clipped[index]
          break
      else:
        open_rows.append([int(index)])
        room.append(seq_len - clipped[index])
    rows.extend(tuple(row) for row in open_rows)
  np.random.default_rng([seed, epoch, 2]).shuffle(rows)
  return rows


@pytest.mark.parametrize("max_segments,window", [(1, 4096), (3, 4096), (32, 64), (5, 97)])
def test_pack_plan_is_the_first_fit_decreasing_plan_it_always_was(max_segments, window):
  """Runs resumed across versions read the same batches: the plan may get faster, never different."""
  lengths = np.random.default_rng(max_segments).integers(1, 90, size=700)
  plan = batch_plans.pack_plan(
    lengths,
    batch_size=8,
    seq_len=64,
    max_segments=max_segments,
    seed=1,
    epoch=2,
    shuffle=True,
    window=window,
  )
  reference = _first_fit_decreasing_reference(
    lengths, batch_size=8, seq_len=64, max_segments=max_segments, seed=1, epoch=2, window=window
  )
  assert [row for batch in plan for row in batch.rows if row] == reference
