r"""Where one train step's time goes, the project's beside PyTorch's, phase by phase.

  python -m bench.step_profile [--configs=char_1x256,...] [--steps=20] [--recurrent_kernel=auto]

For each config of `bench.throughput` (same model, batch shape, data and PyTorch peer), on one
batch, each phase is timed on its own; each of `--steps` rounds times every phase of both sides
in turn (this VM's speed drifts by up to 2x within minutes), and the table shows medians:
- `forward`: the model and its loss;
- `backward`: forward and backward, less the forward;
- `output layer + loss`: of forward and backward, the part after the recurrent stack (the
  softmax over the vocabulary for an LM, the MLP head for a classifier), timed on its own on
  states of the stack's shape;
- `recurrent stack and embedding`: forward and backward less the output layer: the time loop,
  its matmuls and elementwise gate arithmetic;
- `optimizer and the rest of the step`: the whole step less forward and backward (Adam,
  clipping; the project's step also adds its metric sums and the finite-value guard; and what
  forward and backward cost more inside the whole step than alone);
- `whole step`; `at matmul peak`: the step's FLOPs at the speed of a 2048-square float32 matmul
  timed in the same rounds, the floor if every multiply-add ran that fast; and `its matmuls
  alone`: the same matmuls at their own shapes in XLA, those of the time loop (one [B, H] x
  [H, 4H] a step, and its transpose backwards) in a loop of T steps, the others (input
  projections, weight gradients, the output layer) over all B x T rows at once: what the
  step's multiply-adds cost at these shapes, before elementwise work, loop overhead and the
  optimizer.
The training loop's own cost (batches, dispatch, logging) is `bench.throughput`'s loop overhead.
Both sides run in this one process, to be timed in turn, and so share the cores between JAX's
thread pools and PyTorch's OpenMP team: PyTorch's small models run slower here than alone (its
1 x 128 step took 10.6-31 ms here, 8.9 ms in a process of its own). For ratios of speed,
`bench.throughput`, which runs PyTorch in a process of its own, is the measure.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from bench.throughput import CONFIGS, lm_flops_per_token, make_config, time_loop
from bench.torch_peer import TorchPeer, import_torch
from launch import huge_pages
from training.config import Config, ConfigError
from training.loop import parallel
from training.loop.data import prepare_data
from training.loop.objectives import (
  FAST_PATHS,
  OBJECTIVES,
  sequence_cross_entropy,
  token_cross_entropy,
)
from training.loop.trainer import build_steps
from training.model.build import build_model
from training.model.kernels.time_loop import recurrent_kernel
from training.model.models import with_path

PHASES = (
  "forward",
  "backward",
  "output layer + loss",
  "recurrent stack and embedding",
  "optimizer and the rest of the step",
  "whole step",
  "at matmul peak",
  "its matmuls alone",
)


def interleaved_medians_ms(runs: dict, steps: int) -> dict:
  """Median wall milliseconds of each of `runs` (callables that wait for their own results),
  timed in turn, one of each per round: this VM's speed drifts by up to 2x within minutes, and
  phases timed one after the other would each see another machine."""
  for run in runs.values():
    run()
    run()
  times = {name: [] for name in runs}
  for _ in range(steps):
    for name, run in runs.items():
      start = time.perf_counter()
      run()
      times[name].append(time.perf_counter() - start)
  return {name: 1e3 * statistics.median(values) for name, values in times.items()}


def project_phases(config: Config, workdir: str) -> tuple[dict, tuple, int, int]:
  """The project's phases as callables (each waits for its result), the batch shape, the
  vocabulary size and the class count."""
  data = prepare_data(config, workdir)
  vocab_size, num_classes = len(data.vocab), data.num_classes
  mesh = parallel.make_mesh()
  built = build_steps(config, vocab_size, num_classes, mesh)
  model = build_model(config, vocab_size, num_classes, recurrent_kernel(config, 1))
  objective = OBJECTIVES[config.task]
  state = built.initial_state()
  batch = parallel.global_batch(next(data.train_batches(0)), mesh)
  # The time loop the train step picks for this batch (each layer picking its own would keep
  # the residuals of both loops, which the train step avoids).
  model = with_path(model, "fast" if bool(FAST_PATHS[config.task](batch)) else "general")
  rngs = {"dropout": jax.random.PRNGKey(0)}

  def loss(params):
    sums, _ = objective(model, params, batch, state.carry, rngs, True)
    return sums["loss_sum"] / jnp.maximum(sums["weight"], 1.0)

  forward, grad = jax.jit(loss), jax.jit(jax.grad(loss))
  head_loss = jax.jit(jax.grad(_head_loss(config, batch), argnums=(0, 1)))
  states = jnp.zeros(batch["inputs"].shape + (config.hidden_size,), jnp.float32)

  window_sums = built.no_sums(batch)

  def whole_step():
    nonlocal state, window_sums
    state, window_sums = built.train_fn(state, batch, window_sums)
    jax.block_until_ready(state)

  phases = {
    "forward": lambda: jax.block_until_ready(forward(state.params)),
    "forward and backward": lambda: jax.block_until_ready(grad(state.params)),
    "output layer + loss": lambda: jax.block_until_ready(head_loss(state.params, states)),
    "whole step": whole_step,
  }
  return phases, tuple(batch["inputs"].shape), vocab_size, num_classes


def _head_loss(config: Config, batch):
  """(params, states [B, T, H]) -> the loss of the layers after the recurrent stack."""
  if config.task == "lm":

    def head(params, states):
      logits = states @ params["lm_head"]["kernel"] + params["lm_head"]["bias"]
      return token_cross_entropy(logits, batch["targets"], batch["mask"])["loss_sum"]
  else:

    def head(params, states):
      features = states.max(axis=1)[:, None] if config.pooling == "max" else states[:, -1:]
      for i in range(len(config.head_widths)):
        layer = params[f"head_{i}"]
        features = jax.nn.relu(features @ layer["kernel"] + layer["bias"])
      logits = features @ params["head_out"]["kernel"] + params["head_out"]["bias"]
      return sequence_cross_entropy(logits, batch["labels"], batch["example_mask"])["loss_sum"]

  return head


def torch_phases(torch, config: Config, vocab_size: int, num_classes: int, shape: tuple) -> dict:
  """PyTorch's phases as callables, on a batch of `shape`."""
  batch_size, length = shape
  peer = TorchPeer(torch, config, vocab_size, num_classes, [(batch_size, length)])
  tokens, labels = peer.batches[0]
  states = torch.zeros(
    batch_size, length, config.hidden_size, requires_grad=True, device=peer.device
  )
  targets = tokens[:, 1:].reshape(-1)

  def synced(run):
    def call():
      run()
      peer.sync()

    return call

  def head_backward():
    features = states[:, -1] if peer.classify else states
    logits = peer.model.head(features)
    loss = (
      peer.loss_fn(logits, labels)
      if peer.classify
      else peer.loss_fn(logits.reshape(-1, vocab_size), targets)
    )
    loss.backward()

  def forward():
    with torch.no_grad():
      peer.loss(tokens, labels)

  return {
    "forward": synced(forward),
    "forward and backward": synced(lambda: peer.backward(peer.loss(tokens, labels))),
    "output layer + loss": synced(head_backward),
    "whole step": synced(lambda: peer.step(tokens, labels)),
  }


def matmul_shapes(
  config: Config, batch: int, length: int, vocab_size: int
) -> list[tuple[bool, int, int, int]]:
  """(in the time loop?, m, k, n) of every matmul of one forward and backward pass of the LSTM
  model: a time-loop matmul runs `length` times on [m, k] x [k, n], the others once."""
  rows, gates, hidden = batch * length, 4 * config.hidden_size, config.hidden_size
  shapes = []
  for layer in range(config.num_layers):
    inputs = config.embed_size if layer == 0 else hidden
    shapes += [
      (True, batch, hidden, gates),
      (True, batch, gates, hidden),  # h W_h; dGates W_h^T
      (False, rows, inputs, gates),
      (False, inputs, rows, gates),  # x W_x; dW_x
      (False, rows, gates, inputs),
      (False, hidden, rows, gates),
    ]  # dx; dW_h
  if config.task == "lm":  # the output layer: logits, dW, dh
    shapes += [
      (False, rows, hidden, vocab_size),
      (False, hidden, rows, vocab_size),
      (False, rows, vocab_size, hidden),
    ]
  return shapes


def matmuls_alone(config: Config, batch: int, length: int, vocab_size: int):
  """A callable that runs every matmul of `matmul_shapes`, one after the other."""
  key, calls = jax.random.PRNGKey(0), []
  one = jax.jit(lambda x, w: x @ w)
  in_a_loop = jax.jit(lambda xs, w: jax.lax.scan(lambda c, x: (c, x @ w), None, xs)[1])
  for in_loop, m, k, n in matmul_shapes(config, batch, length, vocab_size):
    w = jax.random.normal(key, (k, n), jnp.float32)
    xs = jax.random.normal(key, (length, m, k) if in_loop else (m, k), jnp.float32)
    calls.append((in_a_loop if in_loop else one, xs, w))

  def run():
    for call, xs, w in calls:
      jax.block_until_ready(call(xs, w))

  return run


def square_matmul(n: int = 2048):
  """(a callable, its FLOPs): the large square matmul that `at matmul peak` is measured by."""
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
  matmul = jax.jit(lambda x: x @ x)
  return (lambda: jax.block_until_ready(matmul(a))), 2 * n**3


def derived(times: dict, floor_ms: float, matmuls_ms: float) -> dict:
  """The table's phases from the measured ones."""
  both = times["forward and backward"]
  return {
    "forward": times["forward"],
    "backward": both - times["forward"],
    "output layer + loss": times["output layer + loss"],
    "recurrent stack and embedding": both - times["output layer + loss"],
    "optimizer and the rest of the step": times["whole step"] - both,
    "whole step": times["whole step"],
    "at matmul peak": floor_ms,
    "its matmuls alone": matmuls_ms,
  }


def main() -> None:
  huge_pages.reexec_with_huge_pages()  # as the trainer runs (PyTorch, in this process, gets it too)
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
    "--configs", default=",".join(CONFIGS), help=f"comma-separated, of {', '.join(CONFIGS)}"
  )
  parser.add_argument("--steps", type=int, default=20, help="timed runs of each phase")
  parser.add_argument(
    "--recurrent_kernel", default="auto", help="the project's time loop: auto, scan or onednn"
  )
  args = parser.parse_args()
  unknown = [name for name in args.configs.split(",") if name not in CONFIGS]
  if unknown:
    parser.error(f"unknown config(s) {', '.join(unknown)}; expected some of {', '.join(CONFIGS)}")
  torch = import_torch()
  print(
    f"ms per phase, median of {args.steps} rounds; each round times every phase of both sides,"
    " the step's matmuls and a 2048-square matmul in turn\n"
  )
  for name in args.configs.split(","):
    try:
      config = make_config(name, 1, "fused", args.recurrent_kernel)
      loop = time_loop(config)
    except ConfigError as e:
      print(f"{name}: skipped: {e}", file=sys.stderr)
      continue
    with tempfile.TemporaryDirectory() as tmp:
      project, shape, vocab_size, num_classes = project_phases(config, os.path.join(tmp, "run"))
      sides = {f"project ({loop})": project}
      if torch is not None:
        sides["PyTorch"] = torch_phases(torch, config, vocab_size, num_classes, shape)
      # Both sides' phases in turn, so that each figure sees the same machine.
      runs = {(side, phase): run for side, phases in sides.items() for phase, run in phases.items()}
      square, square_flops = square_matmul()
      runs.update(
        {"matmuls alone": matmuls_alone(config, *shape, vocab_size), "square matmul": square}
      )
      times = interleaved_medians_ms(runs, args.steps)
    peak = square_flops / (times["square matmul"] / 1e3)
    floor_ms = 1e3 * lm_flops_per_token(config, vocab_size) * np.prod(shape) / peak
    matmuls_ms = times["matmuls alone"]
    print(
      f"**{CONFIGS[name][1]}** (the batch timed: {shape[0]} x {shape[1]}; float32 matmul"
      f" {peak / 1e9:,.0f} GFLOP/s, timed with the phases):\n"
    )
    columns = {
      side: derived({phase: times[side, phase] for phase in phases}, floor_ms, matmuls_ms)
      for side, phases in sides.items()
    }
    print("| phase | " + " | ".join(columns) + " |")
    print("| --- |" + " --- |" * len(columns))
    for phase in PHASES:
      print(
        f"| {phase} | " + " | ".join(f"{column[phase]:,.1f}" for column in columns.values()) + " |"
      )
    print(flush=True)


if __name__ == "__main__":
  main()
