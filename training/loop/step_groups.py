"""Several train steps per call (`--steps_per_call`): which steps go together, and their batches.

A call of the compiled step costs the host a dispatch, and on a small CPU that host time comes
out of the step's own cores; on an accelerator a small model's step can be shorter than its
dispatch. Running consecutive steps inside one executable (`parallel.compile_train_step`) pays
that once per call. A call never crosses a step where the loop has something to do (log, save,
evaluate, stop), so checkpoints, rows and evaluations fall on the same steps for any number of
steps per call, and a run resumes the same way.
"""

from collections.abc import Callable, Iterator


def steps_in_next_call(step: int, most: int, loop_acts_at: Callable[[int], bool]) -> int:
  """How many steps the call after `step` runs: `most`, or fewer to end at the first step
  where `loop_acts_at(step)` (the loop logs, saves, evaluates or ends there)."""
  for count in range(1, most):
    if loop_acts_at(step + count):
      return count
  return most


def _shapes(batch: dict) -> tuple:
  return tuple((name, array.shape) for name, array in sorted(batch.items()))


class BatchGroups:
  """Consecutive batches taken a group at a time, every batch of a group of one shape (they are
  stacked into one array per field): with bucketing or packing, a batch of another shape ends
  the group and starts the next one."""

  def __init__(self, batches: Iterator[dict]):
    self._batches = batches
    self._held = None  # the batch that ended the last group: the next group's first

  def take(self, most: int) -> list[dict]:
    """The next 1 to `most` batches, all of the first one's shapes."""
    group = [self._held if self._held is not None else next(self._batches)]
    self._held = None
    shapes = _shapes(group[0])
    while len(group) < most:
      try:
        batch = next(self._batches)
      except StopIteration:
        break
      if _shapes(batch) != shapes:
        self._held = batch
        break
      group.append(batch)
    return group
