"""How many threads one call of a CPU kernel may use: the cores this process may run on, or
`$RNN_KERNEL_THREADS`, which launchers of several processes on one machine set to each one's share."""

import os

THREADS_ENV = "RNN_KERNEL_THREADS"


def usable_cores() -> int:
  """The cores this process may run on."""
  return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def kernel_threads() -> int:
  """`$RNN_KERNEL_THREADS`, or the cores this process may run on."""
  value = os.environ.get(THREADS_ENV, "")
  if not value:
    return usable_cores()
  try:
    count = int(value)
  except ValueError:
    count = 0
  if count < 1:
    raise ValueError(f"{THREADS_ENV}={value!r}: expected a positive whole number")
  return count
