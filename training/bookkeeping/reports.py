"""What a run reports while it trains: metric rows (`metrics.jsonl` and TensorBoard), log lines,
and a progress bar on a terminal.

The train step adds its metric sums to its log window's (`TrainReporter.window_sums` in,
`TrainReporter.add` out); sums stay on the device and are fetched once per log window, so
reporting adds no host sync per step. Even that fetch does not stall the device: a window's sums
are fetched after the next step is queued behind them.
"""

import sys
import time

import jax
from absl import logging

from training.bookkeeping.class_report import for_every_row, scalar_metrics
from training.bookkeeping.metrics_log import MetricsLog
from training.loop.objectives import combine_sums, finalize_metrics
from training.state import learning_rate_at

# One dispatch for all the metrics, not one per metric (which an accelerator feels).
_combine = jax.jit(combine_sums)


def add_sums(total, new):
  """Accumulates metric sums (an evaluation's batches); `*_min` entries keep their minimum."""
  return new if total is None else _combine(total, new)


# The figures a run's last line gives, of those its task has (the rest are in summary.json).
HEADLINE_METRICS = ("loss", "bits_per_byte", "accuracy", "macro_f1")


def summary_line(summary: dict, summary_path: str) -> str:
  """A finished run in one line: its dev figures at the chosen step, its test figures, and where
  the whole summary is (a classifier's, with its per-class report, runs to pages)."""

  def figures(metrics: dict) -> str:
    return "  ".join(f"{name} {metrics[name]:.4f}" for name in HEADLINE_METRICS if name in metrics)

  parts = [
    f"Finished at step {summary['step']}"
    + (" (stopped early)" if summary.get("stopped_early") else "")
  ]
  best = summary.get("best")
  if best:
    parts.append(
      f"dev {figures(best['eval'])} at step {best['step']} (chosen by {best['select_metric']})"
    )
  elif summary.get("eval"):
    parts.append(f"dev {figures(summary['eval'])}")
  if summary.get("test"):
    parts.append(f"test {figures(summary['test'])}")
  parts.append(f"the whole summary: {summary_path}")
  return "; ".join(parts)


def format_duration(seconds: float) -> str:
  seconds = int(seconds)
  return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class ProgressBar:
  """A tqdm bar with rate and time left when stderr is a terminal; nothing otherwise (the
  periodic log lines, with their own `eta`, serve logs and CI)."""

  def __init__(
    self, total: int, initial: int, description: str, enabled: bool = True, unit: str = "step"
  ):
    self._bar = None
    if enabled and sys.stderr.isatty():
      from tqdm import tqdm

      self._bar = tqdm(
        total=total, initial=initial, desc=description, unit=unit, dynamic_ncols=True, leave=False
      )

  def update(self, n: int = 1) -> None:
    if self._bar is not None:
      self._bar.update(n)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()


class TrainReporter:
  def __init__(
    self,
    metrics_log: MetricsLog,
    schedule,
    start_step: int,
    num_steps: int,
    enabled: bool,
    check=lambda sums: None,
  ):
    """`check(sums)`: called with each window's sums (on the host) before its row is written;
    it may raise to stop the run (a non-finite loss)."""
    self._check = check
    self.metrics_log, self._schedule, self._num_steps = metrics_log, schedule, num_steps
    self.pending = None  # metric sums of the steps since the last train row, on the device
    self._shapes = set()  # global batch shapes the train step saw since the last row
    self._window_start = self._run_start = time.perf_counter()
    self._run_start_step = start_step
    self._elapsed_before = metrics_log.last_elapsed()  # the wall time of the runs this one resumes
    self.last_train = None
    self._closed = None  # (step, sums, shapes) of a window ended but not yet written
    self._bar = ProgressBar(num_steps, start_step, "train", enabled)

  def window_sums(self, no_sums):
    """The sums the next step adds its own to: the open window's, or `no_sums()` to open one."""
    return no_sums() if self.pending is None else self.pending

  def add(self, window_sums, batch_shape) -> None:
    """A step done: `window_sums` (the step's output) are the open window's sums now."""
    self.pending = window_sums
    self._shapes.add(tuple(batch_shape))
    self._bar.update()

  def close_window(self, step: int) -> None:
    """Ends the log window at `step`. Its sums start their copy to the host now; its row is written
    by `write_closed_window`, which the loop calls once it has queued the next step: waiting for the
    sums right away would leave the device idle while the host fetches, logs and prepares the
    next batch. (On a 2-core CPU the host's work takes the step's cores either way, and this
    measured nothing; it pays where the host has a core of its own.)"""
    self.write_closed_window()  # a window the loop left unwritten comes first
    for leaf in jax.tree.leaves(self.pending):
      if leaf.is_fully_addressable:  # (the copy of a multi-process array is made by device_get)
        leaf.copy_to_host_async()
    self._closed = (step, self.pending, self._shapes)
    self.pending, self._shapes = None, set()

  def check_open_window(self) -> None:
    """`check` on the sums of the window still open, fetching them now (before a save)."""
    if self.pending is not None:
      self._check(jax.device_get(self.pending))

  def write_closed_window(self) -> None:
    """Checks and writes the row of the window `close_window` ended, waiting for its sums."""
    if self._closed is None:
      return
    (step, pending, shapes), self._closed = self._closed, None
    sums = jax.device_get(pending)
    self._check(sums)
    now = time.perf_counter()  # after the wait: the window's last step has finished
    real, fed = float(sums["real_tokens"]), float(sums["fed_tokens"])
    row = {
      "step": step,
      "split": "train",
      **finalize_metrics(sums),
      "tokens_per_sec": real / max(now - self._window_start, 1e-9),
      "padding_efficiency": real / max(fed, 1.0),
      "grad_norm": float(sums["grad_norm_sum"]) / max(float(sums["steps"]), 1.0),
      # The rate of this row's last update
      "learning_rate": learning_rate_at(self._schedule, step - 1),
      "real_tokens": int(real),
      "fed_tokens": int(fed),
      "elapsed_s": self.elapsed(now),
      "batch_shapes": sorted(list(shape) for shape in shapes),
    }
    self.metrics_log.write(row)
    eta = (now - self._run_start) / max(step - self._run_start_step, 1) * (self._num_steps - step)
    accuracy = f"  acc {row['accuracy']:.3f}" if "accuracy" in row else ""
    logging.info(
      "step %d/%d  loss %.4f%s  %.0f tok/s  eta %s",
      step,
      self._num_steps,
      row["loss"],
      accuracy,
      row["tokens_per_sec"],
      format_duration(eta),
    )
    self.last_train, self._window_start = row, now

  def elapsed(self, now: float | None = None) -> float:
    """Wall seconds of training so far (evaluations included), over resumes."""
    return round(self._elapsed_before + (now or time.perf_counter()) - self._run_start, 3)

  def log_eval(self, step: int, metrics: dict) -> None:
    row = {"step": step, "split": "eval", **for_every_row(metrics), "elapsed_s": self.elapsed()}
    self.metrics_log.write(row)
    logging.info(
      "eval at step %d: %s",
      step,
      "  ".join(f"{k} {v:.4f}" for k, v in scalar_metrics(metrics).items()),
    )

  def restart_clock(self) -> None:
    """After an evaluation: its time is not training throughput."""
    self._window_start = time.perf_counter()

  def close(self) -> None:
    self._bar.close()
    self.metrics_log.close()
