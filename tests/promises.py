"""Where the README promises a fast path, its tests must run, not skip.

oneDNN's LSTM is promised on Linux x86-64 with a CPU backend and a C++ compiler: there the
package installs the oneDNN wheels (pyproject.toml) and compiles the handler at first use, so a
kernel that is unavailable there is a broken promise and its tests fail, saying why. Elsewhere
they skip with the reason, and pytest's `-ra` lists every skip.
"""

import os
import platform
import shutil

import jax
import pytest

from training.model.kernels import onednn


def onednn_promise() -> str | None:
  """Why oneDNN's LSTM must run on this machine, or None where it need not."""
  if platform.system() != "Linux" or platform.machine() != "x86_64":
    return None
  if jax.default_backend() != "cpu":
    return None
  compiler = (
    os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
  )
  if not compiler:
    return None
  return f"Linux x86-64, a CPU backend and the C++ compiler {compiler}"


def require_onednn() -> None:
  """Returns where the kernel runs; fails where it is promised and does not; skips elsewhere."""
  if onednn.available():
    return
  promise = onednn_promise()
  if promise:
    pytest.fail(
      f"oneDNN's LSTM must run here ({promise}) but is unavailable: {onednn.why_unavailable()}"
    )
  pytest.skip(f"oneDNN's LSTM is not promised here and is unavailable: {onednn.why_unavailable()}")


@pytest.fixture
def onednn_kernel():
  require_onednn()


# Marks a test that needs the kernel (see `require_onednn`).
needs_onednn = pytest.mark.usefixtures("onednn_kernel")
