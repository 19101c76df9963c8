"""A program for tests/test_multihost.py, run as several processes by `launch.local`: two
Checkpointers in one job save at the same steps, as the trainer's do (its latest checkpoints in
the background, its best checkpoint at once). Each process staggers its saves differently, so
that one process's background save is still finishing while another starts the next save.
Prints the steps it finds in both directories at the end."""

import json
import os
import time

from absl import app, flags

from launch import distributed

_WORKDIR = flags.DEFINE_string(
  "workdir", None, "where the two checkpoint directories go", required=True
)
_STEPS = flags.DEFINE_integer("steps", 60, "saves into each directory")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "set by launch.local")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "set by launch.local")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "set by launch.local")


def main(argv):
  del argv
  distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value, os.environ)
  import jax
  import jax.numpy as jnp

  from training.bookkeeping.checkpoints import Checkpointer
  from training.state import TrainState

  replicated = jax.sharding.NamedSharding(
    jax.make_mesh((jax.device_count(),), ("data",)), jax.sharding.PartitionSpec()
  )
  # Made by a jitted function so that every process holds its part of one global array.
  make_state = jax.jit(
    lambda step: TrainState(
      step=step,
      params={"w": jnp.ones((512, 512)) * step},
      opt_state={},
      rng=jnp.zeros(2, jnp.uint32),
      carry=None,
    ),
    out_shardings=replicated,
  )
  latest = Checkpointer(os.path.join(_WORKDIR.value, "checkpoints"), max_to_keep=2, async_save=True)
  best = Checkpointer(
    os.path.join(_WORKDIR.value, "best_checkpoint"), max_to_keep=1, async_save=False
  )
  for step in range(1, _STEPS.value + 1):
    state = make_state(jnp.int32(step))
    latest.save(state)
    time.sleep(0.002 * ((step * (jax.process_index() + 3)) % 17))
    best.save(state)
  latest.wait_until_finished()
  print("steps:", json.dumps({"latest": latest.all_steps(), "best": best.all_steps()}), flush=True)
  latest.close()
  best.close()


if __name__ == "__main__":
  app.run(main)
