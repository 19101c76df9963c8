"""Model selection on the dev split: the best evaluation's state kept as its own checkpoint,
and early stopping.

`--eval_data` is the dev split. Every evaluation on it is offered to `ModelSelection.observe`,
which keeps the train state of the best one so far (by `--select_metric`) in
`WORKDIR/best_checkpoint/STEP/`, with its dev metrics saved beside it; `--keep_checkpoints`
never removes it (it is another directory). The trainer evaluates `--test_data` once, at the
end, with those parameters. With `--patience=N`, training stops after N evaluations in a row
that did not beat the best.

On resume the best so far is read back from `best_checkpoint/`, and the number of evaluations
since it follows from the evaluation schedule, so a resumed run selects and stops exactly as an
uninterrupted one. A best checkpoint newer than the resumed step (`--restore_step` went back)
is set aside, as the newer regular checkpoints are.
"""

import os

from absl import logging

from training.bookkeeping.checkpoints import BEST_DIR, Checkpointer
from training.config import CLASS_F1_PREFIX
from training.state import TrainState


def metric_value(metrics: dict, metric: str) -> float | None:
  """`metric` in an evaluation's metrics (`f1:CLASS` is that class's F1); None where they lack it
  (a best evaluation saved before the metric was measured)."""
  if metric.startswith(CLASS_F1_PREFIX):
    return metrics.get("per_class", {}).get(metric[len(CLASS_F1_PREFIX) :], {}).get("f1")
  return metrics.get(metric)


def is_better(metric: str, value: float, best: float | None) -> bool:
  """Strictly better (a tie keeps the earlier step; NaN is never better). Loss is better lower,
  every other metric (accuracy, F1) higher; anything beats a best that lacks the metric."""
  if best is None:
    return value == value
  return value < best if metric == "loss" else value > best


class ModelSelection:
  """The best evaluation so far, its checkpoint, and the patience count."""

  def __init__(
    self,
    workdir: str,
    *,
    metric: str,
    eval_every: int,
    patience: int,
    resume_step: int,
    set_aside_dir: str,
    enabled: bool = True,
  ):
    """`enabled`: the run has a dev split (else nothing is selected and no directory is made)."""
    self.metric, self._eval_every, self._patience = metric, eval_every, patience
    self.best = None  # {"step": STEP, **dev metrics}
    self._checkpointer = None
    if not enabled:
      return
    self._checkpointer = Checkpointer(
      os.path.join(workdir, BEST_DIR), max_to_keep=1, async_save=False
    )
    steps = self._checkpointer.all_steps()
    self._checkpointer.set_aside(
      [s for s in steps if s > resume_step], os.path.join(set_aside_dir, BEST_DIR)
    )
    kept = [s for s in steps if s <= resume_step]
    if kept:
      self.best = {**self._checkpointer.restore_metrics(max(kept)), "step": max(kept)}

  def observe(self, step: int, metrics: dict, state: TrainState) -> bool:
    """Keeps `state` if `metrics` beat the best so far; returns whether they did."""
    value = metric_value(metrics, self.metric)
    if self.best is not None and not is_better(
      self.metric, value, metric_value(self.best, self.metric)
    ):
      return False
    self._checkpointer.save(state, metrics=dict(metrics))
    self._checkpointer.wait_until_finished()  # the best is on disk before training goes on
    self.best = {**metrics, "step": step}
    logging.info(
      "Best %s so far (%.4f at step %d), kept in %s",
      self.metric,
      value,
      step,
      self._checkpointer.directory,
    )
    return True

  def patience_exhausted(self, step: int) -> bool:
    """Whether the last `--patience` evaluations up to `step` all failed to beat the best."""
    if not self._patience or self.best is None or not self._eval_every:
      return False
    evaluations_since_best = step // self._eval_every - self.best["step"] // self._eval_every
    return evaluations_since_best >= self._patience

  def best_state(self, template: TrainState) -> TrainState:
    """The best checkpoint's state, in `template`'s shapes and shardings."""
    return self._checkpointer.restore_state(self.best["step"], template)

  def summary(self) -> dict | None:
    """`summary.json`'s `best`: its step, the metric that chose it, and its dev metrics."""
    if self.best is None:
      return None
    return {
      "step": self.best["step"],
      "select_metric": self.metric,
      "eval": {k: v for k, v in self.best.items() if k != "step"},
    }

  def close(self) -> None:
    if self._checkpointer is not None:
      self._checkpointer.close()
