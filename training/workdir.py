"""Checks that a run can keep what it writes, made before any training starts."""

import os
import shutil

from training.config import ConfigError


def check_writable(workdir: str) -> None:
  """Creates `workdir` if needed and proves a file can be written there."""
  probe = os.path.join(workdir, f".write_probe.{os.getpid()}")
  try:
    os.makedirs(workdir, exist_ok=True)
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise ConfigError(f"--workdir={workdir}: cannot write there ({e.strerror or e})") from None


def require_free_space(workdir: str, free_bytes: int, checkpoint_bytes: int) -> None:
  """Refuses to start when the disk cannot hold the next checkpoint and its temporary copy."""
  needed = 2 * checkpoint_bytes
  if free_bytes < needed:
    raise ConfigError(f"--workdir={workdir}: {free_bytes / 2**20:.1f} MiB free, but a checkpoint of this"
                      f" model needs about {needed / 2**20:.1f} MiB while it is written; free some"
                      " space or choose another --workdir")


def free_bytes(workdir: str) -> int:
  return shutil.disk_usage(workdir).free
