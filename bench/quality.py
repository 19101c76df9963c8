r"""The quality table: each real-corpus config's dev and test figures, read from its run's summary.

  python -m bench.quality [--train] [--workdir=runs]

Each config `configs/NAME.flags` is expected in `WORKDIR/NAME` (the README's command:
`python -m training.train --flagfile=configs/NAME.flags --workdir=runs/NAME`). With `--train`
the missing runs are trained first, in order (the language model before the configs that start
from it). Writes runs/quality.md; a config without a finished run is listed as not run.

An ensemble row averages the class probabilities of its members' runs (`training.tools.ensemble`):
`sst2_pretrained` with the same config at other seeds (`WORKDIR/NAME_seedN`, trained with
`--seed=N`), and ULMFiT's pair, the forward config with its backward reading
(`sst2_pretrained_backward`). `--train` trains the members too. Its time is the members' times
added up (one after another on the same machine; side by side on several, the longest).
"""

import argparse
import dataclasses
import json
import os
import subprocess
import sys

from bench import runs

SST2_TARGET = ">= 84.0% in 20 min of fine-tuning"
# (config, what is reported, target, anchors), in training order: a language model before the
# configs that start from it.
CONFIGS = [
  (
    "tiny_shakespeare",
    "loss",
    "validation <= 1.55 nats/char in 40 min",
    "nanoGPT CPU baby GPT 1.88; nanoGPT GPU 1.4697",
  ),
  ("sst2", "accuracy", ">= 81.0% in 20 min", "PyTorch BiLSTM here 77-79%; Kim 2014 CNN-rand 82.7"),
  ("imdb_lm", "loss", "<= 60 min; validation perplexity", ""),
  (
    "imdb_lm_backward",
    "loss",
    "<= 60 min; validation perplexity",
    "ULMFiT's backward language model",
  ),
  ("sst2_pretrained", "accuracy", SST2_TARGET, "Tai et al. 2015 LSTM 84.9"),
  (
    "sst2_pretrained_backward",
    "accuracy",
    "- (a member of the forward + backward ensemble)",
    "ULMFiT's backward classifier",
  ),
  (
    "imdb",
    "accuracy",
    ">= 88.5% in 40 min",
    "PyTorch BiLSTM here 87.4% in 46 min; Maas et al. 2011 88.89",
  ),
  (
    "imdb_pretrained",
    "accuracy",
    ">= 90.0% in 40 min of fine-tuning",
    "Dai & Le 2015 SA-LSTM 92.76",
  ),
]


@dataclasses.dataclass(frozen=True)
class Ensemble:
  label: str
  output: str  # the summary `training.tools.ensemble` writes, in the workdir
  members: tuple[tuple[str, int], ...]  # (config, --seed), each in its `run_name`
  target: str
  anchors: str


def run_name(config: str, seed: int) -> str:
  """A config's run in the workdir: its own name at the default seed (the table's row), else NAME_seedN."""
  return config if seed == 0 else f"{config}_seed{seed}"


# Each fits the config's budget: its members train in 4-6 min each.
ENSEMBLES = [
  Ensemble(
    "`sst2_pretrained`, seeds 0, 1, 2: ensemble",
    "sst2_pretrained_ensemble.json",
    (("sst2_pretrained", 0), ("sst2_pretrained", 1), ("sst2_pretrained", 2)),
    SST2_TARGET,
    "Tai et al. 2015 LSTM 84.9; ULMFiT averages two classifiers the same way",
  ),
  Ensemble(
    "`sst2_pretrained` + `sst2_pretrained_backward`: ensemble",
    "sst2_pretrained_forward_backward.json",
    (("sst2_pretrained", 0), ("sst2_pretrained_backward", 0)),
    SST2_TARGET,
    "Tai et al. 2015 LSTM 84.9; ULMFiT's forward + backward ensemble",
  ),
]


def describe(metric: str, metrics: dict | None) -> str:
  if not metrics:
    return "-"
  if metric == "accuracy":
    return f"{100 * metrics['accuracy']:.1f}%"
  return f"{metrics['loss']:.3f} (perplexity {2.718281828 ** metrics['loss']:.1f})"


def best_from_rows(workdir: str, metric: str) -> dict:
  """The best eval row, for a run from before model selection wrote `best` into its summary."""
  rows = runs.rows(workdir, "eval")
  if not rows:
    return {}
  key = (lambda r: -r["accuracy"]) if metric == "accuracy" else (lambda r: r["loss"])
  row = min(rows, key=key)
  return {"step": row["step"], "eval": row}


def ensemble_row(workdir: str, ensemble: Ensemble, train: bool) -> list[str]:
  members = [os.path.join(workdir, run_name(config, seed)) for config, seed in ensemble.members]
  if train:
    for member, (config, seed) in zip(members, ensemble.members):
      runs.train(os.path.abspath(member), f"--flagfile=configs/{config}.flags", f"--seed={seed}")
  if not all(runs.finished(member) for member in members):
    return [ensemble.label, "not run", "", "", "", ensemble.target, ensemble.anchors]
  output = os.path.join(workdir, ensemble.output)
  command = [
    sys.executable,
    "-m",
    "training.tools.ensemble",
    f"--workdirs={','.join(members)}",
    f"--output={output}",
  ]
  subprocess.run(command, cwd=runs.ROOT, check=True, stdout=subprocess.DEVNULL)
  with open(output, encoding="utf-8") as f:
    scored = json.load(f)
  seconds = [runs.training_seconds(member) for member in members]
  time = (
    f"{sum(seconds) / 60:.1f} min ({' + '.join(f'{s / 60:.1f}' for s in seconds)})"
    if all(seconds)
    else "?"
  )
  steps = ", ".join(str(runs.read_summary(member)["step"]) for member in members)
  member_tests = ", ".join(describe("accuracy", member["test"]) for member in scored["members"])
  return [
    ensemble.label,
    time,
    describe("accuracy", scored["ensemble"]["eval"]),
    f"{describe('accuracy', scored['ensemble']['test'])} (members {member_tests})",
    steps,
    ensemble.target,
    ensemble.anchors,
  ]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", default="runs")
  parser.add_argument(
    "--train", action="store_true", help="train the configs that have no finished run"
  )
  parser.add_argument("--out", default="runs/quality.md")
  args = parser.parse_args()
  table = []
  for name, metric, target, anchors in CONFIGS:
    workdir = os.path.join(args.workdir, name)
    if args.train:
      runs.train(os.path.abspath(workdir), f"--flagfile=configs/{name}.flags")
    if not runs.finished(workdir):
      table.append([f"`{name}`", "not run", "", "", "", target, anchors])
      continue
    summary = runs.read_summary(workdir)
    best = summary.get("best") or best_from_rows(workdir, metric)
    seconds = runs.training_seconds(workdir)
    table.append(
      [
        f"`{name}`",
        f"{seconds / 60:.1f} min" if seconds else "? (not logged)",
        f"{describe(metric, best.get('eval'))} (step {best.get('step', '?')})",
        describe(metric, summary.get("test")),
        f"{summary['step']}",
        target,
        anchors,
      ]
    )
  for ensemble in ENSEMBLES:
    table.append(ensemble_row(args.workdir, ensemble, args.train))
  runs.write_table(
    args.out,
    "Quality on real corpora",
    f"`python -m bench.quality` on {runs.machine()}, from each run's `summary.json`. Dev = the split"
    " that chose the checkpoint (`best`), test = its parameters on the test split, read once. Time: training"
    " and evaluations, start-up excluded.",
    ["config", "time", "dev (best)", "test", "steps", "target", "anchors"],
    table,
  )


if __name__ == "__main__":
  main()
