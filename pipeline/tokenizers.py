"""Character and word vocabularies, built from the training data and saved beside the run.

Ids 0-2 are reserved: `<pad>` (padding, never a target), `<unk>` (a token not in the
vocabulary) and `<eos>` (the end of a document in a per-token stream). The remaining ids
are the training data's tokens, most frequent first (ties broken by the token), so that the
same data always gives the same vocabulary.
"""

import collections
import json
import re
from collections.abc import Iterable

import numpy as np

from pipeline import paths
from pipeline.errors import DataError

PAD, UNK, EOS = 0, 1, 2
SPECIAL_TOKENS = ("<pad>", "<unk>", "<eos>")
KINDS = ("char", "word", "ptb")

# word: runs of letters, digits, underscores and inner apostrophes; any other non-space
# character is a token of its own. Text is lower-cased.
_WORD_RE = re.compile(r"\w+(?:'\w+)*|[^\w\s]")

# ptb: words as the Penn Treebank splits them, so that raw text ("doesn't", "it's") and text
# that was already tokenised that way ("does n't", "it 's": SST, PTB, many parsed corpora)
# give the same tokens. Negation and clitics become tokens of their own, shared by every
# word they attach to ("n't" in "isn't", "don't", "can't"). Lower-cased.
_PTB_RE = re.compile(r"\w+(?=n't\b)|n't\b|'(?:s|re|ve|ll|d|m)\b|\w+|[^\w\s]")
# Treebank escapes of brackets, read back as the brackets they stand for.
_PTB_ESCAPES = re.compile(r"-(lrb|rrb|lsb|rsb|lcb|rcb)-")
_PTB_BRACKETS = {"lrb": " ( ", "rrb": " ) ", "lsb": " [ ", "rsb": " ] ", "lcb": " { ", "rcb": " } "}


def split_tokens(text: str, kind: str) -> list[str]:
  if kind == "char":
    return list(text)
  if kind == "ptb":
    text = _PTB_ESCAPES.sub(lambda match: _PTB_BRACKETS[match.group(1)], text.lower())
    return _PTB_RE.findall(text)
  return _WORD_RE.findall(text.lower())


class Vocabulary:
  """A mapping between tokens and ids for one tokeniser kind."""

  def __init__(self, kind: str, tokens: list[str]):
    if kind not in KINDS:
      raise DataError(
        f"--tokenizer={kind!r}: unknown tokenizer; expected one of {', '.join(KINDS)}"
      )
    if tuple(tokens[: len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
      raise ValueError(f"a vocabulary starts with {SPECIAL_TOKENS}")
    self.kind = kind
    self.tokens = list(tokens)
    self._ids = {token: i for i, token in enumerate(self.tokens)}

  def __len__(self):
    return len(self.tokens)

  def __eq__(self, other):
    return isinstance(other, Vocabulary) and (self.kind, self.tokens) == (other.kind, other.tokens)

  @classmethod
  def build(cls, texts: Iterable[str], kind: str, max_size: int | None = None) -> "Vocabulary":
    """Counts the tokens of `texts`; keeps the `max_size` most frequent (specials included)."""
    if kind not in KINDS:
      raise DataError(
        f"--tokenizer={kind!r}: unknown tokenizer; expected one of {', '.join(KINDS)}"
      )
    counts = collections.Counter()
    for text in texts:
      counts.update(split_tokens(text, kind))
    return cls.from_counts(counts, kind, max_size)

  @classmethod
  def from_counts(
    cls, counts: collections.Counter, kind: str, max_size: int | None = None
  ) -> "Vocabulary":
    """The vocabulary of these token counts (as `build` makes it from the texts)."""
    if kind not in KINDS:
      raise DataError(
        f"--tokenizer={kind!r}: unknown tokenizer; expected one of {', '.join(KINDS)}"
      )
    ranked = sorted(counts, key=lambda token: (-counts[token], token))
    if max_size is not None:
      ranked = ranked[: max(max_size - len(SPECIAL_TOKENS), 0)]
    return cls(kind, list(SPECIAL_TOKENS) + ranked)

  def encode(self, text: str) -> np.ndarray:
    """Token ids [N] (int32) of `text`; unknown tokens become `<unk>`."""
    return np.fromiter(
      (self._ids.get(token, UNK) for token in split_tokens(text, self.kind)), dtype=np.int32
    )

  def decode(self, ids: Iterable[int]) -> str:
    """The text of `ids`, without padding; words are joined by single spaces."""
    tokens = [self.tokens[i] for i in ids if i != PAD]
    return ("" if self.kind == "char" else " ").join(tokens)

  def save(self, path: str) -> None:
    # Atomic: a crash never leaves half a vocabulary.
    paths.write_text(
      path, json.dumps({"kind": self.kind, "tokens": self.tokens}, ensure_ascii=False, indent=0)
    )

  @classmethod
  def load(cls, path: str) -> "Vocabulary":
    try:
      saved = json.loads(paths.read_text(path))
      return cls(saved["kind"], saved["tokens"])
    except (OSError, ValueError, KeyError, TypeError) as e:
      raise DataError(f"{path}: unreadable vocabulary ({e})") from None
