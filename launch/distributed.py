"""Joining a multi-process JAX job: from flags, from the cluster's environment, or not at all.

`initialize()` must run before anything touches a JAX device. With `--coordinator_address`,
`--num_processes` and `--process_id` it connects to those; without them, under a cluster that
JAX recognises (SLURM with several tasks, a Kubernetes indexed Job, a multi-host Cloud TPU
slice) it lets `jax.distributed.initialize()` read the environment; otherwise (one process) it
does nothing.
"""

from collections.abc import Mapping

# JAX is imported only by the functions that join a job: the trainer imports this module before
# it starts itself again with huge pages (launch/huge_pages.py), and importing JAX first (about
# two seconds on two cores) would be paid twice by every run.


class LaunchError(ValueError):
  """Inconsistent distributed flags; the message names the flag."""


def detect_cluster(env: Mapping[str, str]) -> str | None:
  """The multi-process cluster whose variables are in `env`, or None for a single process."""
  if "SLURM_JOB_ID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
    return "SLURM"
  if "KUBERNETES_SERVICE_HOST" in env and "JOB_COMPLETION_INDEX" in env:
    return "Kubernetes"
  if "," in env.get("TPU_WORKER_HOSTNAMES", ""):
    return "Cloud TPU"
  return None


def initialize(
  coordinator_address: str | None,
  num_processes: int | None,
  process_id: int | None,
  env: Mapping[str, str],
) -> str:
  """Joins the job; returns how ("single process", "flags", or the cluster's name)."""
  given = {
    "coordinator_address": coordinator_address,
    "num_processes": num_processes,
    "process_id": process_id,
  }
  if any(value is not None for value in given.values()):
    missing = [f"--{name}" for name, value in given.items() if value is None]
    if missing:
      raise LaunchError(f"{', '.join(missing)}: needed with the other distributed flags")
    if not 0 <= process_id < num_processes:
      raise LaunchError(
        f"--process_id={process_id}: must be in [0, --num_processes={num_processes})"
      )
    import jax

    _use_cpu_collectives()
    jax.distributed.initialize(
      coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id
    )
    return "flags"
  cluster = detect_cluster(env)
  if cluster is None:
    return "single process"
  import jax

  _use_cpu_collectives()
  jax.distributed.initialize()
  return cluster


def _use_cpu_collectives() -> None:
  # Cross-process collectives on the CPU backend need an implementation; gloo ships with
  # jaxlib. It changes nothing for GPU or TPU devices.
  import jax

  jax.config.update("jax_cpu_collectives_implementation", "gloo")
