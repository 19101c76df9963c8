"""A local corpus as a TFDS dataset of text in ArrayRecord format, served by `tfds:NAME/SPLIT`
(`python -m pipeline.prepare --name=NAME --data_dir=DIR --split=SPLIT=SPEC`).

Records hold `text` (and `label` with labels). The result is read with random access through
`tfds.data_source`, without TensorFlow, like a catalog dataset. (`pipeline.prepared` is the
tokenised format the trainer streams; this one keeps the text, for other TFDS users.)
"""

import re
from collections.abc import Mapping, Sequence

import numpy as np

from pipeline.errors import DataError

_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")


def write_tfds_dataset(
  name: str,
  splits: Mapping[str, Sequence[dict]],
  *,
  data_dir: str,
  with_labels: bool,
  version: str = "1.0.0",
) -> str:
  """Writes `splits` (split name -> examples) as TFDS dataset `name`; returns its directory."""
  import tensorflow_datasets as tfds  # Slow to import; only this command needs it.

  if not _NAME_RE.match(name):
    raise DataError(
      f"--name={name!r}: use lower-case letters, digits and underscores, starting with a letter"
    )
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
