r"""Training throughput against PyTorch's fused `nn.LSTM`, side by side in one run.

  pip install -e ".[bench]"        # PyTorch 2.13 (CPU build here), the peer; never a dependency
  python -m bench.throughput [--configs=char_2x512,...] [--steps=30] [--repeats=3] [--recurrent_kernel=auto,scan]
                             [--steps_per_call=1] [--torch_huge_pages] [--json=FILE]

For each config it measures, back to back on the same machine, each side in a fresh process of
its own (a process's earlier work moved the next measurement as much as the loop did;
`bench.project_side`):
- `trainer`: the project's `training.train` loop (`train_and_evaluate`, real data when
  `../shared/data` is there, generated text otherwise), median tokens/s of its steady log
  windows: those that meet no batch shape for the first time (a first meeting compiles, or loads
  from the compilation cache), over at least 240 steps for the bucketed classifier and 300 for
  the smallest model (`MIN_STEPS`), and in at least 6 rounds for the smallest model
  (`MIN_REPEATS`), whose rounds differ most;
- `bare step`: the same compiled train step alone on the same batches in the same order, one call
  per step, timed per log window and summarised over the same steady windows, so
  `trainer / bare step` is what the loop itself costs (target: within 5%); with
  `--steps_per_call=K` the trainer runs K steps per call and may pass the bare step;
- `torch`: the same model in PyTorch (`nn.Embedding`, `nn.LSTM`, `nn.Linear`, Adam, a loss at
  every token and the state carried across windows; per-sequence configs: the last state through
  the same MLP head), on the same batch shapes (in a process with JAX's thread pools, PyTorch's
  OpenMP team ran slower);
- with `--recurrent_kernel=auto,scan`, the project's two time loops (oneDNN's fused LSTM, where
  "auto" picks it, and the portable scan) one after the other;
- the model's FLOPs per token (forward and backward, 3x the forward's multiply-adds x 2) and the
  fraction of the machine's float32 matmul speed that each side reaches. That speed is measured
  at the start and before every round, and the fastest measurement counts: on a shared VM it
  moved between 291 and 459 GFLOP/s within an hour, and one measurement at the start made the
  fraction partly a measure of that moment.

Ratios are the figures to quote: both sides ran minutes apart on the same machine. Each config
is measured in `--repeats` rounds (bare step, trainer, PyTorch; every other round in reverse),
and the table shows the medians with the range of the rounds' ratios: on a shared VM one round
moves by 10%. Prints a Markdown table (and writes JSON with `--json`); each round's figures go
to stderr as soon as it ends (`round: {...}`), so a run stopped part way keeps them. On a GPU both sides use
it (cuDNN for PyTorch).
"""

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import jax
import jax.numpy as jnp

from bench.project_side import measure_in_own_process as measure_project_side
from bench.torch_peer import measure_in_own_process as measure_torch_in_own_process
from launch import huge_pages
from training.config import Config, ConfigError
from training.model.kernels.time_loop import recurrent_kernel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), "shared", "data")
SHAKESPEARE = os.path.join(SHARED, "tiny_shakespeare", "input.txt")
IMDB = os.path.join(SHARED, "imdb", "train.jsonl.gz")

# name -> (Config fields, what it stands for). Embedding width = hidden size, as in the issue.
CONFIGS = {
  "char_2x512": (
    dict(num_layers=2, hidden_size=512, embed_size=512, batch_size=64, seq_len=128),
    "char LM, 2 x 512, batch 64 x 128",
  ),
  "char_1x256": (
    dict(num_layers=1, hidden_size=256, embed_size=256, batch_size=64, seq_len=256),
    "char LM, 1 x 256, batch 64 x 256",
  ),
  "char_1x128": (
    dict(num_layers=1, hidden_size=128, embed_size=128, batch_size=32, seq_len=64),
    "char LM, 1 x 128, batch 32 x 64",
  ),
  "word_2x200": (
    dict(
      num_layers=2, hidden_size=200, embed_size=200, batch_size=20, seq_len=35, tokenizer="word"
    ),
    "word LM (Tiny Shakespeare words), 2 x 200, batch 20 x 35",
  ),
  "classify_1x256": (
    dict(
      task="classify",
      num_layers=1,
      hidden_size=256,
      embed_size=256,
      batch_size=64,
      seq_len=512,
      batching="bucket",
      tokenizer="word",
      vocab_size=30000,
    ),
    "classifier (IMDB), 1 x 256, batch 64, bucketed, truncated at 512",
  ),
}


# Steps at least, whatever --steps says: the bucketed classifier meets a new batch shape in most
# of its first 30 steps, and only windows that meet none are timed (`steady_windows`); its
# trainer then runs 10-20% below its later pace for some 60 steps more (one 240-step run logging
# every 20 steps: 32,000-36,000 real tokens/s in steps 41-100, 37,000-42,000 from step 101 on),
# which 120 steps put in the trainer's figure and not in the bare step's; the
# smallest model's step takes 8-15 ms, so 30 steps (a quarter of a second, 40-75 ms a log window)
# are shorter than this VM's swings of speed: over 30 steps its ratio to PyTorch moved between
# 0.71x and 0.99x from round to round, over 300 between 1.01x and 1.22x.
MIN_STEPS = {"classify_1x256": 240, "char_1x128": 300}

# Rounds at least, whatever --repeats says: even over 300 steps the smallest model's ratio to
# PyTorch moved between 0.97x and 1.27x from round to round (six rounds in one run, idle machine),
# so its median needs more rounds than the larger models' (whose rounds agree within a few
# percent); a round of it takes about 20 s.
MIN_REPEATS = {"char_1x128": 6}


def repeats_for(name: str, repeats: int) -> int:
  return max(repeats, MIN_REPEATS.get(name, 0))


def make_config(
  name: str, steps: int, backward: str, kernel: str = "auto", steps_per_call: int = 1
) -> Config:
  fields, _ = CONFIGS[name]
  steps = max(steps, MIN_STEPS.get(name, 0))
  task = fields.get("task", "lm")
  if task == "lm":
    data = f"text:{SHAKESPEARE}" if os.path.exists(SHAKESPEARE) else "synthetic:copy"
  else:
    data = f"jsonl:{IMDB}" if os.path.exists(IMDB) else "synthetic:recall"
  return Config(
    **fields,
    train_data=data,
    model="lstm",
    num_steps=steps,
    log_every=max(steps // 6, 1),
    eval_every=0,
    checkpoint_every=10 * steps,
    learning_rate=1e-3,
    recurrent_backward=backward,
    recurrent_kernel=kernel,
    steps_per_call=steps_per_call,
  )


def lm_flops_per_token(config: Config, vocab_size: int) -> float:
  """Multiply-adds x 2 of the forward pass, x 3 for forward and backward."""
  gates = 4 * config.hidden_size
  forward = 0
  for layer in range(config.num_layers):
    inputs = config.embed_size if layer == 0 else config.hidden_size
    forward += 2 * (inputs + config.hidden_size) * gates
  if config.task == "lm":
    forward += 2 * config.hidden_size * vocab_size
  return 3.0 * forward


def matmul_flops_per_sec() -> float:
  """The machine's float32 matmul speed through XLA (the best of several runs)."""
  n = 8192 if jax.default_backend() == "gpu" else 2048
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
  matmul = jax.jit(lambda x: x @ x)
  matmul(a).block_until_ready()
  best = float("inf")
  for _ in range(5):
    start = time.perf_counter()
    matmul(a).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2 * n**3 / best


def measure_torch(
  config: Config, vocab_size: int, num_classes: int, shapes, steps: int, huge_pages: bool = False
) -> dict | None:
  """The same model in PyTorch, on the same batch shapes (full rows: fed tokens per second), in
  a process of its own (`huge_pages`: with the glibc tunable the project's process runs with)."""
  return measure_torch_in_own_process(
    config, vocab_size, num_classes, shapes, steps, use_huge_pages=huge_pages
  )


def time_loop(config: Config) -> str:
  """What runs the recurrence for this config on one device, as the table names it."""
  kernel = recurrent_kernel(config, 1)
  return "oneDNN" if kernel == "onednn" else f"scan, {config.recurrent_backward}"


def measure_round(
  config: Config,
  tmp: str,
  compilation_cache: str,
  reverse_of: dict | None = None,
  torch_huge_pages: bool = False,
) -> dict:
  """One bare step, one trainer and one PyTorch measurement, back to back, in that order, each
  in a process of its own (`bench.project_side`, `bench.torch_peer`): the bare step compiles
  every shape into `compilation_cache`, PyTorch takes the trainer's shapes. With `reverse_of` (the
  first round, for its shapes), in reverse, so that a drift of the machine's speed within a round
  favours no side."""

  def bare():
    return measure_project_side("bare", config, os.path.join(tmp, "bare"), compilation_cache)

  def trainer():
    return measure_project_side("trainer", config, os.path.join(tmp, "trainer"), compilation_cache)

  if reverse_of is None:
    bare_figures, trainer_figures = bare(), trainer()
    torch_figures = measure_torch(
      config,
      trainer_figures["vocab_size"],
      trainer_figures["num_classes"],
      trainer_figures["batch_shapes"],
      config.num_steps,
      torch_huge_pages,
    )
  else:
    torch_figures = measure_torch(
      config,
      reverse_of["vocab_size"],
      reverse_of["num_classes"],
      reverse_of["shapes"],
      config.num_steps,
      torch_huge_pages,
    )
    trainer_figures = trainer()
    bare_figures = bare()
  return {
    "bare": bare_figures,
    "trainer": trainer_figures,
    "torch": torch_figures,
    "vocab_size": trainer_figures["vocab_size"],
    "num_classes": trainer_figures["num_classes"],
    "shapes": trainer_figures["batch_shapes"],
  }


def run_config(
  name: str,
  config: Config,
  loop: str,
  peaks: list[float],
  repeats: int,
  compilation_cache: str,
  torch_huge_pages: bool = False,
) -> dict:
  """Medians over `repeats` rounds: this VM's speed drifts by 10% within minutes, and a round
  measures the three sides within a minute or two of each other. Each round first measures the
  matmul speed again (appended to `peaks`)."""
  rounds = []
  for index in range(repeats):
    peaks.append(matmul_flops_per_sec())
    # The first bare step compiles every batch shape into the persistent cache, so that the
    # trainer's windows measure the loop, not compilation, as in a long run.
    with tempfile.TemporaryDirectory() as tmp:
      rounds.append(
        measure_round(
          config,
          tmp,
          compilation_cache,
          reverse_of=rounds[0] if index % 2 else None,
          torch_huge_pages=torch_huge_pages,
        )
      )
    print_round(name, index, rounds[-1])
  median = statistics.median
  trainer = median(r["trainer"]["tokens_per_sec"] for r in rounds)
  trainer_fed = median(r["trainer"]["fed_tokens_per_sec"] for r in rounds)
  bare = median(r["bare"]["tokens_per_sec"] for r in rounds)
  flops = lm_flops_per_token(config, rounds[0]["vocab_size"])
  overheads = [1.0 - r["trainer"]["tokens_per_sec"] / r["bare"]["tokens_per_sec"] for r in rounds]
  result = {
    "config": name,
    "description": CONFIGS[name][1],
    "time_loop": loop,
    "vocab_size": rounds[0]["vocab_size"],
    "flops_per_token": flops,
    "repeats": repeats,
    "trainer_tokens_per_sec": trainer,
    "trainer_fed_tokens_per_sec": trainer_fed,
    "bare_step_tokens_per_sec": bare,
    "loop_overhead": median(overheads),
    "loop_overhead_range": [min(overheads), max(overheads)],
  }
  if all(r["torch"] for r in rounds):
    torch_speed = median(r["torch"]["tokens_per_sec"] for r in rounds)
    ratios = [r["trainer"]["fed_tokens_per_sec"] / r["torch"]["tokens_per_sec"] for r in rounds]
    result.update(
      torch_tokens_per_sec=torch_speed,
      torch=rounds[0]["torch"],
      ratio=median(ratios),
      ratio_range=[min(ratios), max(ratios)],
    )
  return result


def print_round(name: str, index: int, measured: dict) -> None:
  """One round's figures on stderr as soon as it ends, so that a run stopped part way (a time
  limit, a shared machine) still leaves what it measured."""
  torch_speed = measured["torch"]["tokens_per_sec"] if measured["torch"] else None
  figures = {
    "config": name,
    "round": index + 1,
    "bare_step_tokens_per_sec": round(measured["bare"]["tokens_per_sec"]),
    "trainer_tokens_per_sec": round(measured["trainer"]["tokens_per_sec"]),
    "trainer_fed_tokens_per_sec": round(measured["trainer"]["fed_tokens_per_sec"]),
    "torch_tokens_per_sec": round(torch_speed) if torch_speed else None,
  }
  if torch_speed:
    figures["ratio"] = round(measured["trainer"]["fed_tokens_per_sec"] / torch_speed, 3)
  print("round: " + json.dumps(figures), file=sys.stderr, flush=True)


def add_peak_fractions(results: list[dict], peak: float) -> None:
  """The fraction of `peak` (FLOP/s) each side reached, into each result."""
  for r in results:
    r["project_peak_fraction"] = r["flops_per_token"] * r["trainer_fed_tokens_per_sec"] / peak
    if "torch_tokens_per_sec" in r:
      r["torch_peak_fraction"] = r["flops_per_token"] * r["torch_tokens_per_sec"] / peak


def machine() -> str:
  device = jax.devices()[0]
  if device.platform == "cpu":
    return f"{os.cpu_count()}-core {platform.machine()} CPU, jax {jax.__version__}"
  return f"{device.device_kind}, jax {jax.__version__}"


def print_table(results: list[dict], peaks: list[float], steps: int, repeats: int) -> None:
  print(
    f"\n{machine()}; float32 matmul {max(peaks) / 1e9:,.0f} GFLOP/s (the fastest of {len(peaks)} measurements"
    f" in this run, which ranged from {min(peaks) / 1e9:,.0f}); {steps} steps"
    f" per side ({', '.join(f'{n}: {m}' for n, m in MIN_STEPS.items())}), medians of {repeats} rounds"
    f" ({''.join(f'{n}: {m}; ' for n, m in MIN_REPEATS.items() if m > repeats)}in parentheses: the range"
    " over rounds)\n"
  )
  print(
    "| config | MFLOP/token | project tokens/s | bare step tokens/s | loop overhead | PyTorch tokens/s"
    " | project / PyTorch | project % of matmul peak | PyTorch % of matmul peak |"
  )
  print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
  for r in results:
    torch_cells = (
      (
        f"{r['torch_tokens_per_sec']:,.0f} | **{r['ratio']:.2f}x** ({_range(r['ratio_range'], '{:.2f}')})"
        f" | {100 * r['project_peak_fraction']:.0f}% | {100 * r['torch_peak_fraction']:.0f}%"
      )
      if "ratio" in r
      else f"- | - | {100 * r['project_peak_fraction']:.0f}% | -"
    )
    print(
      f"| {r['description']} ({r['time_loop']}) | {r['flops_per_token'] / 1e6:.1f}"
      f" | {r['trainer_tokens_per_sec']:,.0f} | {r['bare_step_tokens_per_sec']:,.0f}"
      f" | {100 * r['loop_overhead']:+.1f}% ({_range([100 * x for x in r['loop_overhead_range']], '{:+.0f}')})"
      f" | {torch_cells} |"
    )


def _range(bounds, form: str) -> str:
  return " to ".join(form.format(x) for x in bounds)


def main() -> None:
  huge_pages.reexec_with_huge_pages()  # as the trainer runs (it starts this program again)
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
    "--configs", default=",".join(CONFIGS), help=f"comma-separated, of {', '.join(CONFIGS)}"
  )
  parser.add_argument("--steps", type=int, default=30, help="measured steps per side and config")
  parser.add_argument(
    "--recurrent_backward", default="fused", help="fused, autodiff, or both (comma-separated)"
  )
  parser.add_argument(
    "--recurrent_kernel",
    default="auto",
    help="auto, scan, onednn, or several (comma-separated): the trainer's --recurrent_kernel",
  )
  parser.add_argument(
    "--repeats",
    type=int,
    default=3,
    help="rounds per config (bare step, trainer, PyTorch each; at least MIN_REPEATS); the table"
    " shows medians",
  )
  parser.add_argument(
    "--steps_per_call",
    type=int,
    default=1,
    help="the trainer's --steps_per_call (the bare step stays one call per step)",
  )
  parser.add_argument("--json", default="", help="also write the results here")
  parser.add_argument(
    "--torch_huge_pages",
    action="store_true",
    help="run PyTorch with glibc.malloc.hugetlb=1 too, as the project runs (its users can set it)",
  )
  args = parser.parse_args()
  names = args.configs.split(",")
  unknown = [name for name in names if name not in CONFIGS]
  if unknown:
    parser.error(f"unknown config(s) {', '.join(unknown)}; expected some of {', '.join(CONFIGS)}")
  # The project's sides share it (`bench.project_side`)
  cache = tempfile.TemporaryDirectory(prefix="jax-cache-")
  peaks = [matmul_flops_per_sec()]
  results = []
  for name in names:
    measured = set()
    for kernel in args.recurrent_kernel.split(","):
      for backward in args.recurrent_backward.split(","):
        try:
          config = make_config(name, args.steps, backward, kernel, args.steps_per_call)
          loop = time_loop(config)
        except ConfigError as e:
          print(f"{name}: skipped: {e}", file=sys.stderr)
          continue
        if loop in measured:  # e.g. "auto" that resolves to a loop measured already
          continue
        measured.add(loop)
        results.append(
          run_config(
            name,
            config,
            loop,
            peaks,
            repeats_for(name, args.repeats),
            cache.name,
            args.torch_huge_pages,
          )
        )
        print(json.dumps(results[-1], default=str), file=sys.stderr, flush=True)
  add_peak_fractions(results, max(peaks))
  print_table(results, peaks, args.steps, args.repeats)
  if args.steps_per_call > 1:
    print(
      f"\nThe trainer ran {args.steps_per_call} steps per call (--steps_per_call); the bare step one per call."
    )
  print(
    f"\nPyTorch ran {'with glibc.malloc.hugetlb=1' if args.torch_huge_pages else 'with malloc as installed'}."
  )
  if args.json:
    with open(args.json, "w") as f:
      json.dump(
        {
          "machine": machine(),
          "matmul_flops_per_sec": max(peaks),
          "matmul_measurements": peaks,
          "torch_huge_pages": args.torch_huge_pages,
          "results": results,
        },
        f,
        indent=2,
        default=str,
      )


if __name__ == "__main__":
  main()
