"""Subword tokenizers (`--tokenizer=bpe` and `unigram`), trained on the user's corpus with
SentencePiece, the library Flax's lm1b and Gemma examples and MaxText use.

Trained so that nothing is lost: no normalisation (case, Unicode forms and runs of spaces are
kept), no dummy prefix, byte fallback (a character the model has no piece for becomes its UTF-8
bytes, so there is no `<unk>`), and the line break a piece of its own; so decode(encode(text)) ==
text for any text. Ids 0-2 are the project's `<pad>`, `<unk>`, `<eos>`; there is no `<bos>`.

Deterministic: SentencePiece's result depends on its input's order and, for unigram, on its
number of threads, so both are fixed: the training lines are a sample chosen by a hash of each
line (`SubwordSample`: the same lines for the same corpus, read in any order, by any number of
workers), fed in a fixed order, with a fixed thread count. The same data and flags give the
same model, byte for byte.
"""

import hashlib
import heapq
import io
import re
from collections.abc import Iterable, Iterator

from pipeline.errors import DataError

# SentencePiece's threads; fixed, because the unigram trainer's result depends on it.
TRAINING_THREADS = 4
# Training sentences longer than this many characters are cut at a space (SentencePiece skips
# longer ones; a subword never spans a space, so a cut there changes nothing it learns).
MAX_TRAINING_LINE = 4096
_BYTE_PIECE = re.compile(r"<0x[0-9A-F]{2}>")


def train(lines: Iterable[str], kind: str, vocab_size: int) -> bytes:
  """The serialized SentencePiece model of a `kind` ('bpe' or 'unigram') tokenizer with
  `vocab_size` pieces (the 3 special tokens and 256 bytes included) trained on `lines`."""
  import sentencepiece

  if vocab_size <= 0:
    raise DataError(
      f"--vocab_size={vocab_size}: --tokenizer={kind} needs the number of subwords to learn"
      " (e.g. --vocab_size=8000)"
    )
  lines = [line for line in lines if line]
  if not lines:
    raise DataError(f"--tokenizer={kind}: no text to train the tokenizer on")
  model = io.BytesIO()
  try:
    sentencepiece.SentencePieceTrainer.train(
      sentence_iterator=iter(lines),
      model_writer=model,
      model_type=kind,
      vocab_size=vocab_size,
      pad_id=0,
      unk_id=1,
      eos_id=2,
      bos_id=-1,
      pad_piece="<pad>",
      unk_piece="<unk>",
      eos_piece="<eos>",
      byte_fallback=True,
      normalization_rule_name="identity",
      remove_extra_whitespaces=False,
      add_dummy_prefix=False,
      allow_whitespace_only_pieces=True,
      split_digits=False,
      user_defined_symbols=["\n"],
      character_coverage=0.9995,
      input_sentence_size=0,  # every line given: the sample is chosen before
      max_sentence_length=4 * MAX_TRAINING_LINE,  # bytes
      num_threads=TRAINING_THREADS,
      minloglevel=2,
    )
  except RuntimeError as e:
    raise DataError(_training_error(str(e), kind, vocab_size)) from None
  return model.getvalue()


def _training_error(message: str, kind: str, vocab_size: int) -> str:
  """SentencePiece's complaint about the vocabulary size, as one line naming the flag."""
  too_small = re.search(r"smaller than required_chars\. (\d+) vs (\d+)", message)
  if too_small:
    return (
      f"--vocab_size={vocab_size}: too small for --tokenizer={kind} on this data, which needs"
      f" {too_small.group(2)} pieces before it learns any subword (3 special tokens, 256 bytes,"
      " the line break and the characters of 99.95% of the text); choose more"
    )
  too_large = re.search(
    r"Vocabulary size too high \((\d+)\)\. Please set it to a value <= (\d+)", message
  )
  if too_large:
    return (
      f"--vocab_size={vocab_size}: more than --tokenizer={kind} can learn from this data (at most"
      f" {too_large.group(2)}); choose fewer"
    )
  return f"--tokenizer={kind}: SentencePiece could not train: {message.strip().splitlines()[-1]}"


def training_lines(texts: Iterable[str]) -> Iterator[str]:
  """The lines SentencePiece trains on: each text's lines, long ones cut before a space."""
  for text in texts:
    for line in text.split("\n"):
      while len(line) > MAX_TRAINING_LINE:
        cut = line.rfind(" ", 1, MAX_TRAINING_LINE)
        cut = cut if cut > 0 else MAX_TRAINING_LINE
        yield line[:cut]
        line = line[cut:]
      if line:
        yield line


class SubwordSample:
  """A bounded, deterministic sample of a corpus's lines for training a tokenizer: the lines
  whose hashes are smallest, as many as fit in `max_bytes` of text. It depends only on the
  multiset of lines (not on their order, nor on how they are split among workers), and every
  copy of a line is kept or dropped together, so frequent lines keep their weight.

  Kept: every line whose hash is below a cutoff, the smallest hash at which the lines sorted by
  hash exceed `max_bytes`. Streaming, a line at or above the cutoff found so far is dropped on
  arrival; when the kept lines exceed the bound, the largest hash goes (with its copies) and
  becomes the cutoff. Nothing below the final cutoff is ever dropped, since those lines fit."""

  def __init__(self, max_bytes: int):
    self._max_bytes = max_bytes
    self._heap = []  # (-hash, line, bytes): the largest hash on top
    self._bytes = 0
    self._cutoff = None  # no line has been dropped yet
    self.sampled_all = True

  def add(self, texts: Iterable[str]) -> None:
    for line in training_lines(texts):
      data = line.encode("utf-8")
      key = int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")
      if self._cutoff is not None and key >= self._cutoff:
        continue
      heapq.heappush(self._heap, (-key, line, len(data)))
      self._bytes += len(data)
      self._trim()

  def _trim(self) -> None:
    """Drops the largest hash (every copy) until the kept lines fit; it becomes the cutoff."""
    while self._bytes > self._max_bytes:
      self._cutoff = -self._heap[0][0]
      self.sampled_all = False
      while self._heap and -self._heap[0][0] >= self._cutoff:
        self._bytes -= heapq.heappop(self._heap)[2]

  @classmethod
  def merged(cls, samples: list["SubwordSample"], max_bytes: int) -> "SubwordSample":
    """The sample of the union of the samples' texts (of disjoint parts of one corpus). Each kept
    every line of its part below its own cutoff, which is at or above the whole's: so every line
    below the smallest cutoff is here, and the whole's sample is taken from them."""
    merged = cls(max_bytes)
    cutoffs = [s._cutoff for s in samples if s._cutoff is not None]
    merged._cutoff = min(cutoffs) if cutoffs else None
    merged.sampled_all = all(s.sampled_all for s in samples)
    for sample in samples:
      for item in sample._heap:
        if merged._cutoff is None or -item[0] < merged._cutoff:
          merged._heap.append(item)
          merged._bytes += item[2]
    heapq.heapify(merged._heap)
    merged._trim()
    return merged

  def lines(self) -> list[str]:
    """The sampled lines in a fixed order (by hash, then text)."""
    return [line for _, line, _ in sorted(self._heap, key=lambda item: (-item[0], item[1]))]


class SubwordModel:
  """A trained SentencePiece model: encode, decode, and what each id stands for."""

  def __init__(self, model: bytes):
    import sentencepiece

    self._processor = sentencepiece.SentencePieceProcessor()
    try:
      self._processor.LoadFromSerializedProto(model)
    except RuntimeError as e:
      raise DataError(f"not a SentencePiece model ({str(e).strip()[:80]})") from None

  def pieces(self) -> list[str]:
    return [self._processor.IdToPiece(i) for i in range(self._processor.GetPieceSize())]

  def encode(self, text: str) -> list[int]:
    return self._processor.EncodeAsIds(text)

  def decode(self, ids: list[int]) -> str:
    return self._processor.DecodeIds(ids)

  def byte_lengths(self) -> list[int]:
    """The UTF-8 bytes each piece decodes to (a byte piece: one; `▁`: a space)."""
    return [
      1 if _BYTE_PIECE.fullmatch(piece) else len(piece.replace("\u2581", " ").encode("utf-8"))
      for piece in self.pieces()
    ]
