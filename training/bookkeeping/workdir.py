"""The workdir: checks that a run can keep what it writes, made before any training starts,
and the lock that keeps a second run out of it.

A workdir may be local (or a shared filesystem) or on an object store (`gs://...`, through
`pipeline.paths`). Object stores have no free-space figure and no file locks: there the space
check is skipped and the lock is a warning (keep one run per workdir yourself).
"""

import os
import shutil
import socket
import time

from absl import logging

from pipeline import paths
from training.config import ConfigError


def check_writable(workdir: str) -> None:
  """Creates `workdir` if needed and proves a file can be written there."""
  probe = os.path.join(workdir, f".write_probe.{socket.gethostname()}.{os.getpid()}")
  try:
    paths.make_dirs(workdir)
    paths.write_text(probe, "ok")
    paths.remove(probe)
  except OSError as e:
    raise ConfigError(f"--workdir={workdir}: cannot write there ({e.strerror or e})") from None


def require_free_space(workdir: str, free_bytes: int, checkpoint_bytes: int) -> None:
  """Refuses to start when the disk cannot hold the next checkpoint and its temporary copy."""
  needed = 2 * checkpoint_bytes
  if free_bytes is not None and free_bytes < needed:
    raise ConfigError(
      f"--workdir={workdir}: {free_bytes / 2**20:.1f} MiB free, but a checkpoint of this"
      f" model needs about {needed / 2**20:.1f} MiB while it is written; free some"
      " space or choose another --workdir"
    )


def free_bytes(workdir: str) -> int | None:
  """Free bytes where the workdir is; None on an object store (no such limit to check)."""
  return shutil.disk_usage(workdir).free if paths.is_local(workdir) else None


class WorkdirLock:
  """One run per workdir: an exclusive lock on `WORKDIR/.lock`, held while the run trains.

  The lock is an OS file lock (`flock`), so it ends with the process that holds it, however it
  ends: a run killed with SIGKILL leaves a stale file that the next run simply takes over. The
  file says who holds it (host, process id, start time) so that a refused run can say so. In a
  multi-process job only process 0 takes it: the job as a whole holds the workdir.
  """

  def __init__(self, workdir: str, enabled: bool = True):
    self.path, self.enabled, self._file = os.path.join(workdir, ".lock"), enabled, None

  def __enter__(self) -> "WorkdirLock":
    if not self.enabled:
      return self
    if not paths.is_local(self.path):
      logging.warning(
        "--workdir=%s is on an object store, which has no locks: make sure no other run uses it",
        os.path.dirname(self.path),
      )
      return self
    import fcntl

    handle = open(self.path, "a+", encoding="utf-8")
    try:
      fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      handle.seek(0)
      holder = handle.read().strip() or "another process"
      handle.close()
      raise ConfigError(
        f"--workdir={os.path.dirname(self.path)} is in use by {holder}; wait for that run"
        " to end (or stop it), or choose another --workdir"
      ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(
      f"host {socket.gethostname()} pid {os.getpid()}, running since "
      f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n"
    )
    handle.flush()
    self._file = handle
    return self

  def __exit__(self, *exc_info) -> None:
    if self._file is not None:
      self._file.close()  # closing releases the lock
      self._file = None
