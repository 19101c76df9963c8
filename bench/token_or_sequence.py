r"""Each token or each sequence? Four ways to train the same sentiment classifier, as dev accuracy
against training time.

  python -m bench.token_or_sequence --corpus=sst2 --lm_workdir=runs/imdb_lm [--workdir=runs/token_or_sequence]
  python -m bench.token_or_sequence --corpus=imdb --lm_workdir=runs/imdb_lm --finished_only   # the rows so far

1. per sequence only: the corpus's classifier config (`configs/CORPUS.flags`), one label per text;
2. per token + per sequence, from scratch: the same, plus the next-token loss of the same text
   (`--lm_loss_weight`);
3. per token, then per sequence: the classifier starts from a language model trained per token
   (`configs/CORPUS_pretrained.flags --init_from=LM_WORKDIR`);
4. per token, then both: 3 with the next-token loss kept during fine-tuning.

The language model is `configs/imdb_lm.flags`'s run (`--lm_workdir`; trained first if that
workdir has no summary). Dev split chooses, the test split is read once per run. Writes
docs/token_or_sequence_CORPUS.md and .png.
"""

import argparse
import os

from bench import runs

LM_LOSS_WEIGHT = 0.5


def variants(corpus: str, lm_workdir: str) -> list[tuple[str, list[str]]]:
  scratch, pretrained = (
    f"--flagfile=configs/{corpus}.flags",
    f"--flagfile=configs/{corpus}_pretrained.flags",
  )
  joint = f"--lm_loss_weight={LM_LOSS_WEIGHT}"
  init = f"--init_from={lm_workdir}"
  return [
    ("per sequence only", [scratch]),
    ("per token + per sequence (joint, from scratch)", [scratch, joint]),
    ("per token (LM), then per sequence", [pretrained, init]),
    ("per token (LM), then per token + per sequence", [pretrained, init, joint]),
  ]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--corpus", default="sst2", choices=["sst2", "imdb"])
  parser.add_argument("--lm_workdir", default="runs/imdb_lm")
  parser.add_argument("--workdir", default="runs/token_or_sequence")
  parser.add_argument("--out", default="")
  parser.add_argument(
    "--finished_only",
    action="store_true",
    help="train nothing: write the table and plot from the runs that have finished"
    " (on IMDB the four runs take hours on a small CPU; this shows them as they land)",
  )
  args = parser.parse_args()
  out = args.out or f"docs/token_or_sequence_{args.corpus}"
  lm_workdir = os.path.abspath(args.lm_workdir)
  if args.finished_only and not runs.finished(lm_workdir):
    parser.error(f"--finished_only: the language model in {args.lm_workdir} has not finished")
  lm = runs.train(lm_workdir, "--flagfile=configs/imdb_lm.flags")
  results, table = [], []
  for index, (name, flags) in enumerate(variants(args.corpus, lm_workdir)):
    workdir = os.path.abspath(os.path.join(args.workdir, f"{args.corpus}_{index + 1}"))
    # The path as the user gave it
    shown = "`" + " ".join(flags).replace(lm_workdir, args.lm_workdir) + "`"
    if args.finished_only and not runs.finished(workdir):
      table.append([name, shown, "(not finished)", "", "", ""])
      continue
    s = runs.train(workdir, *flags)
    table.append(
      [
        name,
        shown,
        f"{100 * s['best']['eval']['accuracy']:.1f}% (step {s['best']['step']})",
        f"{100 * s['test']['accuracy']:.1f}%",
        s["step"],
        f"{runs.training_seconds(workdir) / 60:.1f}",
      ]
    )
    results.append(
      (
        name,
        [
          (row["step"], row["elapsed_s"], 100 * row["accuracy"])
          for row in runs.rows(workdir, "eval")
        ],
      )
    )

  lm_seconds = runs.training_seconds(lm_workdir)
  lm_time = (
    f"took {lm_seconds / 60:.0f} more minutes" if lm_seconds else "took more time (see its log)"
  )
  runs.write_table(
    out + ".md",
    f"Each token or each sequence? ({args.corpus})",
    f"`python -m bench.token_or_sequence --corpus={args.corpus}` on {runs.machine()}. Dev accuracy of the"
    " best evaluation, test accuracy of its parameters (read once). Times are the classifier's training;"
    f" the language model (`configs/imdb_lm.flags`, validation {lm['best']['eval']['loss']:.3f} nats/word)"
    f" {lm_time}, once, for every pretrained row.",
    ["training", "flags", "dev accuracy", "test accuracy", "steps", "minutes"],
    table,
  )
  # Against steps too: minutes depend on what else shared the machine; steps do not.
  figure, (by_step, by_time) = runs.new_figure(panels=2)
  for name, curve in results:
    by_step.plot([step for step, _, _ in curve], [a for _, _, a in curve], marker=".", label=name)
    by_time.plot([t / 60 for _, t, _ in curve], [a for _, _, a in curve], marker=".", label=name)
  by_step.set(xlabel="classifier training step", ylabel="dev accuracy (%)", title=args.corpus)
  by_time.set(
    xlabel="classifier training time (minutes)", ylabel="dev accuracy (%)", title=args.corpus
  )
  if results:  # (none yet under --finished_only: an empty plot, no legend)
    by_step.legend(fontsize=8)
  runs.save_figure(figure, out + ".png")


if __name__ == "__main__":
  main()
