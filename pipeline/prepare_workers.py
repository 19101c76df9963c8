"""What the worker processes of `pipeline.prepared_writer` run: count tokens, or encode texts to records.

Module-level functions, so that a process pool started with `spawn` (safe beside any threads of
the parent) can find them by name. Each worker builds its tokenizer state once, in `start`.
"""

import collections

import numpy as np

from pipeline import preparing
from pipeline.prepared import encode_record
from pipeline.tokenizers import Vocabulary

_state = {}


def start(kind: str, vocab_json: str | None) -> None:
  """Pool initializer: the tokenizer kind, and the vocabulary (as `Vocabulary.to_json`) when
  encoding."""
  _state["kind"] = kind
  _state["vocab"] = Vocabulary.from_json(vocab_json) if vocab_json is not None else None


def count_tokens(texts: list[str]) -> tuple[collections.Counter, int]:
  """(token counts, UTF-8 bytes) of `texts`."""
  return preparing.count_tokens(texts, _state["kind"])


def encode_texts(texts: list[str]) -> tuple[list[bytes], np.ndarray]:
  """(records, lengths): each text's token ids as a record, and its token count."""
  vocab = _state["vocab"]
  encoded = [vocab.encode(text) for text in texts]
  return [encode_record(ids) for ids in encoded], np.array([len(ids) for ids in encoded], np.int32)
