"""Classifiers scored on their runs' dev and test splits, alone and as an ensemble (the average
of their class probabilities): what `rnn-ensemble` prints. Each member reads the text with its
own vocabulary."""

import numpy as np

from pipeline import sources
from pipeline.errors import DataError
from training.bookkeeping.class_report import class_report, confusion_from_predictions
from training.config import source_read_options

_SPLITS = (("eval", "eval_data"), ("test", "test_data"))


def split_examples(config, flag: str) -> list[dict] | None:
  """The labelled examples of a run's dev (`eval_data`) or test split, in the source's order, read
  as the trainer read them; None when the run had no such split."""
  spec = getattr(config, flag)
  if not spec:
    return None
  options = dict(with_labels=True, **source_read_options(config))
  # An ensemble reads each split's text and encodes it with each member's vocabulary; a prepared
  # dataset holds token ids. A prepared training set is fine where the split is a file of its own.
  prepared = f"{sources.PREPARED}:"
  if spec.startswith(prepared) or (
    spec.startswith(sources.HOLDOUT) and config.train_data.startswith(prepared)
  ):
    raise DataError(
      f"--{flag}={spec}: the run read this split from a prepared dataset (token ids); an ensemble"
      " reads each member's text with its own vocabulary: give the members the split's source"
      " files (--eval_data=KIND:PATH)"
    )
  if spec.startswith(sources.HOLDOUT):
    training_examples = sources.read_joined(config.train_data, "train_data", **options)
    return sources.holdout_split(training_examples, spec, flag)[1]
  return list(sources.read_joined(spec, flag, **options))


def metrics(probabilities: np.ndarray, labels: np.ndarray, class_names=None) -> dict:
  """Accuracy and mean negative log-likelihood of `labels` under `probabilities` [N, C], and with
  `class_names` the per-class report (`class_report`) of the most probable classes."""
  chosen = probabilities[np.arange(len(labels)), labels]
  predicted = probabilities.argmax(axis=1)
  result = {
    "loss": float(-np.mean(np.log(np.maximum(chosen, 1e-12)))),
    "accuracy": float(np.mean(predicted == labels)),
    "examples": int(len(labels)),
  }
  if class_names is not None:
    confusion = confusion_from_predictions(predicted, labels, probabilities.shape[1])
    result.update(class_report(confusion, class_names))
  return result


def class_names(run) -> list[str]:
  return [run.labels.name(i) for i in range(run.labels.num_classes)]


def _check_members(runs) -> None:
  first = runs[0]
  for run in runs:
    if run.config.task != "classify":
      raise DataError(
        f"--workdirs: {run.workdir} is a --task={run.config.task} run; an ensemble needs classifiers"
      )
    for what, value, expected in [
      ("--eval_data", run.config.eval_data, first.config.eval_data),
      ("--test_data", run.config.test_data, first.config.test_data),
      (
        "classes",
        (run.labels.names, run.labels.num_classes),
        (first.labels.names, first.labels.num_classes),
      ),
    ]:
      if _same_files(value) != _same_files(expected):
        raise DataError(
          f"--workdirs: {run.workdir} was trained with {what} {value!r}, {first.workdir} with"
          f" {expected!r}; the members must share their dev and test splits and classes"
        )
    # A held-out dev split is a slice of the training data: the same only on the same data (else
    # one member's dev examples could be another's training examples).
    if first.config.eval_data.startswith(sources.HOLDOUT) and (
      _same_files(run.config.train_data) != _same_files(first.config.train_data)
    ):
      raise DataError(
        f"--workdirs: {run.workdir} holds out its dev split ({first.config.eval_data}) from"
        f" --train_data {run.config.train_data!r}, {first.workdir} from {first.config.train_data!r};"
        " members with a held-out dev split must share their training data"
      )
  if first.config.eval_data == "":
    raise DataError(
      f"--workdirs: {first.workdir} had no --eval_data; an ensemble is scored on the runs' dev split"
    )


def _same_files(value):
  """A split's spec as the files it names (runs trained from two checkouts, or through a linked
  directory, name the same files by other paths); anything else as it is."""
  return sources.with_absolute_path(value, resolve_links=True) if isinstance(value, str) else value


def score(runs, batch_size: int = 64) -> dict:
  """Every member's and the ensemble's metrics on the runs' dev and test splits."""
  from training.tools.inference import class_probabilities

  _check_members(runs)
  summary = {
    "members": [{"workdir": run.workdir, "step": run.step} for run in runs],
    "ensemble": {},
  }
  for split, flag in _SPLITS:
    examples = split_examples(runs[0].config, flag)
    if examples is None:
      continue
    labels = runs[0].labels.ids(examples, getattr(runs[0].config, flag))
    texts = [example["text"] for example in examples]
    each = [np.stack(list(class_probabilities(run, texts, batch_size))) for run in runs]
    names = class_names(runs[0])
    for member, probabilities in zip(summary["members"], each):
      member[split] = metrics(probabilities, labels, names)
    summary["ensemble"][split] = metrics(np.mean(each, axis=0), labels, names)
  return summary
