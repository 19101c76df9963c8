r"""Samples text from a trained language model.

  python -m training.tools.generate --workdir=runs/shakespeare --prompt="ROMEO:" --length=300 \
      --temperature=0.8 --top_k=20 --seed=0

The prompt is read in one pass, then the model runs one step per new token from its carried
state (a jitted `lax.scan` of single steps; the prompt is never re-read). Same flags and seed,
same text. A backward language model (`--read_backward`) writes the text that comes before the
prompt. Uses the best checkpoint (chosen on the dev
split) when the run kept one, else the latest, or `--step`.
"""

from absl import flags

from launch import cli
from pipeline.errors import DataError

_WORKDIR = flags.DEFINE_string(
  "workdir", None, "The trained language model's workdir.", required=True
)
_PROMPT = flags.DEFINE_string("prompt", "", "Text to continue; empty: start a new document.")
_LENGTH = flags.DEFINE_integer("length", 200, "Tokens to generate.")
_TEMPERATURE = flags.DEFINE_float(
  "temperature", 1.0, "Softmax temperature; 0 picks the most likely token."
)
_TOP_K = flags.DEFINE_integer("top_k", 0, "Sample among the K most likely tokens only; 0: all.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
_STEP = flags.DEFINE_integer(
  "step",
  0,
  "Checkpoint step to use; 0: the best on the dev split if the run kept one, else the latest.",
)


def main(argv):
  cli.no_arguments(argv)
  cli.quiet_libraries()
  from training.bookkeeping.checkpoints import CheckpointError
  from training.bookkeeping.trained_run import load_run
  from training.tools.inference import sample

  with cli.one_line_errors(DataError, CheckpointError):
    if _LENGTH.value < 1 or _TEMPERATURE.value < 0 or _TOP_K.value < 0:
      raise DataError("--length must be positive, --temperature and --top_k >= 0")
    run = load_run(_WORKDIR.value, _STEP.value)
    if run.config.task != "lm":
      raise DataError(
        f"--workdir={_WORKDIR.value}: a --task={run.config.task} run; generate needs a"
        " language model (--task=lm); use training.tools.predict for classifiers"
      )
    text = sample(
      run,
      _PROMPT.value,
      _LENGTH.value,
      temperature=_TEMPERATURE.value,
      top_k=_TOP_K.value,
      seed=_SEED.value,
    )
  sep = "" if run.vocab.kind == "char" or not _PROMPT.value else " "
  # A backward language model (--read_backward) writes what comes before the prompt.
  print(text + sep + _PROMPT.value if run.config.read_backward else _PROMPT.value + sep + text)


def run_main():
  """Console entry point (`rnn-generate`)."""
  cli.run(main, __name__)


if __name__ == "__main__":
  run_main()
