r"""Scores an ensemble of trained classifiers: the average of their class probabilities.

  python -m training.tools.ensemble --workdirs=runs/sst2_pretrained_seed0,runs/sst2_pretrained_seed1,runs/sst2_pretrained_seed2 \
      --output=runs/sst2_pretrained_ensemble.json

Each member is a finished `--task=classify` run, used with its selected parameters (the best dev
evaluation's, as `training.tools.predict` uses them). The members must have been trained with the same
`--eval_data` and `--test_data` and the same classes; they may differ in anything else (seed,
cell, sizes, vocabulary, direction): each reads the text with its own vocabulary. The dev split
is scored for every member and for the ensemble, and so is the test split: nothing is chosen here,
so the test figure stays a figure read once (decide on an ensemble, and of which runs, before
reading it). Prints a JSON summary; `--output` also writes it.

Averaging the probabilities of models that differ only in their seed is the cheapest ensemble
there is (ULMFiT averages a forward and a backward classifier the same way); its members train
independently, side by side or one after another.
"""

import json
import math

from absl import flags

from launch import cli
from pipeline import paths
from pipeline.errors import DataError
from training.bookkeeping.class_report import format_report
from training.tools.scoring import score

_WORKDIRS = flags.DEFINE_list(
  "workdirs", None, "Comma-separated workdirs of finished classifier runs.", required=True
)
_OUTPUT = flags.DEFINE_string("output", "", "Also write the summary (JSON) to this file.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 64, "Sequences per forward pass.")


def main(argv):
  cli.no_arguments(argv)
  cli.quiet_libraries()
  from training.bookkeeping.checkpoints import CheckpointError
  from training.bookkeeping.trained_run import load_run

  with cli.one_line_errors(DataError, CheckpointError):
    if _BATCH_SIZE.value < 1:
      raise DataError(f"--batch_size={_BATCH_SIZE.value}: must be positive")
    if len(_WORKDIRS.value) < 2:
      raise DataError(f"--workdirs={','.join(_WORKDIRS.value)}: name two runs or more")
    summary = score([load_run(workdir) for workdir in _WORKDIRS.value], _BATCH_SIZE.value)
  text = json.dumps(summary, indent=2)
  print(text)
  if _OUTPUT.value:
    paths.write_text(_OUTPUT.value, text + "\n")
  for split in summary["ensemble"]:
    members = ", ".join(f"{m[split]['accuracy']:.4f}" for m in summary["members"])
    mean = math.fsum(m[split]["accuracy"] for m in summary["members"]) / len(summary["members"])
    print(
      f"{split}: ensemble accuracy {summary['ensemble'][split]['accuracy']:.4f};"
      f" members {members} (mean {mean:.4f})"
    )
    print(format_report(summary["ensemble"][split], f"{split}, ensemble:", "the JSON above"))


def run_main():
  """Console entry point (`rnn-ensemble`)."""
  cli.run(main, __name__)


if __name__ == "__main__":
  run_main()
