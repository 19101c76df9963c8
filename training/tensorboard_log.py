"""TensorBoard event files beside `metrics.jsonl`, written without TensorFlow (tensorboardX).

Every numeric field of a metrics row becomes a scalar named `SPLIT/FIELD` (`train/loss`,
`eval/accuracy`, `train/learning_rate`, ...) at the row's step. A resumed run opens the writer
with `purge_step` = the first step after its checkpoint: TensorBoard then hides the points that
the crashed run wrote after that checkpoint, so the curves continue without duplicates, as
`metrics.jsonl` does.
"""

import numbers


class TensorBoardLog:
  def __init__(self, directory: str, resume_step: int, enabled: bool = True):
    self._writer = None
    if enabled:
      from tensorboardX import SummaryWriter  # imported here: only the lead process writes

      self._writer = SummaryWriter(directory, purge_step=resume_step + 1 if resume_step else None,
                                   flush_secs=30)

  def write(self, row: dict) -> None:
    if self._writer is None:
      return
    for name, value in row.items():
      if name not in ("step", "split") and isinstance(value, numbers.Real) and not isinstance(value, bool):
        self._writer.add_scalar(f"{row['split']}/{name}", value, row["step"])

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()
