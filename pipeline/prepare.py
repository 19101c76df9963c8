r"""Turns a local corpus into a TFDS dataset in ArrayRecord format, served by `tfds:NAME/SPLIT`.

  python -m pipeline.prepare --name=my_reviews --data_dir=~/tensorflow_datasets \
      --split=train=jsonl:train.jsonl.gz --split=test=jsonl:test.jsonl.gz --labels

Each `--split=SPLIT=SPEC` reads `SPEC` (`KIND:PATH[SLICE]`, see `pipeline.sources`) into the
split `SPLIT`. Records hold `text` (and `label` with `--labels`). The result is read with
random access through `tfds.data_source`, without TensorFlow, like a catalog dataset.
"""

import re
import sys
from collections.abc import Mapping, Sequence

import numpy as np
from absl import flags

from pipeline import sources
from pipeline.errors import DataError
from pipeline.paths import absolute

_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")


def prepare(name: str, splits: Mapping[str, Sequence[dict]], *, data_dir: str, with_labels: bool,
            version: str = "1.0.0") -> str:
  """Writes `splits` (split name -> examples) as TFDS dataset `name`; returns its directory."""
  import tensorflow_datasets as tfds  # Slow to import; only this command needs it.

  if not _NAME_RE.match(name):
    raise DataError(f"--name={name!r}: use lower-case letters, digits and underscores, starting with a letter")
  features = {"text": tfds.features.Text()}
  if with_labels:
    features["label"] = np.int64

  class LocalCorpus(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    VERSION = tfds.core.Version(version)

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features))

    def _split_generators(self, dl_manager):
      del dl_manager
      return {split: self._generate_examples(examples) for split, examples in splits.items()}

    def _generate_examples(self, examples):
      for index, example in enumerate(examples):
        yield index, {key: example[key] for key in features}

  # TFDS names a builder after its class (CamelCase -> snake_case): rename it to `name`.
  LocalCorpus.name = name
  builder = LocalCorpus(data_dir=data_dir, file_format="array_record")
  builder.download_and_prepare()
  return str(builder.data_dir)


_NAME = flags.DEFINE_string("name", None, "Dataset name (snake_case).", required=True)
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data directory to write into.", required=True)
_SPLITS = flags.DEFINE_multi_string("split", [], "SPLIT=KIND:PATH[SLICE], once per split.")
_LABELS = flags.DEFINE_bool("labels", False, "Read and store integer labels (per-sequence data).")


def main(argv):
  del argv
  try:
    splits = {}
    for value in _SPLITS.value:
      split, sep, spec = value.partition("=")
      if not sep or not split:
        raise DataError(f"--split={value!r}: expected SPLIT=KIND:PATH[SLICE]")
      spec = sources.parse_spec(sources.with_absolute_path(spec), "split")
      splits[split] = sources.read_examples(spec, with_labels=_LABELS.value)
    if not splits:
      raise DataError("--split: give at least one SPLIT=KIND:PATH[SLICE]")
    print(prepare(_NAME.value, splits, data_dir=absolute(_DATA_DIR.value), with_labels=_LABELS.value))
  except DataError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


def run_main():
  """Console entry point (`rnn-prepare`)."""
  from training import cli

  cli.run(main, __name__)


if __name__ == "__main__":
  run_main()
