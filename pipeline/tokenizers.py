"""Character, word and subword vocabularies, built from the training data and saved beside the run.

Ids 0-2 are reserved: `<pad>` (padding, never a target), `<unk>` (a token not in the
vocabulary) and `<eos>` (the end of a document in a per-token stream). For `char`, `word` and
`ptb` the remaining ids are the training data's tokens, most frequent first (ties broken by the
token), so that the same data always gives the same vocabulary. `bpe` and `unigram` are subword
vocabularies trained on the data by SentencePiece (`pipeline.subwords`): lossless (no `<unk>`,
case and whitespace kept), their model saved inside the vocabulary file.
"""

import base64
import collections
import json
import re
from collections.abc import Iterable

import numpy as np

from pipeline import paths
from pipeline.errors import DataError

PAD, UNK, EOS = 0, 1, 2
SPECIAL_TOKENS = ("<pad>", "<unk>", "<eos>")
SUBWORD_KINDS = ("bpe", "unigram")
KINDS = ("char", "word", "ptb", *SUBWORD_KINDS)

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
  """A mapping between tokens and ids for one tokeniser kind. A subword vocabulary also holds
  its SentencePiece model (`model`: the serialized proto), which encodes and decodes."""

  def __init__(
    self,
    kind: str,
    tokens: list[str],
    model: bytes | None = None,
    byte_stats: dict | None = None,
  ):
    if kind not in KINDS:
      raise DataError(
        f"--tokenizer={kind!r}: unknown tokenizer; expected one of {', '.join(KINDS)}"
      )
    if tuple(tokens[: len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
      raise ValueError(f"a vocabulary starts with {SPECIAL_TOKENS}")
    if (kind in SUBWORD_KINDS) != (model is not None):
      raise ValueError(f"a {kind} vocabulary {'needs' if model is None else 'has no'} a model")
    self.kind = kind
    self.tokens = list(tokens)
    self.model = model
    # word and ptb: the mean bytes of whitespace per token and of a word outside the vocabulary,
    # measured on the training text (`from_counts`), which make `byte_lengths` exact on it.
    self.byte_stats = byte_stats
    self._ids = {token: i for i, token in enumerate(self.tokens)}
    self._subwords = None
    if model is not None:
      from pipeline.subwords import SubwordModel

      self._subwords = SubwordModel(model)
      if self._subwords.pieces() != self.tokens:
        raise ValueError("the vocabulary's tokens differ from its model's pieces")

  def __len__(self):
    return len(self.tokens)

  def __eq__(self, other):
    # (byte_stats is a measurement of the training text, not part of the mapping)
    return isinstance(other, Vocabulary) and (self.kind, self.tokens, self.model) == (
      other.kind,
      other.tokens,
      other.model,
    )

  @classmethod
  def train_subwords(cls, lines: Iterable[str], kind: str, vocab_size: int) -> "Vocabulary":
    """A `bpe` or `unigram` vocabulary of `vocab_size` pieces trained on `lines`."""
    from pipeline.subwords import SubwordModel, train

    model = train(lines, kind, vocab_size)
    return cls(kind, SubwordModel(model).pieces(), model)

  @classmethod
  def build(cls, texts: Iterable[str], kind: str, max_size: int | None = None) -> "Vocabulary":
    """Counts the tokens of `texts`; keeps the `max_size` most frequent (specials included)."""
    if kind not in KINDS:
      raise DataError(
        f"--tokenizer={kind!r}: unknown tokenizer; expected one of {', '.join(KINDS)}"
      )
    if kind in SUBWORD_KINDS:
      from pipeline.subwords import training_lines

      return cls.train_subwords(training_lines(texts), kind, max_size or 0)
    counts, text_bytes = collections.Counter(), 0
    for text in texts:
      counts.update(split_tokens(text, kind))
      text_bytes += len(text.encode("utf-8"))
    return cls.from_counts(counts, kind, max_size, text_bytes)

  @classmethod
  def from_counts(
    cls,
    counts: collections.Counter,
    kind: str,
    max_size: int | None = None,
    text_bytes: int = 0,
  ) -> "Vocabulary":
    """The vocabulary of these token counts (as `build` makes it from the texts); `text_bytes`,
    the texts' UTF-8 size, calibrates a word vocabulary's bytes per token (`byte_lengths`)."""
    if kind not in KINDS:
      raise DataError(
        f"--tokenizer={kind!r}: unknown tokenizer; expected one of {', '.join(KINDS)}"
      )
    ranked = sorted(counts, key=lambda token: (-counts[token], token))
    if max_size is not None:
      ranked = ranked[: kept_size(max_size)]
    totals = token_totals(counts.items()) if counts else (0, 0)
    return cls.from_ranked([(t, counts[t]) for t in ranked], kind, totals, text_bytes)

  @classmethod
  def from_ranked(
    cls,
    ranked: list[tuple[str, int]],
    kind: str,
    totals: tuple[int, int],
    text_bytes: int = 0,
  ) -> "Vocabulary":
    """The vocabulary of the kept tokens `ranked` (most frequent first, ties by token) with their
    counts, where `totals` = `token_totals` of every token counted: what `from_counts` makes,
    from what a distributed count can hand over without gathering every distinct token
    (`pipeline.beam_prepare`)."""
    if kind not in KINDS:
      raise DataError(
        f"--tokenizer={kind!r}: unknown tokenizer; expected one of {', '.join(KINDS)}"
      )
    total, total_bytes = totals
    byte_stats = None
    if kind != "char" and text_bytes and total:
      # Integer sums, then one division each: the same floats however the counts were summed.
      kept = sum(count for _, count in ranked)
      kept_bytes = sum(count * len(token.encode("utf-8")) for token, count in ranked)
      byte_stats = {
        "separator": (text_bytes - total_bytes) / total,
        "unknown_word": (total_bytes - kept_bytes) / (total - kept) if total > kept else 1.0,
      }
    return cls(kind, list(SPECIAL_TOKENS) + [token for token, _ in ranked], byte_stats=byte_stats)

  def to_json(self) -> str:
    """The vocabulary as `save` writes it (and `from_json` reads it)."""
    saved = {"kind": self.kind, "tokens": self.tokens}
    if self.byte_stats is not None:
      saved["byte_stats"] = self.byte_stats
    if self.model is not None:
      saved["sentencepiece_model"] = base64.b64encode(self.model).decode("ascii")
    return json.dumps(saved, ensure_ascii=False, indent=0)

  @classmethod
  def from_json(cls, text: str) -> "Vocabulary":
    saved = json.loads(text)
    model = saved.get("sentencepiece_model")
    model = base64.b64decode(model, validate=True) if model is not None else None
    return cls(saved["kind"], saved["tokens"], model, saved.get("byte_stats"))

  def encode(self, text: str) -> np.ndarray:
    """Token ids [N] (int32) of `text`; unknown tokens become `<unk>` (never for subwords)."""
    if self._subwords is not None:
      return np.asarray(self._subwords.encode(text), np.int32)
    return np.fromiter(
      (self._ids.get(token, UNK) for token in split_tokens(text, self.kind)), dtype=np.int32
    )

  def decode(self, ids: Iterable[int]) -> str:
    """The text of `ids`, without padding; words are joined by single spaces (subwords give back
    the text exactly, case and whitespace included)."""
    ids = [int(i) for i in ids if i != PAD]
    if self._subwords is not None:
      return self._subwords.decode(ids)
    tokens = [self.tokens[i] for i in ids]
    return ("" if self.kind == "char" else " ").join(tokens)

  def byte_lengths(self) -> np.ndarray:
    """float32 [V]: the UTF-8 bytes of text each id stands for, for bits per byte. Exact for
    `char` and the subwords (`<eos>`, a document's end, counts as the one line break that
    separates documents in a file); for `word` and `ptb`, which drop whitespace and case, a word
    counts its own bytes and one separator, and `<unk>` the mean word's."""
    if self._subwords is not None:
      lengths = self._subwords.byte_lengths()
      lengths[UNK] = 1  # (never produced: unknown characters fall back to their bytes)
    else:
      lengths = [len(token.encode("utf-8")) for token in self.tokens]
      if self.kind != "char":
        # Without measured figures (a vocabulary saved by earlier code): one separator per word.
        stats = self.byte_stats or {"separator": 1.0, "unknown_word": None}
        words = lengths[len(SPECIAL_TOKENS) :]
        unknown = stats["unknown_word"] or (sum(words) / len(words) if words else 1.0)
        lengths = [length + stats["separator"] for length in lengths]
        lengths[UNK] = unknown + stats["separator"]
    lengths = np.asarray(lengths, np.float32)
    lengths[PAD], lengths[EOS] = 0, 1
    return lengths

  def save(self, path: str) -> None:
    # Atomic: a crash never leaves half a vocabulary.
    paths.write_text(path, self.to_json())

  @classmethod
  def load(cls, path: str) -> "Vocabulary":
    try:
      return cls.from_json(paths.read_text(path))
    except DataError as e:
      raise DataError(f"{path}: {e}") from None
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as e:
      raise DataError(f"{path}: unreadable vocabulary ({e})") from None


def kept_size(max_size: int) -> int:
  """How many counted tokens a vocabulary of `max_size` ids keeps (the specials come first)."""
  return max(max_size - len(SPECIAL_TOKENS), 0)


def token_totals(counts: Iterable[tuple[str, int]]) -> tuple[int, int]:
  """(tokens counted, their UTF-8 bytes) of (token, count) pairs; sums of these add up."""
  total = total_bytes = 0
  for token, count in counts:
    total += count
    total_bytes += count * len(token.encode("utf-8"))
  return total, total_bytes
