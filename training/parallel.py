"""Where arrays live: a 1-D device mesh over all devices, batch rows sharded along it.

Parameters and optimiser state are replicated; batches and the carried hidden state are split
by rows over the `data` axis. Under `jax.jit` with these shardings XLA inserts the gradient
all-reduce, and sums over the global batch are global sums.
"""

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def make_mesh() -> jax.sharding.Mesh:
  # Auto axes: shardings are given at the jit boundary and XLA propagates them inside (the
  # default of `make_mesh` is now Explicit, which would make every op spell out its sharding).
  return jax.make_mesh((jax.device_count(),), (DATA_AXIS,),
                       axis_types=(jax.sharding.AxisType.Auto,))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh) -> NamedSharding:
  """Leading (row) axis split over devices."""
  return NamedSharding(mesh, P(DATA_AXIS))


def carry_sharding(mesh) -> NamedSharding:
  """The carried state [L, S, B, H] is split by batch row, like the batch it continues."""
  return NamedSharding(mesh, P(None, None, DATA_AXIS, None))


def global_batch(local_batch: dict[str, np.ndarray], mesh) -> dict[str, jax.Array]:
  """Assembles one global batch from each process's local rows."""
  sharding = batch_sharding(mesh)
  return {name: jax.make_array_from_process_local_data(sharding, rows)
          for name, rows in local_batch.items()}
