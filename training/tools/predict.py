r"""Labels text with a trained classifier: one sequence per input line, one JSON line out.

  python -m training.tools.predict --workdir=runs/sst2 --input=reviews.txt
  echo "a gorgeous , witty , seductive movie ." | python -m training.tools.predict --workdir=runs/sst2 --input=-

Each output line is `{"label": NAME, "label_id": ID, "probabilities": {NAME: P, ...}}`, in input
order. Texts are tokenised with the run's vocabulary and truncated to its `--seq_len`, as in
training, and read in batches. Uses the best checkpoint (chosen on the dev
split) when the run kept one, else the latest, or `--step`.

Labelled data is scored as well as labelled: `--data=KIND:PATH[SLICE]` (`csv:`, `tsv:`, `jsonl:`,
`parquet:`, `lines:` ..., read with the run's own `--text_field`, `--label_field` and
encoding, as the trainer read its splits) adds `"true_label"` to each line and ends with the
classification report (per-class precision, recall, F1 and support, the confusion matrix) on
standard error; `--report=FILE` writes it as JSON too.

  python -m training.tools.predict --workdir=runs/reviews --data=csv:reviews_test.csv --report=runs/reviews/report.json
"""

import json
import os
import sys
from collections.abc import Iterator

from absl import flags

from launch import cli
from pipeline.errors import DataError

_WORKDIR = flags.DEFINE_string("workdir", None, "The trained classifier's workdir.", required=True)
_INPUT = flags.DEFINE_string(
  "input", "-", "A text file with one sequence per line, or - for standard input."
)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 64, "Sequences per forward pass.")
_ENCODING = flags.DEFINE_string("encoding", "utf-8", "Encoding of --input.")
_DATA = flags.DEFINE_string(
  "data",
  "",
  "Labelled examples to predict and score instead of --input (KIND:PATH[SLICE], read as the run"
  " read its training data); ends with the classification report.",
)
_REPORT = flags.DEFINE_string("report", "", "With --data: also write the report (JSON) here.")
_STEP = flags.DEFINE_integer(
  "step",
  0,
  "Checkpoint step to use; 0: the best on the dev split if the run kept one, else the latest.",
)


def _lines(path: str, encoding: str) -> Iterator[str]:
  stream = sys.stdin if path == "-" else open(path, encoding=encoding, newline="")
  try:
    for number, line in enumerate(stream, start=1):
      yield line.rstrip("\r\n")
  except UnicodeDecodeError as e:
    raise DataError(
      f"{path}:{number}: not valid {encoding} ({e.reason}); pass --encoding"
    ) from None
  finally:
    if stream is not sys.stdin:
      stream.close()


def main(argv):
  cli.no_arguments(argv)
  cli.quiet_libraries()
  from training.bookkeeping.checkpoints import CheckpointError
  from training.bookkeeping.trained_run import load_run
  from training.tools.inference import predict

  with cli.one_line_errors(DataError, CheckpointError):
    if _BATCH_SIZE.value < 1:
      raise DataError(f"--batch_size={_BATCH_SIZE.value}: must be positive")
    if _REPORT.value and not _DATA.value:
      raise DataError("--report: needs --data (labelled examples to score)")
    if not _DATA.value and _INPUT.value != "-" and not os.path.isfile(_INPUT.value):
      raise DataError(f"--input={_INPUT.value}: no such file")  # before the model loads
    run = load_run(_WORKDIR.value, _STEP.value)
    if run.config.task != "classify":
      raise DataError(
        f"--workdir={_WORKDIR.value}: a --task={run.config.task} run; predict needs a"
        " classifier (--task=classify); use training.tools.generate for language models"
      )
    if _DATA.value:
      _predict_and_score(run, _DATA.value, _REPORT.value, _BATCH_SIZE.value)
      return
    for prediction in predict(run, _lines(_INPUT.value, _ENCODING.value), _BATCH_SIZE.value):
      print(json.dumps(prediction, ensure_ascii=False))


def _predict_and_score(run, spec: str, report_path: str, batch_size: int) -> None:
  """Predictions of `spec`'s labelled examples on standard output, then their report."""
  import numpy as np

  from pipeline import paths, sources
  from training.bookkeeping.class_report import format_report
  from training.config import source_read_options
  from training.tools.inference import class_probabilities
  from training.tools.scoring import class_names, metrics

  examples = sources.read_joined(spec, "data", with_labels=True, **source_read_options(run.config))
  labels = run.labels.ids(examples, spec)
  names = class_names(run)
  rows = []
  texts = (example["text"] for example in examples)
  for probabilities, label in zip(class_probabilities(run, texts, batch_size), labels):
    rows.append(probabilities)
    best = int(probabilities.argmax())
    prediction = {
      "label": names[best],
      "label_id": best,
      "true_label": names[label],
      "probabilities": {name: round(float(p), 6) for name, p in zip(names, probabilities)},
    }
    print(json.dumps(prediction, ensure_ascii=False))
  if not rows:
    raise DataError(f"--data={spec}: no examples")
  report = metrics(np.stack(rows), labels, names)
  print(format_report(report, f"{spec}:", "--report=FILE"), file=sys.stderr)
  if report_path:
    paths.write_text(report_path, json.dumps(report, indent=2) + "\n")


def run_main():
  """Console entry point (`rnn-predict`)."""
  cli.run(main, __name__)


if __name__ == "__main__":
  run_main()
