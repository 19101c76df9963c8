"""Which time loop a run's LSTM layers get: oneDNN's fused kernel or the portable scan, and why."""

import dataclasses

from training.config import Config, ConfigError

# "auto" takes oneDNN's LSTM when one step's recurrent matmul has at least this many
# multiply-adds (rows per device x H x 4H). Since a call splits small models' rows across the
# threads (no per-step hand-offs), the kernel is as fast as the scan or faster from 32 x 128
# (2^21) up on a 2-core x86-64 CPU (bench.throughput: 32 x 128 1.3x the scan's tokens/s, 20 x 200
# about even, 64 x 256 1.6x); below, the scan's XLA loop is left to the tiny models it suits.
MIN_STEP_WORK = 1 << 20

SCAN, ONEDNN = "scan", "onednn"


@dataclasses.dataclass(frozen=True)
class TimeLoop:
  """The time loop every recurrent layer of a run gets, and why it is not oneDNN's kernel."""

  name: str  # SCAN or ONEDNN
  why_not_onednn: str | None = (
    None  # None when the kernel runs, or when --recurrent_kernel=scan asked for the scan
  )

  def describe(self) -> str:
    if self.name == ONEDNN:
      return "oneDNN's fused LSTM"
    return "the JAX scan" + (
      f" (oneDNN's LSTM not used: {self.why_not_onednn})" if self.why_not_onednn else ""
    )


def choose_time_loop(config: Config, devices: int) -> TimeLoop:
  """The time loop that `config` gets with `devices` data-parallel devices.

  oneDNN's LSTM applies to a single-device run or one under `shard_map` (each device runs the
  kernel on its own rows; under plain `jax.jit` XLA would not know how to split the call), to
  the LSTM only, and not with `--remat` (the kernel keeps its own workspace) or
  `--recurrent_backward=autodiff` (the reference asked for); "auto" also leaves small models
  (below `MIN_STEP_WORK`) to the scan, which is faster there. `--recurrent_kernel=onednn`
  where it cannot run is refused, with the reasons.
  """
  if config.recurrent_kernel == SCAN:
    return TimeLoop(SCAN)
  reasons = []
  if config.model != "lstm":
    reasons.append(f"--model={config.model} (the kernel is an LSTM)")
  if config.remat:
    reasons.append("--remat")
  if config.recurrent_backward != "fused":
    reasons.append(f"--recurrent_backward={config.recurrent_backward}")
  if devices > 1 and config.parallelism != "shard_map":
    reasons.append(f"{devices} devices under --parallelism={config.parallelism} (use shard_map)")
  rows = max(config.batch_size // max(devices, 1), 1)
  if config.recurrent_kernel == "auto" and rows * 4 * config.hidden_size**2 < MIN_STEP_WORK:
    reasons.append(
      f"{rows} rows x {config.hidden_size} units per step is small (the scan is faster)"
    )
  if not reasons:
    from training.model.kernels import onednn  # imports jax's FFI: only when it may be used

    if onednn.available():
      return TimeLoop(ONEDNN)
    reasons.append(onednn.why_unavailable())
  if config.recurrent_kernel == ONEDNN:
    raise ConfigError(f"--recurrent_kernel=onednn: not available here: {'; '.join(reasons)}")
  return TimeLoop(SCAN, "; ".join(reasons))


def recurrent_kernel(config: Config, devices: int) -> str:
  """ "onednn" or "scan": the name of `choose_time_loop`'s choice."""
  return choose_time_loop(config, devices).name
