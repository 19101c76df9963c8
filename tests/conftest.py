"""Settings that keep the suite meaningful on every backend (they change nothing on a CPU)."""

import os

# Tests start trainers as subprocesses beside the test process: by default JAX takes 75% of a
# GPU's memory in the first process that touches it, and the next one could not start.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402  (after the variable above)

# The tests compare float32 results with tight tolerances (NumPy references, finite differences,
# padded == unpadded). On GPUs XLA's default float32 matmul uses TF32, which rounds to 10-bit
# mantissas; ask for full float32 precision.
jax.config.update("jax_default_matmul_precision", "highest")
