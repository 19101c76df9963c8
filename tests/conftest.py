"""Settings for the whole suite: a shared compilation cache, and what keeps the tests meaningful
on every backend (nothing changes on a CPU)."""

import atexit
import os
import shutil
import tempfile

# Tests start trainers as subprocesses beside the test process: by default JAX takes 75% of a
# GPU's memory in the first process that touches it, and the next one could not start.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

# The trainers that tests start compile the same tiny models again and again (half of such a
# run's time on 2 cores). A persistent compilation cache, shared by this session's processes
# and made afresh for it, compiles each once; it changes no result (the same executable).
_COMPILATION_CACHE = tempfile.mkdtemp(prefix="jax-compilation-cache-")
atexit.register(shutil.rmtree, _COMPILATION_CACHE, ignore_errors=True)
os.environ["JAX_COMPILATION_CACHE_DIR"] = _COMPILATION_CACHE
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"

# The rest of a tiny model's compile time is LLVM optimising machine code that runs for
# milliseconds: -O0 halves it (tests/test_train.py ran in 167 s instead of 210). XLA's own graph
# passes (fusion, layouts, the partitioner) run as at any level; what a test compares was computed
# alike (runs against runs, or against references within tolerances). This process and the
# trainers it starts inherit it; the README's first command (tests/test_readme.py) runs without
# it, as users run it.
_FAST_COMPILE = "--xla_backend_optimization_level=0"
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_FAST_COMPILE}".strip()

import jax  # noqa: E402  (after the variables above)

# The tests compare float32 results with tight tolerances (NumPy references, finite differences,
# padded == unpadded). On GPUs XLA's default float32 matmul uses TF32, which rounds to 10-bit
# mantissas; ask for full float32 precision.
jax.config.update("jax_default_matmul_precision", "highest")

from tests.promises import onednn_kernel  # noqa: E402,F401  (the fixture behind `promises.needs_onednn`)
