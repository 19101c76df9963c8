"""oneDNN's fused LSTM (the kernel behind PyTorch's `nn.LSTM` on x86-64 CPUs) as a JAX layer.

An optional fast path, chosen at run time: `available()` is true on a Linux x86-64 CPU backend
where the oneDNN wheels are installed (`onednn-cpu-gomp`, and `onednn-devel-cpu-gomp` for its
headers: the package depends on them there) and a C++ compiler is found. The handler
(`onednn_lstm.cc`) is compiled once into a cache directory (`$RNN_KERNEL_CACHE`, default
`~/.cache/rnn-at-scale`) and registered with `jax.ffi`. Everywhere else, and for what the kernel
does not do (masks, resets, the GRU and Elman cells), the portable layer in
`training.model.recurrence` runs; it is also the reference the tests hold this one to.

`lstm(x, W_x, W_h, b, h0, c0)` computes what `recurrence.scan_layer` computes for an LSTM
without masks or resets, input projection included, and its gradients (oneDNN's backward
primitive, through `jax.custom_vjp`).
"""

import contextlib
import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import threading

import jax
import jax.numpy as jnp
import numpy as np

from launch.cores import kernel_threads
from launch.processes import is_alive

_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "onednn_lstm.cc")
_TARGETS = {
  "onednn_lstm_forward_training": "OnednnLstmForwardTraining",
  "onednn_lstm_forward_inference": "OnednnLstmForwardInference",
  "onednn_lstm_backward": "OnednnLstmBackward",
}
_lock = threading.Lock()
_library: ctypes.CDLL | None = None
_unavailable: str | None = None


def _onednn_prefix() -> str | None:
  """Where the oneDNN wheels put `lib/libdnnl.so` and `include/` (the environment's prefix)."""
  for prefix in (
    sys.prefix,
    sysconfig.get_config_var("prefix") or "",
    os.environ.get("DNNL_ROOT", ""),
  ):
    if (
      prefix
      and os.path.exists(os.path.join(prefix, "lib", "libdnnl.so"))
      and os.path.exists(os.path.join(prefix, "include", "oneapi", "dnnl", "dnnl.hpp"))
    ):
      return prefix
  return None


def _cache_dir() -> str:
  return os.environ.get("RNN_KERNEL_CACHE") or os.path.join(
    os.path.expanduser("~"), ".cache", "rnn-at-scale"
  )


def _build(prefix: str) -> str:
  """Compiles the handler unless a build of this source for this jaxlib and oneDNN exists."""
  with open(_SOURCE, "rb") as f:
    source = f.read()
  key = hashlib.sha256(
    source + jax.ffi.include_dir().encode() + prefix.encode() + jax.__version__.encode()
  )
  out = os.path.join(_cache_dir(), f"onednn_lstm-{key.hexdigest()[:16]}.so")
  if os.path.exists(out):
    return out
  compiler = (
    os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
  )
  if not compiler:
    raise RuntimeError("no C++ compiler (g++, c++ or clang++; or set CXX)")
  os.makedirs(_cache_dir(), exist_ok=True)
  _remove_dead_builds(_cache_dir())
  tmp = f"{out}.{os.getpid()}.tmp"
  lib = os.path.join(prefix, "lib")
  command = [
    compiler,
    "-O2",
    "-std=c++17",
    "-fopenmp",
    "-shared",
    "-fPIC",
    "-o",
    tmp,
    _SOURCE,
    f"-I{jax.ffi.include_dir()}",
    f"-I{os.path.join(prefix, 'include')}",
    f"-L{lib}",
    "-ldnnl",
    f"-Wl,-rpath,{lib}",
  ]
  try:
    result = subprocess.run(command, capture_output=True, text=True)
  except OSError as e:
    raise RuntimeError(f"the C++ compiler {compiler} did not start: {e.strerror}") from None
  if result.returncode != 0:
    # One line for the user (the compiler's first error); the whole output beside the build.
    log = f"{out}.log"
    with open(log, "w") as f:
      f.write(result.stdout + result.stderr)
    errors = (
      [line for line in result.stderr.splitlines() if "error" in line]
      or result.stderr.splitlines()
      or [""]
    )
    with contextlib.suppress(OSError):
      os.remove(tmp)
    raise RuntimeError(
      f"compiling {os.path.basename(_SOURCE)} with {compiler} failed: {errors[0].strip()}"
      f" (the whole output: {log})"
    )
  os.replace(tmp, out)  # atomic: another process may be building the same file
  return out


def _remove_dead_builds(directory: str) -> None:
  """Removes the partial outputs (`NAME.PID.tmp`) of builds whose process is gone (killed while
  compiling); a build still running keeps its own."""
  for name in os.listdir(directory):
    parts = name.rsplit(".", 2)
    if len(parts) == 3 and parts[2] == "tmp" and parts[1].isdigit() and not is_alive(int(parts[1])):
      with contextlib.suppress(OSError):
        os.remove(os.path.join(directory, name))


def _load() -> ctypes.CDLL:
  """Builds, loads and registers the handlers once per process; raises why when it cannot."""
  global _library, _unavailable
  with _lock:
    if _library is not None:
      return _library
    if _unavailable is not None:
      raise RuntimeError(_unavailable)
    try:
      if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        raise RuntimeError(
          f"oneDNN wheels exist for Linux x86-64 only (this is {platform.system()} {platform.machine()})"
        )
      prefix = _onednn_prefix()
      if prefix is None:
        raise RuntimeError(
          f"oneDNN is not installed in this environment ({sys.prefix}): install the"
          " onednn-cpu-gomp and onednn-devel-cpu-gomp wheels (pip install -e . does)"
        )
      library = ctypes.CDLL(_build(prefix))
      for target, symbol in _TARGETS.items():
        jax.ffi.register_ffi_target(
          target, jax.ffi.pycapsule(getattr(library, symbol)), platform="cpu"
        )
      library.onednn_lstm_workspace_bytes.restype = ctypes.c_int64
      library.onednn_lstm_workspace_bytes.argtypes = [ctypes.c_int64] * 6
      library.onednn_lstm_calls.restype = ctypes.c_int64
      library.onednn_lstm_calls.argtypes = [ctypes.c_int64]
    except (OSError, RuntimeError) as e:
      _unavailable = str(e)
      raise RuntimeError(_unavailable) from None
    _library = library
    return library


def available() -> bool:
  """Whether the fused LSTM can run here (a CPU backend with oneDNN and a compiler)."""
  if jax.default_backend() != "cpu":
    return False
  try:
    _load()
    return True
  except RuntimeError:
    return False  # (the trainer's "Time loop" line says why)


def why_unavailable() -> str | None:
  """Why `available()` is False (None when it is True)."""
  if jax.default_backend() != "cpu":
    return f"the backend is {jax.default_backend()}, not cpu"
  return None if available() else _unavailable


CALL_KINDS = ("forward_training", "forward_inference", "backward")


def calls() -> dict[str, int]:
  """How many times this process ran each of the kernel's calls (zeros where it never loaded):
  the evidence that a run used the kernel rather than the scan."""
  if _library is None:
    return dict.fromkeys(CALL_KINDS, 0)
  return {kind: int(_library.onednn_lstm_calls(which)) for which, kind in enumerate(CALL_KINDS)}


def threads() -> int:
  """How many threads one call uses: `$RNN_KERNEL_THREADS`, or the cores this process may run on."""
  return kernel_threads()


# Rows are split across the threads while a layer's recurrent weights (H x 4H floats) are at most
# this large, about a core's L2 cache: each thread then reads them from its own cache at every
# step. Larger weights are better shared: one group, whose OpenMP team of every thread splits
# each step's matmul. On a 2-core x86-64 CPU (bench.throughput) the split was 1.3-1.5x faster at
# 128-256 units, and 1.3x slower at 512 units.
SPLIT_MAX_WEIGHT_BYTES = 1 << 20


def split(batch: int, hidden: int) -> tuple[int, int]:
  """(groups of rows, OpenMP threads per group) for one call (fixed when the step is traced, so
  a compiled step always splits alike; the results depend on it in the last bits)."""
  if 4 * hidden * hidden * 4 <= SPLIT_MAX_WEIGHT_BYTES:
    return max(1, min(batch, threads())), 1
  return 1, threads()


@functools.lru_cache(maxsize=None)
def _workspace_bytes(
  steps: int, batch: int, inputs: int, hidden: int, chunks: int, team: int
) -> int:
  size = _load().onednn_lstm_workspace_bytes(steps, batch, inputs, hidden, chunks, team)
  if size < 0:
    raise RuntimeError(
      f"oneDNN cannot make an LSTM of shape T={steps} N={batch} C={inputs} H={hidden}"
    )
  return size


def _forward(training: bool, x, w_x, w_h, b, h0, c0):
  steps, batch, inputs = x.shape
  hidden = w_h.shape[0]
  chunks, team = split(batch, hidden)
  state = jax.ShapeDtypeStruct((batch, hidden), jnp.float32)
  results = [jax.ShapeDtypeStruct((steps, batch, hidden), jnp.float32), state, state]
  if training:
    results.append(
      jax.ShapeDtypeStruct(
        (_workspace_bytes(steps, batch, inputs, hidden, chunks, team),), jnp.uint8
      )
    )
  name = "onednn_lstm_forward_training" if training else "onednn_lstm_forward_inference"
  return jax.ffi.ffi_call(name, results, vmap_method="sequential")(
    x, w_x, w_h, b, h0, c0, chunks=np.int64(chunks), team=np.int64(team)
  )


@jax.custom_vjp
def lstm(x, w_x, w_h, b, h0, c0):
  """x [T, B, C] time-major, W_x [C, 4H], W_h [H, 4H], b [4H] (gates i, f, g, o), h0 and c0
  [B, H] -> (outputs [T, B, H], h_T [B, H], c_T [B, H]), all float32."""
  return tuple(_forward(False, x, w_x, w_h, b, h0, c0))


def _lstm_fwd(x, w_x, w_h, b, h0, c0):
  y, h_t, c_t, workspace = _forward(True, x, w_x, w_h, b, h0, c0)
  return (y, h_t, c_t), (x, w_x, w_h, b, h0, c0, y, h_t, c_t, workspace)


def _lstm_bwd(saved, cotangents):
  x, w_x, w_h, b, h0, c0 = saved[:6]
  d_y, d_h_t, d_c_t = cotangents
  results = [jax.ShapeDtypeStruct(a.shape, jnp.float32) for a in (x, w_x, w_h, b, h0, c0)]
  # As the forward call (its workspace is laid out so)
  chunks, team = split(x.shape[1], w_h.shape[0])
  return tuple(
    jax.ffi.ffi_call("onednn_lstm_backward", results, vmap_method="sequential")(
      *saved, d_y, d_h_t, d_c_t, chunks=np.int64(chunks), team=np.int64(team)
    )
  )


lstm.defvjp(_lstm_fwd, _lstm_bwd)
