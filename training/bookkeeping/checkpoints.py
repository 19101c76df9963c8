"""Orbax checkpoints of the train state.

One checkpoint is a directory `checkpoints/STEP/` with one item, `state` (the `TrainState` as
a pytree: step, params, optimiser state, RNG, carried hidden state). The data position needs no
item of its own: every global batch is fixed by the data, the seed and its index, so a resumed
run starts its data at global batch `step`, whatever the number of processes that wrote the
checkpoint and that read it (elastic resume; `training.loop.data`). Arrays are restored with the
current mesh's shardings. Orbax writes to a temporary directory and renames it when complete,
so a crash mid-save never leaves a checkpoint that `latest_step` would pick. (Checkpoints of
earlier versions also hold a `data` item, one Grain iterator state per process: it is ignored.)
"""

import dataclasses
import gc
import logging as python_logging
import os

import jax
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from pipeline import paths
from training.bookkeeping.abandoned_reads import silence_abandoned_reads
from training.state import TrainState

# Where a run keeps the state of its best dev evaluation (`training.loop.selection`).
BEST_DIR = "best_checkpoint"


def _as_tree(state: TrainState) -> dict:
  # Orbax stores plain dicts of arrays; field names become the directory's keys.
  return {field.name: getattr(state, field.name) for field in dataclasses.fields(state)}


class CheckpointError(RuntimeError):
  """No usable checkpoint where one was expected; the message names the checkpoint."""


def _first_line(error: Exception) -> str:
  text = str(error).strip()
  if not text:
    return type(error).__name__
  return text.splitlines()[0].split(" See full TensorStore details")[0][:300]


class _SaveErrorCapture(python_logging.Filter):
  """Keeps the cause of a failed background save and drops Orbax's tracebacks of it.

  A save that fails in Orbax's background threads is logged there with a traceback (several
  times, by several threads) while training goes on. The Checkpointer reports the failure itself,
  in one line with its cause, so those records are dropped here and their first line kept.
  """

  def __init__(self):
    super().__init__()
    self.cause = None

  def filter(self, record) -> bool:
    if (
      "/orbax/" not in record.pathname
      or record.levelno < python_logging.ERROR
      or not record.exc_info
    ):
      return True
    if self.cause is None:
      self.cause = _first_line(record.exc_info[1])
    return False


class Checkpointer:
  """Saves and restores (train state, data iterator) pairs under one directory.

  Saves may run in the background: `check_save()`, called after every step, turns a save that
  failed there into a `CheckpointError` at the next step instead of a traceback that scrolls past
  while training goes on. Earlier checkpoints are never touched by a failed save.
  """

  def __init__(self, directory: str, *, max_to_keep: int, async_save: bool):
    self.directory = directory
    self._pending_step = None  # a save started and not yet checked
    self._errors = _SaveErrorCapture()
    logging.get_absl_logger().addFilter(self._errors)
    # Orbax names its cross-process barriers by what they do, the same for every manager. Two
    # managers in one job (the latest checkpoints, saved in the background, and the best one)
    # would then enter one barrier twice at once: the coordination service refuses ("Barrier
    # ... is already ongoing") and the job hangs. A prefix per directory keeps them apart; the
    # directory's name, not its path, so that it is the same on every host.
    barrier_prefix = os.path.basename(os.path.normpath(directory))
    self._manager = ocp.CheckpointManager(
      directory,
      options=ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep,
        enable_async_checkpointing=async_save,
        create=True,
        multiprocessing_options=ocp.options.MultiprocessingOptions(
          barrier_sync_key_prefix=barrier_prefix
        ),
      ),
    )

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, state: TrainState, metrics: dict | None = None) -> None:
    """Saves `state` at its step, with `metrics` (plain JSON values) beside it when given."""
    step = int(jax.device_get(state.step))
    if step in self._manager.all_steps():
      return  # Orbax refuses to write a step twice; saving the same step again changes nothing.
    self.check_save()  # Orbax waits for the previous save first: report it if it failed.
    try:
      items = {"state": ocp.args.StandardSave(_as_tree(state))}
      if metrics is not None:
        items["metrics"] = ocp.args.JsonSave(metrics)
      self._manager.save(step, args=ocp.args.Composite(**items), force=True)
    except Exception as e:  # Orbax and TensorStore raise many types.
      raise self._save_error(step, _first_line(e)) from None
    self._pending_step = step

  def check_save(self) -> None:
    """Raises `CheckpointError` if the last save has failed; cheap enough for every step."""
    if self._pending_step is None or self._manager.is_saving_in_progress():
      return
    step, self._pending_step = self._pending_step, None
    # A save that completed was renamed from its temporary directory to `STEP`.
    if not (epath.Path(self.directory) / str(step)).exists():
      raise self._save_error(step, self._errors.cause or "the checkpoint was not written")

  def _save_error(self, step: int, cause: str) -> CheckpointError:
    kept = [
      s
      for s in self._manager.all_steps()
      if s != step and (epath.Path(self.directory) / str(s)).exists()
    ]
    return CheckpointError(
      f"checkpoint {os.path.join(self.directory, str(step))} could not be saved: {cause}. Stopped;"
      f" the earlier checkpoints ({', '.join(map(str, sorted(kept))) or 'none'}) are intact"
    )

  def restore_state(self, step: int, template: TrainState) -> TrainState:
    """Restores into the shapes, dtypes and shardings of `template` (this job's mesh, whatever
    the topology that wrote the checkpoint)."""
    abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), _as_tree(template)
    )
    restored = self._manager.restore(
      step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
    )
    return TrainState(**restored["state"])

  def restore_metrics(self, step: int) -> dict:
    """The metrics saved beside the state at `step`."""
    return dict(
      self._manager.restore(step, args=ocp.args.Composite(metrics=ocp.args.JsonRestore()))[
        "metrics"
      ]
    )

  def restore_readable(
    self, template: TrainState, *, restore_step: int, set_aside_dir: str
  ) -> tuple[TrainState | None, int]:
    """Restores `restore_step`, or else the latest checkpoint that can be read.

    A checkpoint that cannot be read is moved to `set_aside_dir` (never deleted) and the one
    before it is tried; with `restore_step`, the checkpoints after it are set aside too, so
    that the run can write those steps again. Returns (state, step), or (None, 0) when there
    is no checkpoint.
    """
    steps = sorted(self.all_steps(), reverse=True)
    if restore_step:
      if restore_step not in steps:
        raise CheckpointError(
          f"--restore_step={restore_step}: no checkpoint at that step in"
          f" {self.directory} (there are: {sorted(steps) or 'none'})"
        )
      candidates, newer = [restore_step], [s for s in steps if s > restore_step]
    else:
      candidates, newer = steps, []
    unreadable = []
    silence_abandoned_reads()  # before: a failing restore reports them while it fails
    for step in candidates:
      try:
        state = self.restore_state(step, template)
      except Exception as e:  # Orbax and TensorStore raise many types for a damaged checkpoint.
        gc.collect()  # Let the abandoned reads go now, not in the middle of training.
        unreadable.append((step, _first_line(e)))
        logging.warning(
          "Checkpoint %s cannot be read: %s",
          os.path.join(self.directory, str(step)),
          unreadable[-1][1],
        )
        continue
      self.set_aside([s for s, _ in unreadable] + newer, set_aside_dir)
      return state, step
    if unreadable:
      raise CheckpointError(
        f"no readable checkpoint in {self.directory}: "
        + "; ".join(f"step {s}: {reason}" for s, reason in unreadable)
        + " (use --restore_step or a new --workdir)"
      )
    return None, 0

  def set_aside(self, steps: list[int], set_aside_dir: str) -> None:
    """Moves these checkpoints to `set_aside_dir` (never deleted; a name taken gets a suffix)."""
    if not steps:
      return
    if jax.process_index() == 0:
      paths.make_dirs(set_aside_dir)
      for step in steps:
        target = os.path.join(set_aside_dir, str(step))
        suffix = 1
        while paths.exists(target):
          target, suffix = os.path.join(set_aside_dir, f"{step}.{suffix}"), suffix + 1
        paths.move(os.path.join(self.directory, str(step)), target)
        logging.warning("Moved checkpoint step %d aside to %s", step, target)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices("checkpoints set aside")
    self._manager.reload()

  def wait_until_finished(self) -> None:
    """Waits for the last save; raises `CheckpointError` if it failed (unless already reported)."""
    try:
      self._manager.wait_until_finished()
    except Exception as e:
      if self._pending_step is not None:
        raise self._save_error(self._pending_step, self._errors.cause or _first_line(e)) from None
      return  # The failure was reported by `check_save` already.
    self.check_save()

  def close(self) -> None:
    try:
      self._manager.close()
    finally:
      logging.get_absl_logger().removeFilter(self._errors)
