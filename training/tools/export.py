r"""Exports a trained model as one self-contained file: parameters, vocabulary, labels and the
model's definition, for inference without the trainer.

  python -m training.tools.export --workdir=runs/sst2 --out=model.msgpack

The file is Flax's msgpack serialisation of a dict: `params`, `model` (`class` and `kwargs` of
`training.model.models.LanguageModel` or `SequenceClassifier`), `vocab` (`kind`, `tokens`), `labels`
(`num_classes`, `names`, or None) and `format`. Load it (`training.tools.exported.load_exported`, or
by hand as the README shows):

  from flax import serialization
  from training.model import models
  blob = serialization.msgpack_restore(open("model.msgpack", "rb").read())
  model = models.model_from_spec(blob["model"]["class"], blob["model"]["kwargs"])
  logits = model.apply({"params": blob["params"]}, tokens, mask, ..., train=False)
"""

from absl import flags

from launch import cli
from pipeline.errors import DataError

_WORKDIR = flags.DEFINE_string("workdir", None, "The trained run's workdir.", required=True)
_OUT = flags.DEFINE_string("out", None, "The file to write (e.g. model.msgpack).", required=True)
_STEP = flags.DEFINE_integer(
  "step",
  0,
  "Checkpoint step to export; 0: the best on the dev split if the run kept one, else the latest.",
)


def main(argv):
  cli.no_arguments(argv)
  cli.quiet_libraries()
  from training.bookkeeping.checkpoints import CheckpointError
  from training.bookkeeping.trained_run import load_run
  from training.tools.exported import export

  with cli.one_line_errors(DataError, CheckpointError):
    run = load_run(_WORKDIR.value, _STEP.value)
    try:
      size = export(run, _OUT.value)
    except OSError as e:
      raise DataError(f"--out={_OUT.value}: {e.strerror}") from None
  print(
    f"wrote {_OUT.value} ({size / 2**20:.1f} MiB): {run.config.task} model from step {run.step} of {run.workdir}"
  )


def run_main():
  """Console entry point (`rnn-export`)."""
  cli.run(main, __name__)


if __name__ == "__main__":
  run_main()
