"""Where arrays live: a 1-D device mesh over all devices, batch rows sharded along it.

Parameters and optimiser state are replicated; batches and the carried hidden state are split
by rows over the `data` axis. Under `jax.jit` with these shardings XLA inserts the gradient
all-reduce, and sums over the global batch are global sums.
"""

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"
CARRY_SPEC = P(None, None, DATA_AXIS, None)  # carried state [L, S, B, H]: split by batch row


def make_mesh() -> jax.sharding.Mesh:
  # Auto axes: shardings are given at the jit boundary and XLA propagates them inside (the
  # default of `make_mesh` is now Explicit, which would make every op spell out its sharding).
  return jax.make_mesh(
    (jax.device_count(),), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,)
  )


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh) -> NamedSharding:
  """Leading (row) axis split over devices."""
  return NamedSharding(mesh, P(DATA_AXIS))


def carry_sharding(mesh) -> NamedSharding:
  """The carried state [L, S, B, H] is split by batch row, like the batch it continues."""
  return NamedSharding(mesh, CARRY_SPEC)


def global_batch(
  local_batch: dict[str, np.ndarray], mesh, sharding: NamedSharding | None = None
) -> dict[str, jax.Array]:
  """Assembles one global batch from each process's local rows (split as `sharding` says; by
  default along the leading axis, `batch_sharding`)."""
  sharding = sharding or batch_sharding(mesh)
  if jax.process_count() == 1:  # the same arrays by one call: 0.2 ms a step less on a CPU
    return jax.device_put(local_batch, sharding)
  return {
    name: jax.make_array_from_process_local_data(sharding, rows)
    for name, rows in local_batch.items()
  }


def global_shape(local_shape: tuple[int, ...]) -> tuple[int, ...]:
  """A batch array's global shape from this process's rows (every process holds as many)."""
  return (local_shape[0] * jax.process_count(), *local_shape[1:])


def train_step_batch(
  local_batch: dict[str, np.ndarray], mesh, sharding: NamedSharding | None = None
) -> dict:
  """A batch as the compiled train step takes it (`compile_train_step`). On one process, the host
  arrays themselves: the step's own transfer, by its `in_shardings`, took 0.7 ms of host time a
  step of a small model against 1.2-1.3 ms through `global_batch`, time taken from the step's own
  threads on a small CPU. Several processes must assemble global arrays."""
  if jax.process_count() == 1:
    return local_batch
  return global_batch(local_batch, mesh, sharding)


def stacked_batch_sharding(mesh) -> NamedSharding:
  """Several steps' batches stacked on a new leading axis [steps, rows, ...]: rows split."""
  return NamedSharding(mesh, P(None, DATA_AXIS))


def stacked_train_batches(local_batches: list[dict[str, np.ndarray]], mesh) -> dict:
  """Consecutive batches of one shape, stacked [steps, rows, ...], as the compiled multi-step
  function takes them: host arrays on one process (its own transfer, as `train_step_batch`),
  global arrays assembled from each process's rows on several."""
  stacked = {name: np.stack([batch[name] for batch in local_batches]) for name in local_batches[0]}
  return train_step_batch(stacked, mesh, stacked_batch_sharding(mesh))


def abstract_train_step_batch(local_batch: dict, mesh) -> dict:
  """Shapes, dtypes and shardings of what `train_step_batch` makes of `local_batch` (host arrays
  on one process; global arrays, sharded by rows, on several)."""
  if jax.process_count() == 1:
    return {
      name: jax.ShapeDtypeStruct(array.shape, array.dtype) for name, array in local_batch.items()
    }
  return {
    name: jax.ShapeDtypeStruct(
      global_shape(array.shape), array.dtype, sharding=batch_sharding(mesh)
    )
    for name, array in local_batch.items()
  }


def state_specs(abstract_state):
  """PartitionSpecs of a train state: everything replicated but the carried state's rows."""
  specs = jax.tree.map(lambda _: P(), abstract_state)
  if abstract_state.carry is None:
    return specs
  return specs.replace(carry=CARRY_SPEC)


def shardings_of(specs, mesh):
  return jax.tree.map(
    lambda spec: NamedSharding(mesh, spec), specs, is_leaf=lambda x: isinstance(x, P)
  )


def compile_train_step(step_fn, abstract_state, mesh, parallelism: str, combine_sums):
  """The train step, jitted once with explicit shardings, adding its metric sums to a window's:
  `(state, batch, window sums) -> (state, window sums with this step's)`; the same for several
  consecutive steps in one call, `(state, batches stacked [steps, ...], window sums) -> (state,
  window sums with theirs)`; and `(local batch) -> the shapes of one step's sums` (the same for
  any batch shape).

  `jit`: `step_fn` sees global arrays and XLA partitions it. `shard_map`: `step_fn` (bound with
  `axis_name=DATA_AXIS`) runs per device on its rows and reduces explicitly. The sums are added
  inside the step: a second executable per step to add them cost the 1 x 128 character LM's
  trainer several percent on a 2-core CPU (README, Speed).
  """
  specs = state_specs(abstract_state)
  state_shardings = shardings_of(specs, mesh)
  if parallelism == "shard_map":
    # check_vma=False: the step reduces explicitly (psum of gradients and counts). With the
    # check on, autodiff would also psum the gradient of every replicated parameter by itself,
    # and the explicit psum would then count each device's gradient once per device.
    step_fn = jax.shard_map(
      step_fn, mesh=mesh, in_specs=(specs, P(DATA_AXIS)), out_specs=(specs, P()), check_vma=False
    )
  # Jitted on its own as well, so that it is traced once: `sums_shapes` (on the argument types
  # the compiled step gets) and the compiled step reuse that trace (JAX caches a jitted function's
  # trace per argument types, shardings included; XLA inlines the inner call). Tracing the step
  # is a second or more of every run's start.
  step_fn = jax.jit(step_fn)

  def accumulating_step(state, batch, window_sums):
    state, sums = step_fn(state, batch)
    return state, combine_sums(window_sums, sums)

  abstract_sharded_state = jax.tree.map(
    lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
    abstract_state,
    state_shardings,
  )

  def sums_shapes(local_batch):
    return jax.eval_shape(
      step_fn, abstract_sharded_state, abstract_train_step_batch(local_batch, mesh)
    )[1]

  def accumulating_steps(state, stacked_batches, window_sums):
    # The same step, once per batch, inside one executable: one dispatch (and one wait for the
    # host) for all of them, which small models on a small CPU, or any model on an accelerator
    # fed by a slow host, notice (`--steps_per_call`).
    def one_step(carry, batch):
      state, window_sums = carry
      return accumulating_step(state, batch, window_sums), None

    return jax.lax.scan(one_step, (state, window_sums), stacked_batches)[0]

  shardings = dict(out_shardings=(state_shardings, replicated(mesh)), donate_argnums=0)
  compiled = jax.jit(
    accumulating_step,
    in_shardings=(state_shardings, batch_sharding(mesh), replicated(mesh)),
    **shardings,
  )
  compiled_steps = jax.jit(
    accumulating_steps,
    **shardings,
    in_shardings=(state_shardings, stacked_batch_sharding(mesh), replicated(mesh)),
  )
  return compiled, compiled_steps, sums_shapes
