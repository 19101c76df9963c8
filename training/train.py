r"""Trains a recurrent model: `python -m training.train --workdir=DIR [flags]`.

With no data flags it trains on a generated task (per token by default, `--task=classify` for
per sequence). Running the same command on the same workdir resumes from its last checkpoint.
Experiments are flag files: `--flagfile=configs/NAME.flags`.
"""

import os
import sys

from absl import app, flags, logging

from launch import cli, distributed, huge_pages
from pipeline.errors import DataError
from training.config import ConfigError
from training.config_flags import config_from_flags, define_config_flags

_WORKDIR = flags.DEFINE_string(
  "workdir", None, "Directory for checkpoints, metrics and the vocabulary.", required=True
)
define_config_flags()  # every setting of a run (training/config.py)

# Multi-process jobs (see launch/): all three, or none (then the cluster's environment decides).
_COORDINATOR = flags.DEFINE_string(
  "coordinator_address", None, "HOST:PORT of process 0's coordinator."
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the job.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index, 0..num_processes-1.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  cli.quiet_libraries()
  try:
    how = distributed.initialize(
      _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value, os.environ
    )
  except distributed.LaunchError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  import jax

  if jax.process_count() > 1 and _jax_version() >= (0, 12):
    # On jax 0.12, the processes of a job that read their executables from a persistent
    # compilation cache (JAX_COMPILATION_CACHE_DIR) waited for each other for good: a 2 x 2 job
    # ran cold and hung warm. Each process compiles for itself instead.
    jax.config.update("jax_enable_compilation_cache", False)
  if jax.process_index() != 0:
    logging.set_verbosity(logging.WARNING)  # Process 0 reports; the others speak only of trouble.
  logging.info(
    "Started (%s): process %d of %d, %d devices in all",
    how,
    jax.process_index(),
    jax.process_count(),
    jax.device_count(),
  )
  if huge_pages.is_set(os.environ):
    logging.info(
      "Large buffers on transparent huge pages (GLIBC_TUNABLES=%s; %s=0 turns it off)",
      os.environ["GLIBC_TUNABLES"],
      huge_pages.OPT_OUT,
    )
  # Imported here so that `--help` and flag errors do not pay for importing JAX.
  from training.bookkeeping.checkpoints import CheckpointError
  from training.loop.trainer import TrainingError, train_and_evaluate

  try:
    summary = train_and_evaluate(config_from_flags(), _WORKDIR.value)
  except (ConfigError, DataError) as e:
    # A mistake in flags or data: one line naming the culprit, no traceback.
    _exit_with_error(e, 2)
  except (CheckpointError, TrainingError) as e:
    _exit_with_error(e, 1)
  if not summary.get("preempted"):  # (a preempted run has said how to resume)
    from training.bookkeeping.reports import summary_line

    logging.info("%s", summary_line(summary, os.path.join(_WORKDIR.value, "summary.json")))
  if jax.process_count() > 1:
    # Leave the job together, now, while every process is here. Left to the interpreter's exit,
    # jax 0.12.1 (Python 3.13) kept a process of a finished 2 x 2 job waiting for good.
    jax.distributed.shutdown()


def _jax_version() -> tuple[int, ...]:
  import jax

  return tuple(int(part) for part in jax.__version__.split(".")[:2])


def _exit_with_error(error: Exception, status: int) -> None:
  print(f"error: {error}", file=sys.stderr)
  import jax

  if jax.process_count() > 1:
    # A clean exit shuts jax.distributed down, which waits for every process at a barrier;
    # the others may be waiting for this one in a collective, and the job would hang for the
    # barrier's minutes. Exit now: the launcher (or the cluster) then stops the others.
    sys.stderr.flush()
    sys.stdout.flush()
    os._exit(status)
  sys.exit(status)


def run_main():
  """Console entry point (`rnn-train`)."""
  huge_pages.reexec_with_huge_pages()  # first: it starts the program again
  cli.run(main, __name__)


if __name__ == "__main__":
  run_main()
