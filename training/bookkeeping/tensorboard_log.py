"""TensorBoard event files beside `metrics.jsonl`, written without TensorFlow (tensorboardX).

Every numeric field of a metrics row becomes a scalar named `SPLIT/FIELD` (`train/loss`,
`eval/accuracy`, `train/learning_rate`, ...) at the row's step; a classifier's evaluation adds
each class's `SPLIT/f1/CLASS`, `SPLIT/precision/CLASS` and `SPLIT/recall/CLASS`, and its
confusion matrix as the image `SPLIT/confusion_matrix`. A resumed run opens the writer
with `purge_step` = the first step after its checkpoint: TensorBoard then hides the points that
the crashed run wrote after that checkpoint, so the curves continue without duplicates, as
`metrics.jsonl` does.
"""

import numbers
import sys


def _summary_writer_class():
  """tensorboardX's SummaryWriter, imported without PyTorch. Its writer module imports torch
  whenever it is installed, only to accept torch tensors (this log passes floats): that took
  2.2 s of every run's start on 2 cores where the bench extra is installed. An import of torch
  made here fails at once and is then forgotten, so a later `import torch` works as ever."""
  if "tensorboardX.writer" in sys.modules or "torch" in sys.modules:
    from tensorboardX import SummaryWriter

    return SummaryWriter
  sys.modules["torch"] = None  # `import torch` raises ImportError while this is set
  try:
    from tensorboardX import SummaryWriter
  finally:
    del sys.modules["torch"]
  return SummaryWriter


class TensorBoardLog:
  def __init__(self, directory: str, resume_step: int, enabled: bool = True):
    self._writer = None
    if enabled:
      SummaryWriter = _summary_writer_class()  # imported here: only the lead process writes
      self._writer = SummaryWriter(
        directory, purge_step=resume_step + 1 if resume_step else None, flush_secs=30
      )

  def write(self, row: dict) -> None:
    if self._writer is None:
      return
    for name, value in row.items():
      if (
        name not in ("step", "split", "parameters_of_step")
        and isinstance(value, numbers.Real)
        and not isinstance(value, bool)
      ):
        self._writer.add_scalar(f"{row['split']}/{name}", value, row["step"])
    for name, figures in row.get("per_class", {}).items():
      for measure in ("f1", "precision", "recall"):
        self._writer.add_scalar(f"{row['split']}/{measure}/{name}", figures[measure], row["step"])
    if "confusion_matrix" in row:
      from training.bookkeeping.class_report import confusion_matrix_image

      image = confusion_matrix_image(row, f"{row['split']}, step {row['step']}")
      self._writer.add_image(
        f"{row['split']}/confusion_matrix", image, row["step"], dataformats="HWC"
      )

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()
