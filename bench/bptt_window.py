r"""Truncated BPTT on Tiny Shakespeare: window length, with and without the carried state,
against validation loss.

  python -m bench.bptt_window [--windows=8,32,128] [--steps=600] [--workdir=runs/bptt_window]

Every run is the same character LSTM (1 x 256) fed the same number of tokens per step (4,096:
`--batch_size` x `--seq_len`) for the same number of steps, so only the window and the carried
state differ. Writes docs/bptt_window.md and docs/bptt_window.png (validation loss against
window length, and against training time).
"""

import argparse
import os

from bench import runs

DATA = "../shared/data/tiny_shakespeare/input.txt"
TOKENS_PER_STEP = 4096
FLAGS = [
  "--task=lm",
  "--tokenizer=char",
  "--model=lstm",
  "--num_layers=1",
  "--hidden_size=256",
  "--embed_size=64",
  "--learning_rate=3e-3",
  "--lr_decay=cosine",
  "--warmup_steps=50",
  "--checkpoint_every=1000",
  "--log_every=100",
  f"--train_data=text:{DATA}[:90%]",
  f"--eval_data=text:{DATA}[90%:]",
]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--windows", default="8,32,128")
  parser.add_argument("--steps", type=int, default=600)
  parser.add_argument("--workdir", default="runs/bptt_window")
  parser.add_argument("--out", default="docs/bptt_window")
  args = parser.parse_args()
  if not os.path.exists(DATA):
    raise SystemExit(
      f"{DATA} not found: run from the repository root with ../shared/data beside it"
    )
  windows = [int(w) for w in args.windows.split(",")]
  results = {}
  for carry in (True, False):
    for window in windows:
      workdir = os.path.abspath(
        os.path.join(args.workdir, f"window{window}_{'carry' if carry else 'nocarry'}")
      )
      summary = runs.train(
        workdir,
        *FLAGS,
        f"--seq_len={window}",
        f"--batch_size={TOKENS_PER_STEP // window}",
        f"--carry_state={str(carry).lower()}",
        f"--num_steps={args.steps}",
        f"--eval_every={max(args.steps // 6, 1)}",
      )
      results[window, carry] = {
        "best": summary["best"]["eval"]["loss"],
        "seconds": runs.training_seconds(workdir),
        "curve": [(r["elapsed_s"], r["loss"]) for r in runs.rows(workdir, "eval")],
      }

  table = [
    [
      w,
      "yes" if c else "no",
      f"{TOKENS_PER_STEP // w} x {w}",
      f"{r['best']:.3f}",
      f"{r['seconds']:.0f}",
    ]
    for (w, c), r in results.items()
  ]
  runs.write_table(
    args.out + ".md",
    "Truncated BPTT: window length and carried state (Tiny Shakespeare)",
    f"`python -m bench.bptt_window --windows={args.windows} --steps={args.steps}` on {runs.machine()}."
    f" Character LSTM 1 x 256, {TOKENS_PER_STEP} tokens per step, {args.steps} steps, cosine decay;"
    " validation = the last 10% of the characters (nats/char, the best evaluation).",
    [
      "window (--seq_len)",
      "state carried",
      "batch",
      "validation loss (nats/char)",
      "training time (s)",
    ],
    table,
  )
  figure, (by_window, by_time) = runs.new_figure(2)
  for carry in (True, False):
    label = "state carried" if carry else "state reset every window"
    by_window.plot(windows, [results[w, carry]["best"] for w in windows], marker="o", label=label)
    for window in windows:
      curve = results[window, carry]["curve"]
      by_time.plot(
        [t for t, _ in curve],
        [loss for _, loss in curve],
        linestyle="-" if carry else "--",
        label=f"window {window}, {'carry' if carry else 'no carry'}",
      )
  by_window.set(xscale="log", xlabel="BPTT window (tokens)", ylabel="validation loss (nats/char)")
  by_window.set_xticks(windows, [str(w) for w in windows])
  by_window.minorticks_off()
  by_time.set(xlabel="training time (s)", ylabel="validation loss (nats/char)")
  by_window.legend()
  by_time.legend(fontsize=7)
  runs.save_figure(figure, args.out + ".png")


if __name__ == "__main__":
  main()
