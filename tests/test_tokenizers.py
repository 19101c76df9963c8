"""Vocabularies: round trips, determinism, unknown tokens, save and load."""

import pytest

from pipeline.errors import DataError
from pipeline.tokenizers import EOS, PAD, SPECIAL_TOKENS, UNK, Vocabulary

TEXT = "To be, or not to be: that is the question.\nWhether 'tis nobler"


def test_char_round_trip_is_exact():
  vocab = Vocabulary.build([TEXT], "char")
  assert vocab.decode(vocab.encode(TEXT)) == TEXT
  assert tuple(vocab.tokens[:3]) == SPECIAL_TOKENS and (PAD, UNK, EOS) == (0, 1, 2)


def test_word_round_trip_normalises_case_and_spacing_only():
  vocab = Vocabulary.build([TEXT], "word")
  assert (
    vocab.decode(vocab.encode(TEXT))
    == "to be , or not to be : that is the question . whether ' tis nobler"
  )
  # An apostrophe inside a word keeps the word whole.
  assert Vocabulary.build(["Don't stop"], "word").tokens[3:] == ["don't", "stop"]


def test_most_frequent_first_ties_by_token_and_size_cap():
  vocab = Vocabulary.build(["bbb a cc", "c"], "char")
  assert vocab.tokens[3:] == ["b", "c", " ", "a"]
  capped = Vocabulary.build(["bbb a cc", "c"], "char", max_size=5)
  assert capped.tokens[3:] == ["b", "c"]
  assert list(capped.encode("abz")) == [UNK, 3, UNK]


def test_save_and_load_give_the_same_vocabulary(tmp_path):
  vocab = Vocabulary.build([TEXT, "émigré — ünïcode"], "char")
  path = str(tmp_path / "vocab.json")
  vocab.save(path)
  assert Vocabulary.load(path) == vocab


def test_unreadable_vocabulary_and_unknown_kind_are_clear_errors(tmp_path):
  path = tmp_path / "vocab.json"
  path.write_text("{not json")
  with pytest.raises(DataError, match="vocab.json: unreadable vocabulary"):
    Vocabulary.load(str(path))
  with pytest.raises(DataError, match="--tokenizer='sentencepiece': unknown tokenizer"):
    Vocabulary.build(["x"], "sentencepiece")


def test_ptb_splits_raw_and_treebank_text_alike():
  raw = "It doesn't work, and it's the director's fault (I can't stand it)."
  treebank = "it does n't work , and it 's the director 's fault -LRB- i ca n't stand it -RRB- ."
  expected = [
    "it",
    "does",
    "n't",
    "work",
    ",",
    "and",
    "it",
    "'s",
    "the",
    "director",
    "'s",
    "fault",
    "(",
    "i",
    "ca",
    "n't",
    "stand",
    "it",
    ")",
    ".",
  ]
  vocab = Vocabulary.build([raw], "ptb")
  assert [vocab.tokens[i] for i in vocab.encode(raw)] == expected
  assert list(vocab.encode(treebank)) == list(vocab.encode(raw))
  # The word tokenizer keeps contractions whole, so the two spellings share no negation token.
  assert "n't" not in Vocabulary.build([raw], "word").tokens
  # Other apostrophes are split as punctuation, as in `word` outside words.
  assert Vocabulary.build(["o'clock 'tis"], "ptb").tokens[3:] == ["'", "clock", "o", "tis"]
