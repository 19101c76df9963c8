"""Grain batches in every mode: coverage, shapes, contiguous lanes, process shards, iterator state."""

import itertools
import time

import numpy as np
import pytest

from pipeline.batch_plans import optimal_boundaries
from pipeline.errors import DataError
from pipeline.sequence_batches import encode_all, make_plan_function, sequence_batches
from pipeline.token_windows import token_stream, window_batches
from pipeline.tokenizers import EOS, PAD, Vocabulary

EXAMPLES = [{"text": "x" * (1 + i % 7) + "y" * (i % 3), "label": i % 3} for i in range(23)]
VOCAB = Vocabulary.build([e["text"] for e in EXAMPLES], "char")
MODES = ["pad", "bucket", "pack"]


def batches_for(
  batching,
  *,
  train=False,
  batch_size=4,
  seq_len=8,
  seed=0,
  shard_index=0,
  shard_count=1,
  examples=EXAMPLES,
  boundaries=None,
):
  token_ids = encode_all(examples, VOCAB)
  lengths = np.array([len(ids) for ids in token_ids])
  plan, segments = make_plan_function(
    lengths,
    batching=batching,
    batch_size=batch_size,
    seq_len=seq_len,
    seed=seed,
    shuffle=train,
    boundaries=boundaries or optimal_boundaries(lengths, 3, seq_len),
    batch_tokens=0,
    max_segments=3,
    row_multiple=1,
  )
  dataset = sequence_batches(
    token_ids,
    np.array([e["label"] for e in examples]),
    plan,
    train=train,
    segments_per_row=segments,
    shard_index=shard_index,
    shard_count=shard_count,
  )
  return iter(dataset), len(plan(0))


def sequences_in(batch):
  """(text, label) of every sequence in a batch, read back through its segment ids."""
  found = []
  for r in range(batch["inputs"].shape[0]):
    for s in np.flatnonzero(batch["example_mask"][r]):
      ids = batch["inputs"][r][batch["segment_ids"][r] == s + 1]
      assert batch["segment_ends"][r, s] == np.flatnonzero(batch["segment_ids"][r] == s + 1)[-1]
      found.append((VOCAB.decode(ids), int(batch["labels"][r, s])))
  return found


def expected_sequences(width=8):
  return sorted((e["text"][:width], e["label"]) for e in EXAMPLES)


@pytest.mark.parametrize("batching", MODES)
def test_eval_batches_hold_every_sequence_once(batching):
  iterator, _ = batches_for(batching)
  batches = list(iterator)
  assert sorted(s for b in batches for s in sequences_in(b)) == expected_sequences()
  widths = {b["inputs"].shape[1] for b in batches}
  assert {"pad": widths == {8}, "bucket": len(widths) <= 3, "pack": widths == {8}}[batching], widths
  assert all(b["inputs"].shape[0] == 4 for b in batches)
  assert all((b["inputs"][~b["mask"]] == PAD).all() for b in batches)


@pytest.mark.parametrize("batching", MODES)
def test_each_training_epoch_holds_every_sequence_once_and_is_reshuffled(batching):
  iterator, per_epoch = batches_for(batching, train=True)
  epochs = [[sequences_in(next(iterator)) for _ in range(per_epoch)] for _ in range(2)]
  for epoch in epochs:
    assert sorted(s for batch in epoch for s in batch) == expected_sequences()
  assert epochs[0] != epochs[1]
  again, _ = batches_for(batching, train=True)
  assert [sequences_in(next(again)) for _ in range(per_epoch)] == epochs[0]  # same seed, same order


def test_bucket_batches_pad_only_to_their_bucket_and_truncate_to_the_last():
  iterator, _ = batches_for("bucket", boundaries=[3, 5], seq_len=8)
  for batch in iterator:
    width = batch["inputs"].shape[1]
    lengths = batch["mask"].sum(axis=1)[batch["example_mask"][:, 0]]
    assert width in (3, 5) and (lengths <= width).all()
    if width == 5:
      assert (lengths > 3).all()


@pytest.mark.parametrize("batching", MODES)
def test_process_shards_are_disjoint_and_cover_the_data(batching):
  shards = [
    sorted(
      s for b in batches_for(batching, shard_index=i, shard_count=2)[0] for s in sequences_in(b)
    )
    for i in range(2)
  ]
  assert sorted(shards[0] + shards[1]) == expected_sequences()


@pytest.mark.parametrize("batching", MODES)
def test_processes_batch_k_together_hold_a_single_process_batch_k(batching):
  whole, _ = batches_for(batching, train=True, seed=3)
  parts = [
    batches_for(batching, train=True, seed=3, shard_index=i, shard_count=2)[0] for i in range(2)
  ]
  for _ in range(20):  # several epochs
    expected = next(whole)
    got = [next(part) for part in parts]
    # Same shape everywhere
    assert all(g["inputs"].shape == (2, expected["inputs"].shape[1]) for g in got)
    assert sorted(sequences_in(got[0]) + sequences_in(got[1])) == sorted(sequences_in(expected))


def stream(n=100):
  return np.arange(3, 3 + n, dtype=np.int32)


def test_lanes_are_contiguous_across_windows_and_every_token_is_a_target_once():
  tokens = stream(100)
  batches = list(window_batches(tokens, batch_size=4, seq_len=7, train=False, carry_state=True))
  assert all(b["inputs"].shape == (4, 7) for b in batches)
  targets = np.concatenate([b["targets"] for b in batches], axis=1)
  inputs = np.concatenate([b["inputs"] for b in batches], axis=1)
  mask = np.concatenate([b["mask"] for b in batches], axis=1)
  for lane in range(4):
    lane_tokens = tokens[lane * 25 : (lane + 1) * 25]
    np.testing.assert_array_equal(inputs[lane, :24], lane_tokens[:-1])
    np.testing.assert_array_equal(targets[lane][mask[lane]], lane_tokens[1:])
  assert mask.sum() == 100 - 4  # only each lane's first token is never a target
  assert [b["resets"].tolist() for b in batches] == [[True] * 4] + [[False] * 4] * (
    len(batches) - 1
  )


def test_without_carrying_every_window_resets_and_epochs_restart():
  batches = list(
    itertools.islice(
      window_batches(stream(40), batch_size=2, seq_len=5, train=True, carry_state=False), 10
    )
  )
  assert all(b["resets"].all() for b in batches)
  carried = list(
    itertools.islice(
      window_batches(stream(40), batch_size=2, seq_len=5, train=True, carry_state=True), 10
    )
  )
  per_epoch = 4  # ceil((20 - 1) / 5)
  assert [bool(b["resets"][0]) for b in carried] == [i % per_epoch == 0 for i in range(10)]
  np.testing.assert_array_equal(carried[0]["inputs"], carried[per_epoch]["inputs"])


def test_each_process_gets_its_own_lanes():
  whole = next(
    iter(window_batches(stream(), batch_size=4, seq_len=5, train=True, carry_state=True))
  )
  parts = [
    next(
      iter(
        window_batches(
          stream(),
          batch_size=4,
          seq_len=5,
          train=True,
          carry_state=True,
          shard_index=i,
          shard_count=2,
        )
      )
    )
    for i in range(2)
  ]
  np.testing.assert_array_equal(np.concatenate([p["inputs"] for p in parts]), whole["inputs"])


def test_token_stream_ends_every_document_with_eos():
  vocab = Vocabulary.build(["ab", "c"], "char")
  assert token_stream([{"text": "ab"}, {"text": "c"}], vocab).tolist() == [
    *vocab.encode("ab"),
    EOS,
    *vocab.encode("c"),
    EOS,
  ]


def test_too_little_data_for_the_lanes_is_a_clear_error():
  with pytest.raises(DataError, match="--eval_data: 3 tokens cannot fill 4 lanes"):
    window_batches(
      np.arange(3, dtype=np.int32),
      batch_size=4,
      seq_len=5,
      train=False,
      carry_state=True,
      what="--eval_data",
    )


def _assert_state_round_trip(make_iterator, skip=7, compare=5):
  iterator = make_iterator()
  for _ in range(skip):
    next(iterator)
  state = iterator.get_state()
  expected = [next(iterator) for _ in range(compare)]
  restored = make_iterator()
  restored.set_state(state)
  for want, got in zip(expected, (next(restored) for _ in range(compare))):
    assert want.keys() == got.keys()
    for key in want:
      np.testing.assert_array_equal(want[key], got[key])


@pytest.mark.parametrize("batching", MODES)
def test_iterator_state_round_trip_mid_epoch_for_sequences(batching):
  _assert_state_round_trip(
    lambda: batches_for(batching, train=True, batch_size=3, seed=4)[0], skip=11
  )


def test_iterator_state_round_trip_mid_epoch_for_windows():
  _assert_state_round_trip(
    lambda: iter(window_batches(stream(), batch_size=4, seq_len=5, train=True, carry_state=True)),
    skip=6,
  )


def test_training_plans_the_next_epoch_while_this_one_is_read():
  from pipeline.batch_plans import pad_plan
  from pipeline.sequence_batches import PlannedBatches

  planned = []

  def plan_for_epoch(epoch):
    planned.append(epoch)
    return pad_plan(len(EXAMPLES), batch_size=4, seq_len=8, seed=0, epoch=epoch, shuffle=True)

  source = PlannedBatches(
    encode_all(EXAMPLES, VOCAB),
    np.zeros(len(EXAMPLES), np.int32),
    plan_for_epoch,
    repeat=True,
    segments_per_row=1,
    shard_index=0,
    shard_count=1,
  )
  source[0]  # the first batch of epoch 0
  deadline = time.monotonic() + 10
  while 1 not in planned and time.monotonic() < deadline:
    time.sleep(0.01)
  assert planned == [0, 1]  # epoch 1 planned before any of its batches was asked for
  per_epoch = len(plan_for_epoch(0))
  planned.clear()
  source[per_epoch]  # epoch 1's first batch: its plan is ready; epoch 2's is started
  deadline = time.monotonic() + 10
  while 2 not in planned and time.monotonic() < deadline:
    time.sleep(0.01)
  assert planned == [2]


@pytest.mark.parametrize("batching", ["pad", "bucket"])
def test_a_batch_far_into_the_run_is_found_without_planning_the_epochs_before_it(batching):
  """A resumed run's first batch: its epoch is planned (and the next, ahead), no other; and it is
  the batch a source that counted every earlier epoch's batches finds."""
  from pipeline.sequence_batches import EpochPlanner, PlannedBatches

  token_ids = encode_all(EXAMPLES, VOCAB)
  lengths = np.array([len(ids) for ids in token_ids])
  planner, _ = make_plan_function(
    lengths,
    batching=batching,
    batch_size=4,
    seq_len=8,
    seed=0,
    shuffle=True,
    boundaries=optimal_boundaries(lengths, 3, 8),
    batch_tokens=0,
    max_segments=1,
    row_multiple=1,
  )
  planned = []
  counted = EpochPlanner(
    lambda epoch: planned.append(epoch) or planner(epoch), planner.batches_per_epoch
  )
  labels = np.arange(len(EXAMPLES), dtype=np.int32)
  source = lambda plans: PlannedBatches(
    token_ids, labels, plans, repeat=True, segments_per_row=1, shard_index=0, shard_count=1
  )
  index = 40 * planner.batches_per_epoch + 3
  found = source(counted)[index]
  assert 40 in planned and set(planned) <= {
    40,
    41,
  }  # (41: the plan-ahead thread's, maybe not started yet)
  by_counting = source(planner.plan)[
    index
  ]  # a plain function: every earlier epoch planned to count
  for name in found:
    np.testing.assert_array_equal(found[name], by_counting[name])
