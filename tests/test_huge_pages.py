"""The trainer restarts itself once with glibc's huge-page tunable where that can pay
(launch.huge_pages), keeping the user's own tunables, and never when told not to."""

import os
import subprocess
import sys

import pytest

from launch import huge_pages

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = [
  "--hidden_size=8",
  "--embed_size=8",
  "--head_widths=8",
  "--batch_size=4",
  "--seq_len=8",
  "--num_steps=2",
  "--eval_every=0",
  "--log_every=1",
]
LINE = "Large buffers on transparent huge pages"


def test_the_tunable_joins_the_users_own_and_is_not_wanted_twice_or_when_turned_off():
  assert huge_pages.with_tunable({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2", "A": "b"}) == {
    "GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1",
    "A": "b",
  }
  assert huge_pages.with_tunable({})["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=1"
  # The user's choice stands
  assert not huge_pages.wanted({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"})
  assert not huge_pages.wanted({huge_pages.OPT_OUT: "0"})
  # What the PyTorch peer gets: the user's other tunables, without this one.
  assert huge_pages.without_tunable(
    {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"}
  ) == {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}


def run_trainer(workdir, **env):
  result = subprocess.run(
    [sys.executable, "-m", "training.train", f"--workdir={workdir}", *TINY],
    cwd=ROOT,
    env={**os.environ, **env},
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stderr


def huge_pages_allowed() -> str | None:
  """Where the kernel and glibc allow huge pages, found without `huge_pages` (whose own checks
  are what is tested): Linux, glibc 2.35 or later (`confstr`), transparent huge pages in
  "always" or "madvise" mode. Returns what was found, or None."""
  if not sys.platform.startswith("linux"):
    return None
  try:
    name, version = os.confstr("CS_GNU_LIBC_VERSION").split()
    mode = open("/sys/kernel/mm/transparent_hugepage/enabled").read().split("[")[1].split("]")[0]
  except (ValueError, OSError, IndexError):
    return None
  major, minor = (int(part) for part in version.split(".")[:2])
  if name != "glibc" or (major, minor) < (2, 35) or mode not in ("always", "madvise"):
    return None
  return f"{name} {version}, transparent huge pages {mode}"


def test_huge_pages_are_wanted_wherever_the_kernel_and_glibc_allow_them():
  allowed = huge_pages_allowed()
  assert huge_pages.wanted({}) == (allowed is not None), allowed
  if allowed is None:
    pytest.skip("huge pages are not allowed here (Linux, glibc >= 2.35, transparent huge pages on)")


@pytest.mark.slow
def test_the_trainer_runs_on_huge_pages_unless_turned_off(tmp_path):
  if huge_pages_allowed() is None:
    pytest.skip("huge pages are not allowed here (Linux, glibc >= 2.35, transparent huge pages on)")
  env = {"GLIBC_TUNABLES": "glibc.malloc.arena_max=4"}
  assert f"{LINE} (GLIBC_TUNABLES=glibc.malloc.arena_max=4:glibc.malloc.hugetlb=1;" in run_trainer(
    tmp_path / "on", **env
  )
  assert LINE not in run_trainer(tmp_path / "off", **env, **{huge_pages.OPT_OUT: "0"})


def test_the_trainer_starts_itself_again_before_importing_jax():
  # Whatever the first process imports is imported again after the restart: JAX (about two
  # seconds on two cores) must wait for the process that trains.
  probe = (
    "import sys\n"
    "import training.train\n"
    "assert 'jax' not in sys.modules, sorted(m for m in sys.modules if m.startswith('jax'))[:5]\n"
  )
  result = subprocess.run(
    [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120
  )
  assert result.returncode == 0, result.stderr[-3000:]
