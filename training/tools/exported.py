"""The exported-model file: one msgpack holding parameters, vocabulary, labels and the model's
definition (written by `python -m training.tools.export`, read by `load_exported`)."""

import jax
from flax import serialization

from pipeline import paths
from pipeline.errors import DataError
from pipeline.labels import Labels
from pipeline.tokenizers import Vocabulary

FORMAT = 1


def export(run, path: str) -> int:
  """Writes `run` (a `training.tools.inference.TrainedRun`) to `path` atomically; returns its size."""
  from training.model.build import model_spec

  name, kwargs = model_spec(run.config, len(run.vocab), run.labels.num_classes if run.labels else 0)
  blob = {
    "format": FORMAT,
    "model": {"class": name, "kwargs": kwargs},
    "params": jax.device_get(run.params),
    "vocab": {
      "kind": run.vocab.kind,
      "tokens": run.vocab.tokens,
      # a subword vocabulary's SentencePiece model (bytes), which encodes and decodes
      **({"sentencepiece_model": run.vocab.model} if run.vocab.model is not None else {}),
    },
    "labels": None
    if run.labels is None
    else {"num_classes": run.labels.num_classes, "names": list(run.labels.names or [])},
    "seq_len": run.config.seq_len,
    "step": run.step,
  }
  data = serialization.msgpack_serialize(blob)
  paths.write_bytes(path, data)
  return len(data)


def load_exported(path: str):
  """(model, params, vocabulary, labels or None) from an exported file."""
  from training.model import models

  try:
    blob = serialization.msgpack_restore(paths.read_bytes(path))
  except OSError as e:
    raise DataError(f"{path}: cannot read it ({e.strerror})") from None
  except Exception:  # msgpack's own errors (truncated, extra data, not msgpack at all)
    raise DataError(
      f"{path}: not an exported model (not a msgpack file; write one with rnn-export)"
    ) from None
  if not isinstance(blob, dict) or blob.get("format") != FORMAT:
    found = blob.get("format") if isinstance(blob, dict) else None
    raise DataError(
      f"{path}: not an exported model of format {FORMAT}"
      f"{f' (its format is {found})' if found is not None else ''}; write one with rnn-export"
    )
  model = models.model_from_spec(blob["model"]["class"], blob["model"]["kwargs"])
  vocab = Vocabulary(
    blob["vocab"]["kind"], list(blob["vocab"]["tokens"]), blob["vocab"].get("sentencepiece_model")
  )
  labels = None
  if blob["labels"] is not None:
    labels = Labels(blob["labels"]["num_classes"], tuple(blob["labels"]["names"]) or None)
  return model, blob["params"], vocab, labels
