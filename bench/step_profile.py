r"""Where one train step's time goes, the project's beside PyTorch's, phase by phase.

  python -m bench.step_profile [--configs=char_1x256,...] [--steps=20] [--recurrent_kernel=auto]

For each config of `bench.throughput` (same model, batch shape, data and PyTorch peer), on one
batch, each phase is timed alone (median of `--steps` runs after a warm-up):
- `forward`: the model and its loss;
- `backward`: forward and backward, less the forward;
- `output layer + loss`: of forward and backward, the part after the recurrent stack (the
  softmax over the vocabulary for an LM, the MLP head for a classifier), timed on its own on
  states of the stack's shape;
- `recurrent stack and embedding`: forward and backward less the output layer: the time loop,
  its matmuls and elementwise gate arithmetic;
- `optimizer`: the whole step less forward and backward (Adam, clipping; the project's step also
  adds its metric sums and the finite-value guard);
- `whole step`; `at matmul peak`: the step's FLOPs at the float32 matmul speed measured in
  the same run, the floor if every multiply-add ran as fast as a large square matmul; and
  `its matmuls alone`: the same matmuls at their own shapes (XLA), those of the time loop
  (one [B, H] x [H, 4H] a step, and its transpose backwards) in a loop of T steps, the others
  (input projections, weight gradients, the output layer) over all B x T rows at once: the floor
  for any implementation of this step on this machine, before elementwise work, loop overhead
  and the optimizer.
The training loop's own cost (batches, dispatch, logging) is `bench.throughput`'s loop overhead.
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

from bench.throughput import CONFIGS, lm_flops_per_token, make_config, matmul_flops_per_sec, time_loop
from bench.torch_peer import TorchPeer, import_torch
from training import parallel
from training.config import Config, ConfigError
from training.data import prepare_data
from training.objectives import OBJECTIVES, sequence_cross_entropy, token_cross_entropy
from training.trainer import build_model, build_steps
from training.kernels import recurrent_kernel

PHASES = ("forward", "backward", "output layer + loss", "recurrent stack and embedding", "optimizer",
          "whole step", "at matmul peak", "its matmuls alone")


def median_ms(run, steps: int) -> float:
  """Median wall milliseconds of `run()` (which waits for its own result)."""
  run()
  run()
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    run()
    times.append(time.perf_counter() - start)
  return 1e3 * statistics.median(times)


def project_phases(config: Config, steps: int, workdir: str) -> tuple[dict, tuple, int, int]:
  data = prepare_data(config, workdir)
  vocab_size, num_classes = len(data.vocab), data.num_classes
  mesh = parallel.make_mesh()
  built = build_steps(config, vocab_size, num_classes, mesh)
  model = build_model(config, vocab_size, num_classes, recurrent_kernel(config, 1))
  objective = OBJECTIVES[config.task]
  state = built.initial_state()
  batch = parallel.global_batch(next(data.train_batches(0)), mesh)
  rngs = {"dropout": jax.random.PRNGKey(0)}

  def loss(params):
    sums, _ = objective(model, params, batch, state.carry, rngs, True)
    return sums["loss_sum"] / jnp.maximum(sums["weight"], 1.0)

  forward, grad = jax.jit(loss), jax.jit(jax.grad(loss))
  head_loss = jax.jit(jax.grad(_head_loss(model, config, batch), argnums=(0, 1)))
  states = jnp.zeros(batch["inputs"].shape + (config.hidden_size,), jnp.float32)

  def whole_step():
    nonlocal state
    state, _ = built.train_fn(state, batch)
    jax.block_until_ready(state)

  times = {"forward": median_ms(lambda: jax.block_until_ready(forward(state.params)), steps),
           "forward and backward": median_ms(lambda: jax.block_until_ready(grad(state.params)), steps),
           "output layer + loss": median_ms(lambda: jax.block_until_ready(head_loss(state.params, states)), steps),
           "whole step": median_ms(whole_step, steps)}
  return times, tuple(batch["inputs"].shape), vocab_size, num_classes


def _head_loss(model, config: Config, batch):
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


def torch_phases(torch, config: Config, vocab_size: int, num_classes: int, shape: tuple, steps: int) -> dict:
  batch_size, length = shape
  peer = TorchPeer(torch, config, vocab_size, num_classes, [(batch_size, length)])
  tokens, labels = peer.batches[0]
  states = torch.zeros(batch_size, length, config.hidden_size, requires_grad=True, device=peer.device)
  targets = tokens[:, 1:].reshape(-1)

  def timed(run):
    def synced():
      run()
      peer.sync()
    return median_ms(synced, steps)

  def head_backward():
    features = states[:, -1] if peer.classify else states
    logits = peer.model.head(features)
    loss = peer.loss_fn(logits, labels) if peer.classify else peer.loss_fn(logits.reshape(-1, vocab_size), targets)
    loss.backward()

  def forward():
    with torch.no_grad():
      peer.loss(tokens, labels)

  return {"forward": timed(forward),
          "forward and backward": timed(lambda: peer.backward(peer.loss(tokens, labels))),
          "output layer + loss": timed(head_backward),
          "whole step": timed(lambda: peer.step(tokens, labels))}


def matmul_shapes(config: Config, batch: int, length: int, vocab_size: int) -> list[tuple[bool, int, int, int]]:
  """(in the time loop?, m, k, n) of every matmul of one forward and backward pass of the LSTM
  model: a time-loop matmul runs `length` times on [m, k] x [k, n], the others once."""
  rows, gates, hidden = batch * length, 4 * config.hidden_size, config.hidden_size
  shapes = []
  for layer in range(config.num_layers):
    inputs = config.embed_size if layer == 0 else hidden
    shapes += [(True, batch, hidden, gates), (True, batch, gates, hidden),  # h W_h; dGates W_h^T
               (False, rows, inputs, gates), (False, inputs, rows, gates),  # x W_x; dW_x
               (False, rows, gates, inputs), (False, hidden, rows, gates)]  # dx; dW_h
  if config.task == "lm":  # the output layer: logits, dW, dh
    shapes += [(False, rows, hidden, vocab_size), (False, hidden, rows, vocab_size), (False, rows, vocab_size, hidden)]
  return shapes


def matmuls_alone_ms(config: Config, batch: int, length: int, vocab_size: int, steps: int) -> float:
  total = 0.0
  for in_loop, m, k, n in matmul_shapes(config, batch, length, vocab_size):
    key = jax.random.PRNGKey(0)
    w = jax.random.normal(key, (k, n), jnp.float32)
    if in_loop:
      xs = jax.random.normal(key, (length, m, k), jnp.float32)
      run = jax.jit(lambda xs, w: jax.lax.scan(lambda c, x: (c, x @ w), None, xs)[1])
    else:
      xs = jax.random.normal(key, (m, k), jnp.float32)
      run = jax.jit(lambda x, w: x @ w)
    total += median_ms(lambda: jax.block_until_ready(run(xs, w)), steps)
  return total


def derived(times: dict, floor_ms: float, matmuls_ms: float) -> dict:
  both = times["forward and backward"]
  return {"forward": times["forward"], "backward": both - times["forward"],
          "output layer + loss": times["output layer + loss"],
          "recurrent stack and embedding": both - times["output layer + loss"],
          "optimizer": times["whole step"] - both, "whole step": times["whole step"], "at matmul peak": floor_ms,
          "its matmuls alone": matmuls_ms}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated, of {', '.join(CONFIGS)}")
  parser.add_argument("--steps", type=int, default=20, help="timed runs of each phase")
  parser.add_argument("--recurrent_kernel", default="auto", help="the project's time loop: auto, scan or onednn")
  args = parser.parse_args()
  unknown = [name for name in args.configs.split(",") if name not in CONFIGS]
  if unknown:
    parser.error(f"unknown config(s) {', '.join(unknown)}; expected some of {', '.join(CONFIGS)}")
  torch = import_torch()
  peak = matmul_flops_per_sec()
  print(f"float32 matmul {peak / 1e9:,.0f} GFLOP/s (measured in this run); ms per phase, median of"
        f" {args.steps} runs\n")
  for name in args.configs.split(","):
    try:
      config = make_config(name, 1, "fused", args.recurrent_kernel)
      loop = time_loop(config)
    except ConfigError as e:
      print(f"{name}: skipped: {e}", file=sys.stderr)
      continue
    with tempfile.TemporaryDirectory() as tmp:
      project, shape, vocab_size, num_classes = project_phases(config, args.steps, os.path.join(tmp, "run"))
    floor_ms = 1e3 * lm_flops_per_token(config, vocab_size) * np.prod(shape) / peak
    matmuls_ms = matmuls_alone_ms(config, *shape, vocab_size, args.steps)
    columns = {f"project ({loop})": derived(project, floor_ms, matmuls_ms)}
    if torch is not None:
      columns["PyTorch"] = derived(torch_phases(torch, config, vocab_size, num_classes, shape, args.steps), floor_ms,
                                   matmuls_ms)
    print(f"**{CONFIGS[name][1]}** (the batch timed: {shape[0]} x {shape[1]}):\n")
    print("| phase | " + " | ".join(columns) + " |")
    print("| --- |" + " --- |" * len(columns))
    for phase in PHASES:
      print(f"| {phase} | " + " | ".join(f"{column[phase]:,.1f}" for column in columns.values()) + " |")
    print(flush=True)


if __name__ == "__main__":
  main()
