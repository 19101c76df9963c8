r"""Elman RNN, GRU and LSTM against dependency distance, per sequence.

  python -m bench.dependency_distance [--distances=5,10,20,40,80] [--steps=400] [--chrono=100] [--workdir=runs/dependency_distance]

Task `synthetic:recall@D`: the label is the first of D+1 letters and the D letters after it are
noise, so the evidence is exactly D steps back from the end (chance: 1/3). For each cell and D it
trains a classifier (the same flags for all) and reports
- dev accuracy of the best evaluation and test accuracy with its parameters;
- the gradient norm of the loss with respect to the first input step (what reaches the evidence),
  at initialisation and after training, averaged over a test batch.

The gated cells run twice: with their constant gate biases (the LSTM's forget gate at 1) and
with chrono initialisation (`--chrono_init=N`, N = `--chrono`: each unit's memory drawn between 1
and N steps), which is what decides whether a long dependency can be learnt at all here.

Writes docs/dependency_distance.md and docs/dependency_distance.png.
"""

import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np

from bench import runs

CELLS = ("rnn", "gru", "lstm")
FLAGS = [
  "--task=classify",
  "--hidden_size=64",
  "--embed_size=16",
  "--batch_size=32",
  "--learning_rate=3e-3",
  "--eval_every=100",
  "--checkpoint_every=1000",
  "--log_every=100",
  "--pooling=last",
]


def spec(distance: int, part: str) -> str:
  return f"synthetic:recall@{distance}{part}"


def first_step_gradient_norm(workdir: str, distance: int, trained: bool) -> float:
  """Mean over a test batch of |d loss / d x_0|, x_0 the first step's embedded input."""
  from pipeline import synthetic
  from pipeline.sequence_batches import encode_all
  from training.bookkeeping.trained_run import load_run
  from training.state import initial_state_fn, make_optimizer_for

  run = load_run(workdir)
  params = run.params
  if not trained:
    init = initial_state_fn(run.config, run.model, make_optimizer_for(run.config))
    params = jax.jit(init)(jax.random.PRNGKey(run.config.seed)).params
  examples = synthetic.generate(f"recall@{distance}")[-64:]
  tokens = jnp.array(np.stack(encode_all(examples, run.vocab)), jnp.int32)
  labels = jnp.array([e["label"] for e in examples])
  mask = jnp.ones(tokens.shape, bool)
  segment_ids, ends = mask.astype(jnp.int32), jnp.full((tokens.shape[0], 1), tokens.shape[1] - 1)
  # Time-major, as embedded
  zeros = jnp.zeros((tokens.shape[1], tokens.shape[0], run.config.embed_size))

  def loss(perturbation):
    logits = run.model.apply(
      {"params": params, "perturbations": {"encoder": {"embedded": perturbation}}},
      tokens,
      mask,
      segment_ids,
      ends,
      train=False,
    )[:, 0]
    return -jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=1).sum()

  gradient = jax.grad(loss)(zeros)  # per example: the sum's gradient is each example's own
  return float(jnp.linalg.norm(gradient[0], axis=-1).mean())


def variants(chrono: int) -> list[tuple[str, str, list[str]]]:
  """(name, cell, extra flags): every cell as it starts by default, then the gated ones with
  chrono initialisation for dependencies up to `chrono` steps (none when 0)."""
  plain = [(cell, cell, []) for cell in CELLS]
  gated = [
    (f"{cell}, chrono {chrono}", cell, [f"--chrono_init={chrono}"])
    for cell in CELLS
    if cell != "rnn"
  ]
  return plain + (gated if chrono else [])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--distances", default="5,10,20,40,80")
  parser.add_argument("--steps", type=int, default=400)
  parser.add_argument(
    "--chrono",
    type=int,
    default=100,
    help="the gated cells again with --chrono_init=N (at least the longest distance); 0: not",
  )
  parser.add_argument("--workdir", default="runs/dependency_distance")
  parser.add_argument("--out", default="docs/dependency_distance")
  args = parser.parse_args()
  distances = [int(d) for d in args.distances.split(",")]
  results = {}
  for name, cell, extra in variants(args.chrono):
    for distance in distances:
      run_name = f"{cell}_chrono{args.chrono}_{distance}" if extra else f"{cell}_{distance}"
      workdir = os.path.abspath(os.path.join(args.workdir, run_name))
      summary = runs.train(
        workdir,
        *FLAGS,
        f"--model={cell}",
        *extra,
        f"--num_steps={args.steps}",
        f"--seq_len={distance + 1}",
        f"--train_data={spec(distance, '[:80%]')}",
        f"--eval_data={spec(distance, '[80%:90%]')}",
        f"--test_data={spec(distance, '[90%:]')}",
      )
      results[name, distance] = {
        "dev": summary["best"]["eval"]["accuracy"],
        "test": summary["test"]["accuracy"],
        "grad_init": first_step_gradient_norm(workdir, distance, trained=False),
        "grad_trained": first_step_gradient_norm(workdir, distance, trained=True),
      }

  table = [
    [
      name,
      d,
      f"{100 * r['dev']:.1f}%",
      f"{100 * r['test']:.1f}%",
      f"{r['grad_init']:.2e}",
      f"{r['grad_trained']:.2e}",
    ]
    for (name, d), r in results.items()
  ]
  runs.write_table(
    args.out + ".md",
    "Elman RNN, GRU and LSTM against dependency distance",
    f"`python -m bench.dependency_distance --distances={args.distances} --steps={args.steps}"
    f" --chrono={args.chrono}` on {runs.machine()}."
    " Task `synthetic:recall@D` (the label is the first letter, D noise letters follow; chance 33.3%);"
    f" 64 units, batch 32, {args.steps} steps, the best of the dev evaluations, test once."
    " Gradient: mean norm of d loss / d (first input step) over 64 test sequences."
    f" `chrono {args.chrono}`: the gate biases drawn for dependencies up to {args.chrono} steps"
    f" (`--chrono_init={args.chrono}`); the others start with constant biases.",
    [
      "cell",
      "distance D",
      "dev accuracy",
      "test accuracy",
      "gradient at the first step (init)",
      "gradient at the first step (trained)",
    ],
    table,
  )
  figure, (accuracy, gradient) = runs.new_figure(2)
  for name, cell, extra in variants(args.chrono):
    # A cell's colour; chrono initialisation dashed, with smaller squares (the lines overlap at 100%).
    style = dict(
      label=name,
      color=f"C{CELLS.index(cell)}",
      linestyle="--" if extra else "-",
      marker="s" if extra else "o",
      markersize=4 if extra else 6,
    )
    accuracy.plot(distances, [100 * results[name, d]["test"] for d in distances], **style)
    gradient.semilogy(distances, [results[name, d]["grad_init"] for d in distances], **style)
  accuracy.axhline(100 / 3, color="grey", linestyle=":", label="chance")
  accuracy.set(xlabel="dependency distance D (steps)", ylabel="test accuracy (%)", xscale="log")
  gradient.set(
    xlabel="dependency distance D (steps)",
    ylabel="|d loss / d x_0| at initialisation",
    xscale="log",
  )
  for axis in (accuracy, gradient):
    axis.set_xticks(distances, [str(d) for d in distances])
    axis.minorticks_off()
    axis.legend()
  runs.save_figure(figure, args.out + ".png")


if __name__ == "__main__":
  main()
