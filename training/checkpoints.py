"""Orbax checkpoints: the train state and each process's data-iterator position, together.

One checkpoint is a directory `checkpoints/STEP/` with two items: `state` (the `TrainState`
as a pytree: step, params, optimiser state, RNG, carried hidden state) and `data` (one Grain
iterator-state file per process). Orbax writes to a temporary directory and renames it when
complete, so a crash mid-save never leaves a checkpoint that `latest_step` would pick.
"""

import dataclasses

import grain
import jax
import orbax.checkpoint as ocp

from training.train_state import TrainState


def _as_tree(state: TrainState) -> dict:
  # Orbax stores plain dicts of arrays; field names become the directory's keys.
  return {field.name: getattr(state, field.name) for field in dataclasses.fields(state)}


class Checkpointer:
  """Saves and restores (train state, data iterator) pairs under one directory."""

  def __init__(self, directory: str, *, max_to_keep: int, async_save: bool):
    self._manager = ocp.CheckpointManager(
        directory, options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, enable_async_checkpointing=async_save, create=True))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, state: TrainState, data_iterator) -> None:
    step = int(jax.device_get(state.step))
    if step in self._manager.all_steps():
      return  # Orbax refuses to write a step twice; saving the same step again changes nothing.
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(_as_tree(state)),
        data=grain.checkpoint.CheckpointSave(data_iterator)), force=True)

  def restore(self, step: int, template: TrainState, data_iterator) -> TrainState:
    """Restores into the shapes, dtypes and shardings of `template`; moves the iterator."""
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), _as_tree(template))
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract),
        data=grain.checkpoint.CheckpointRestore(data_iterator)))
    return TrainState(**restored["state"])

  def wait_until_finished(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()
