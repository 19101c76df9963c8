r"""What several train steps per call (`--steps_per_call`) save, in one process, rounds alternating.

  python -m bench.steps_per_call [--config=char_1x128] [--steps_per_call=8] [--rounds=12] [--steps=200]

The trainer's own compiled functions (`trainer.build_steps`) on the same batches, made
beforehand: the train step called once per step, against the multi-step function called once
per `--steps_per_call` steps. Rounds of `--steps` steps alternate between the two (every other
round in reverse order), so that both meet the same moments of a noisy machine; the medians and
the number of rounds each side won are printed. Across separate runs of `bench.throughput` the
difference drowned in run-to-run noise; this is the measurement that can see it.
"""

import argparse
import statistics
import tempfile
import time

import jax

from bench.throughput import CONFIGS, make_config
from launch import huge_pages
from training.loop import parallel
from training.loop.data import prepare_data
from training.loop.trainer import build_steps

DISTINCT_BATCHES = 32


def main() -> None:
  huge_pages.reexec_with_huge_pages()  # as the trainer runs
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="char_1x128", choices=sorted(CONFIGS))
  parser.add_argument("--steps_per_call", type=int, default=8)
  parser.add_argument("--rounds", type=int, default=12)
  parser.add_argument(
    "--steps", type=int, default=200, help="steps per round (a multiple of --steps_per_call)"
  )
  args = parser.parse_args()
  if args.steps % args.steps_per_call or DISTINCT_BATCHES % args.steps_per_call:
    parser.error(f"--steps and {DISTINCT_BATCHES} must be multiples of --steps_per_call")

  config = make_config(args.config, args.steps, "fused")
  data = prepare_data(config, tempfile.mkdtemp())
  mesh = parallel.make_mesh()
  steps = build_steps(config, len(data.vocab), data.num_classes, mesh)
  batches = data.train_batches(0)
  local = [next(batches) for _ in range(DISTINCT_BATCHES)]
  if len({batch["inputs"].shape for batch in local}) > 1:
    parser.error(f"{args.config}: its batches change shape; take a language-model config")
  single = [parallel.train_step_batch(batch, mesh) for batch in local]
  k = args.steps_per_call
  stacked = [
    parallel.stacked_train_batches(local[i : i + k], mesh) for i in range(0, DISTINCT_BATCHES, k)
  ]

  def round_of(train, inputs, steps_per_call):
    """One round of `--steps` steps: `train` called on `inputs` in turn, `steps_per_call` a call."""

    def run(state):
      sums = steps.no_sums(local[0])
      for i in range(args.steps // steps_per_call):
        state, sums = train(state, inputs[i % len(inputs)], sums)
      jax.block_until_ready(sums)
      return state

    return run

  sides = {
    "1 per call": round_of(steps.train_fn, single, 1),
    f"{k} per call": round_of(steps.train_steps_fn, stacked, k),
  }
  state = steps.initial_state()
  for run in sides.values():
    state = run(state)  # compiled and warm
  times = {name: [] for name in sides}
  for index in range(args.rounds):
    for name in list(sides) if index % 2 == 0 else list(reversed(sides)):
      start = time.perf_counter()
      state = sides[name](state)
      times[name].append(1e3 * (time.perf_counter() - start) / args.steps)
  one, several = times["1 per call"], times[f"{k} per call"]
  for name, values in times.items():
    print(
      f"{name}: median {statistics.median(values):.2f} ms/step; rounds: {' '.join(f'{v:.2f}' for v in values)}"
    )
  wins = sum(b < a for a, b in zip(one, several))
  print(
    f"{args.config}, {jax.device_count()} device(s) ({jax.default_backend()}): {k} steps per call take"
    f" {statistics.median(several) / statistics.median(one):.3f}x the time per step of one per call"
    f" (medians of {args.rounds} rounds of {args.steps} steps; faster in {wins} of {args.rounds} rounds)"
  )


if __name__ == "__main__":
  main()
