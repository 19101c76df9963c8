"""Which steps run together in one call (`--steps_per_call`), and the batches they take."""

import numpy as np

from training.loop.step_groups import BatchGroups, steps_in_next_call


def batch(width, value):
  return {"inputs": np.full((2, width), value), "mask": np.ones((2, width), bool)}


def test_a_call_ends_at_the_first_step_where_the_loop_acts():
  acts = lambda step: step % 10 == 0 or step == 25
  assert steps_in_next_call(0, 4, acts) == 4
  assert steps_in_next_call(8, 4, acts) == 2  # ends at 10 (log, save or evaluation)
  assert steps_in_next_call(22, 4, acts) == 3  # ends at 25 (the last step)
  assert steps_in_next_call(9, 1, acts) == 1
  assert steps_in_next_call(9, 4, acts) == 1


def test_a_group_holds_batches_of_one_shape_and_keeps_the_batch_that_ended_it():
  widths = [8, 8, 8, 12, 12, 8, 8, 8, 8, 8]
  groups = BatchGroups(iter([batch(w, i) for i, w in enumerate(widths)]))
  taken = [groups.take(4) for _ in range(4)]
  assert [[int(b["inputs"][0, 0]) for b in g] for g in taken] == [
    [0, 1, 2],
    [3, 4],
    [5, 6, 7, 8],
    [9],
  ]
  assert [{b["inputs"].shape for b in g} for g in taken] == [
    {(2, 8)},
    {(2, 12)},
    {(2, 8)},
    {(2, 8)},
  ]


def test_groups_end_with_the_batches():
  groups = BatchGroups(iter([batch(8, i) for i in range(5)]))
  assert [len(groups.take(3)), len(groups.take(3))] == [3, 2]
