"""The project's side of `bench.throughput`: the trainer and its bare train step, each measured
in a process of its own.

Why a process each: measured one after the other in one process, each side's figure depended on
what that process had run before. The classifier's trainer alone in a fresh process ran at
42,434 real tokens/s, its bare step alone at 36,742, and the same trainer after that bare step
in the same process at 36,281 (2-core VM, one sample each): a process's history moved the
figures as much as the loop being measured did. PyTorch already ran in a process of its own
(`bench.torch_peer`); now all three sides start equal.

Both sides share the benchmark's persistent compilation cache (the bare step compiles every
batch shape into it first; the trainer's first meeting of a shape then loads it, in a window that
`steady_windows` leaves out).
"""

import dataclasses
import json
import os
import statistics
import time

import jax

from bench import own_process
from pipeline.labels import Labels
from pipeline.tokenizers import Vocabulary
from training.config import Config, config_from_fields
from training.loop import parallel
from training.loop.data import LABELS_FILE, VOCAB_FILE, prepare_data
from training.loop.trainer import build_steps, train_and_evaluate


def measure_trainer(config: Config, workdir: str) -> dict:
  """The trainer's median tokens/s over its steady log windows (`steady_windows`), and the
  vocabulary it built (for the FLOPs per token and the PyTorch peer)."""
  train_and_evaluate(config, workdir)
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  steady, summary = summarise_windows([row for row in rows if row["split"] == "train"])
  fed_per_real = sum(row["fed_tokens"] for row in steady) / sum(
    row["real_tokens"] for row in steady
  )
  # What the trainer saved, read back (preparing the data again would tokenise the corpus again).
  vocab = Vocabulary.load(os.path.join(workdir, VOCAB_FILE))
  num_classes = (
    Labels.load(os.path.join(workdir, LABELS_FILE)).num_classes if config.task == "classify" else 0
  )
  return dict(
    summary,
    fed_tokens_per_sec=summary["tokens_per_sec"] * fed_per_real,
    vocab_size=len(vocab),
    num_classes=num_classes,
  )


def summarise_windows(rows: list[dict]) -> tuple[list[dict], dict]:
  """(the steady windows of `rows`, log rows with `tokens_per_sec` and `batch_shapes`; and the
  figures the trainer and the bare step are compared by: the median tokens/s over those windows,
  how many there were, and every batch shape the rows met)."""
  steady = steady_windows(rows)
  return steady, {
    "tokens_per_sec": statistics.median(row["tokens_per_sec"] for row in steady),
    "windows": len(steady),
    "batch_shapes": sorted({tuple(shape) for row in rows for shape in row["batch_shapes"]}),
  }


def steady_windows(rows: list[dict]) -> list[dict]:
  """The train rows whose batch shapes all came in earlier windows. A window that meets a shape
  for the first time also traces it and loads it from the compilation cache (about a second for
  the classifier's step): a long run pays that once per bucket, and a 30-step bench run would
  pay it in most of its windows. With one shape, every window but the first."""
  seen, steady = set(), []
  for row in rows:
    shapes = {tuple(shape) for shape in row["batch_shapes"]}
    if shapes <= seen:
      steady.append(row)
    seen |= shapes
  if not steady:
    raise SystemExit(
      f"no log window met only batch shapes of earlier windows ({len(seen)} shapes in"
      f" {len(rows)} windows); pass a larger --steps"
    )
  return steady


def measure_bare_step(config: Config, workdir: str, steps: int) -> dict:
  """The compiled train step alone, on the batches the trainer takes, in its order, fetched
  beforehand: no loop, no logging (the step adds its metric sums to the window's, as in the
  trainer, where only their fetch is extra). Timed per log window, with a wait at each window's
  end (where the trainer fetches its sums), and summarised as the trainer is: the median over
  the same steady windows (`steady_windows`). Bucketed batches differ in length and padding, so
  only the same batches make `trainer / bare step` a measure of the loop alone."""
  os.makedirs(workdir, exist_ok=True)
  data = prepare_data(config, workdir)
  mesh = parallel.make_mesh()
  built = build_steps(config, len(data.vocab), data.num_classes, mesh)
  state, train_fn = built.initial_state(), built.train_fn
  iterator = data.train_batches(0)
  host_batches = [next(iterator) for _ in range(steps)]
  batches = [parallel.train_step_batch(batch, mesh) for batch in host_batches]
  real_tokens = [int(batch["mask"].sum()) for batch in host_batches]  # counted outside the timing
  sums = built.no_sums(batches[0])
  first_of_each_shape = {batch["inputs"].shape: batch for batch in reversed(batches)}
  for batch in first_of_each_shape.values():  # compile every shape first
    state, sums = train_fn(state, batch, sums)
  jax.block_until_ready(state)
  rows = []
  for first in range(0, steps, config.log_every):
    window = range(first, min(first + config.log_every, steps))
    start = time.perf_counter()
    for index in window:
      state, sums = train_fn(state, batches[index], sums)
    jax.block_until_ready(state)
    elapsed = time.perf_counter() - start
    rows.append(
      {
        "step": window[-1] + 1,
        "tokens_per_sec": sum(real_tokens[index] for index in window) / elapsed,
        "batch_shapes": sorted({tuple(host_batches[index]["inputs"].shape) for index in window}),
      }
    )
  return summarise_windows(rows)[1]


def measure_in_own_process(side: str, config: Config, workdir: str, compilation_cache: str) -> dict:
  """`measure_trainer` (side "trainer") or `measure_bare_step` (side "bare", over the config's
  `num_steps`) in a fresh Python process, with `compilation_cache` as JAX's persistent cache.
  The process inherits this one's environment (the glibc tunable of `launch.huge_pages`, XLA's
  flags), so it runs as this one would."""
  request = {
    "side": side,
    "config": dataclasses.asdict(config),
    "workdir": workdir,
    "compilation_cache": compilation_cache,
  }
  measured = own_process.call("bench.project_side", request, f"the project's {side} measurement")
  measured["batch_shapes"] = [tuple(shape) for shape in measured["batch_shapes"]]
  return measured


def _measure(request: dict) -> dict:
  jax.config.update("jax_compilation_cache_dir", request["compilation_cache"])
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  config = config_from_fields(request["config"])
  if request["side"] == "trainer":
    return measure_trainer(config, request["workdir"])
  if request["side"] == "bare":
    return measure_bare_step(config, request["workdir"], config.num_steps)
  raise SystemExit(f"unknown side {request['side']!r}: expected trainer or bare")


if __name__ == "__main__":
  own_process.serve(_measure)  # one side's own process (`measure_in_own_process`)
