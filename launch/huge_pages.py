"""Large buffers on transparent huge pages (Linux with glibc): a train step's page faults.

XLA on a CPU allocates each step's large buffers (activations, oneDNN's workspace, the step's
temporaries: hundreds of MB) with `malloc`, which maps anything over 32 MB afresh from the
kernel and unmaps it when freed. Every step then touches new pages, one fault per 4 KiB: about
200,000 faults per step of the 2 x 512 character LM (800 MB), which made oneDNN's forward pass
half again as slow inside the step as alone. With glibc's `glibc.malloc.hugetlb=1` tunable,
malloc asks for transparent huge pages on those mappings (`madvise`): one fault per 2 MiB, and
the same step ran 25-30% faster (README, Speed).

A tunable is read when the process starts, so `reexec_with_huge_pages()` starts the program
again, once, with it added to `GLIBC_TUNABLES`, where that can pay: Linux, glibc 2.35 or later,
transparent huge pages on ("always" or "madvise"), the tunable not already set by the user.
`RNN_HUGE_PAGES=0` turns it off.
"""

import os
import platform
import sys

TUNABLE = "glibc.malloc.hugetlb"
OPT_OUT = "RNN_HUGE_PAGES"
_THP_MODE = "/sys/kernel/mm/transparent_hugepage/enabled"


def _glibc_at_least(major: int, minor: int) -> bool:
  name, version = platform.libc_ver()
  if name != "glibc" or not version:
    return False
  try:
    return tuple(int(part) for part in version.split(".")[:2]) >= (major, minor)
  except ValueError:
    return False


def _huge_pages_enabled() -> bool:
  try:
    with open(_THP_MODE) as f:
      mode = f.read()  # e.g. "always [madvise] never": the bracketed word is the mode
  except OSError:
    return False
  return "[always]" in mode or "[madvise]" in mode


def _tunables(environ) -> list[str]:
  return [t for t in environ.get("GLIBC_TUNABLES", "").split(":") if t]


def is_set(environ) -> bool:
  """Whether `environ` sets the tunable (to any value)."""
  return any(t.startswith(f"{TUNABLE}=") for t in _tunables(environ))


def wanted(environ) -> bool:
  """Whether this process should be started again with the tunable."""
  if environ.get(OPT_OUT, "1") == "0" or is_set(environ):
    return False
  return sys.platform.startswith("linux") and _glibc_at_least(2, 35) and _huge_pages_enabled()


def with_tunable(environ) -> dict:
  """`environ` with the tunable added to any the user set."""
  return {**environ, "GLIBC_TUNABLES": ":".join([*_tunables(environ), f"{TUNABLE}=1"])}


def without_tunable(environ) -> dict:
  """`environ` with the tunable taken out of `GLIBC_TUNABLES` (the others kept)."""
  others = [t for t in _tunables(environ) if not t.startswith(f"{TUNABLE}=")]
  return {**environ, "GLIBC_TUNABLES": ":".join(others)}


def reexec_with_huge_pages() -> None:
  """Starts this program again with the tunable, when `wanted`; else returns. Call it first
  thing in an entry point: nothing done before it survives."""
  if not wanted(os.environ):
    return
  sys.stdout.flush()
  sys.stderr.flush()
  # sys.orig_argv is the command line as given (`python -m training.train ...` or a console
  # script's path), so the same program starts, with the same arguments and process id.
  os.execve(sys.executable, sys.orig_argv, with_tunable(os.environ))
