"""What a run reports: `metrics.jsonl` rows, `summary.json`, and a parameter fingerprint."""

import hashlib
import json

import jax
import numpy as np

from pipeline import paths
from training.bookkeeping.tensorboard_log import TensorBoardLog


def param_fingerprint(params) -> str:
  """SHA-256 of every parameter's path, dtype, shape and bytes, in a fixed (sorted) order.

  Two runs with the same fingerprint ended with bit-identical parameters.
  """
  digest = hashlib.sha256()
  leaves = jax.tree_util.tree_flatten_with_path(jax.device_get(params))[0]
  for path, leaf in sorted(leaves, key=lambda item: jax.tree_util.keystr(item[0])):
    array = np.ascontiguousarray(leaf)
    digest.update(f"{jax.tree_util.keystr(path)}|{array.dtype}|{array.shape}|".encode())
    digest.update(array.tobytes())
  return digest.hexdigest()


class MetricsLog:
  """Appends one JSON object per log event to `metrics.jsonl`, and the same figures to
  TensorBoard event files in `tensorboard_dir` (when given).

  On resume, rows logged after the restored step (by a run that crashed before its next
  checkpoint) are dropped, so the file reads as if the run had never stopped; so is the test
  split's row, which the run writes again when it ends.
  """

  def __init__(
    self, path: str, resume_step: int, enabled: bool = True, tensorboard_dir: str | None = None
  ):
    self.path, self.enabled = path, enabled
    self._tensorboard = TensorBoardLog(
      tensorboard_dir, resume_step, enabled and tensorboard_dir is not None
    )
    self._rows = []
    if enabled and paths.exists(path):
      lines = paths.read_text(path).split("\n")
      self._rows = [
        row
        for row in map(_parse_row, lines)
        if row and row["step"] <= resume_step and row["split"] != "test"
      ]
      paths.write_text(path, self._text())

  def _text(self) -> str:
    return "".join(json.dumps(row) + "\n" for row in self._rows)

  def write(self, row: dict) -> None:
    if self.enabled:
      self._rows.append(row)
      paths.append_text(self.path, json.dumps(row) + "\n", whole_text=self._text)
      self._tensorboard.write(row)

  def close(self) -> None:
    self._tensorboard.close()

  def batching_summary(self) -> dict:
    """The whole run's `padding_efficiency` (real / fed tokens) and the distinct `batch_shapes`
    of its train steps, from every train row (those of runs it resumed included)."""
    rows = [row for row in self._rows if row["split"] == "train" and "fed_tokens" in row]
    fed = sum(row["fed_tokens"] for row in rows)
    shapes = sorted({tuple(shape) for row in rows for shape in row["batch_shapes"]})
    return {
      "padding_efficiency": sum(row["real_tokens"] for row in rows) / fed if fed else None,
      "batch_shapes": [list(shape) for shape in shapes],
    }

  def last_elapsed(self) -> float:
    """The latest `elapsed_s` already in the file (0 for a new run)."""
    return next((row["elapsed_s"] for row in reversed(self._rows) if "elapsed_s" in row), 0.0)

  def last_train_loss(self) -> float | None:
    """The latest train loss already in the file (for a run resumed at its last step)."""
    return next((row["loss"] for row in reversed(self._rows) if row["split"] == "train"), None)


def _parse_row(line: str) -> dict | None:
  """A row, or None for a blank line or the half-written last line of a killed run."""
  try:
    return json.loads(line) if line.strip() else None
  except json.JSONDecodeError:
    return None


def write_json(path: str, value: dict) -> None:
  paths.write_text(path, json.dumps(value, indent=2) + "\n")
