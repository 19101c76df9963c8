"""Whether a process on this machine is still running: how a later process tells a temporary
file or directory left by a killed one (a kernel build, a prepare) from one still being written."""

import os


def is_alive(pid: int) -> bool:
  """Whether process `pid` exists on this machine (another user's counts as alive)."""
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True  # another user's live process
  return True
