"""Grain batches: shapes, coverage, contiguous lanes, process shards, iterator state round trips."""

import itertools

import numpy as np
import pytest

from pipeline.errors import DataError
from pipeline.sequence_batches import sequence_batches
from pipeline.token_windows import token_stream, window_batches
from pipeline.tokenizers import EOS, PAD, Vocabulary

EXAMPLES = [{"text": "x" * (1 + i % 7) + "y" * (i % 3), "label": i % 3} for i in range(23)]
VOCAB = Vocabulary.build([e["text"] for e in EXAMPLES], "char")


def decoded_rows(batch):
  return [VOCAB.decode(row[mask]) for row, mask, real in zip(batch["inputs"], batch["mask"], batch["example_mask"])
          if real]


def test_eval_batches_hold_every_example_once_with_a_padded_last_batch():
  batches = list(sequence_batches(EXAMPLES, VOCAB, batch_size=5, seq_len=6, train=False, seed=0))
  assert len(batches) == 5 and all(b["inputs"].shape == (5, 6) for b in batches)
  assert batches[-1]["example_mask"].tolist() == [True, True, True, False, False]
  texts = [t for b in batches for t in decoded_rows(b)]
  assert texts == [e["text"][:6] for e in EXAMPLES]  # in order, truncated to seq_len
  labels = [l for b in batches for l, real in zip(b["labels"], b["example_mask"]) if real]
  assert labels == [e["label"] for e in EXAMPLES]
  assert all((b["inputs"][~b["mask"]] == PAD).all() for b in batches)


def test_training_order_is_a_seeded_permutation_per_epoch():
  def epoch_texts(seed):
    batches = sequence_batches(EXAMPLES, VOCAB, batch_size=1, seq_len=10, train=True, seed=seed)
    return [decoded_rows(b)[0] for b in itertools.islice(batches, 2 * len(EXAMPLES))]
  first = epoch_texts(0)
  assert sorted(first[:23]) == sorted(sorted(e["text"] for e in EXAMPLES))
  assert sorted(first[23:]) == sorted(first[:23]) and first[23:] != first[:23]  # reshuffled
  assert first == epoch_texts(0) and first != epoch_texts(1)


def test_process_shards_are_disjoint_and_cover_the_data():
  shards = [[t for b in sequence_batches(EXAMPLES, VOCAB, batch_size=4, seq_len=10, train=False, seed=0,
                                         shard_index=i, shard_count=2) for t in decoded_rows(b)]
            for i in range(2)]
  assert sorted(shards[0] + shards[1]) == sorted(e["text"] for e in EXAMPLES)
  assert len(shards[0]) == 12 and len(shards[1]) == 11


def test_processes_batch_k_together_hold_a_single_process_batch_k():
  make = lambda index, count, size: iter(sequence_batches(EXAMPLES, VOCAB, batch_size=size, seq_len=10,
                                                          train=True, seed=3, shard_index=index, shard_count=count))
  whole = make(0, 1, 6)
  parts = [make(0, 2, 3), make(1, 2, 3)]
  for _ in range(10):  # several epochs of 23 examples
    expected = sorted(decoded_rows(next(whole)))
    assert sorted(decoded_rows(next(parts[0])) + decoded_rows(next(parts[1]))) == expected


def stream(n=100):
  return np.arange(3, 3 + n, dtype=np.int32)


def test_lanes_are_contiguous_across_windows_and_every_token_is_a_target_once():
  tokens = stream(100)
  batches = list(window_batches(tokens, batch_size=4, seq_len=7, train=False, carry_state=True))
  assert all(b["inputs"].shape == (4, 7) for b in batches)
  targets = np.concatenate([b["targets"] for b in batches], axis=1)
  inputs = np.concatenate([b["inputs"] for b in batches], axis=1)
  mask = np.concatenate([b["mask"] for b in batches], axis=1)
  for lane in range(4):
    lane_tokens = tokens[lane * 25:(lane + 1) * 25]
    np.testing.assert_array_equal(inputs[lane, :24], lane_tokens[:-1])
    np.testing.assert_array_equal(targets[lane][mask[lane]], lane_tokens[1:])
  assert mask.sum() == 100 - 4  # only each lane's first token is never a target
  assert [b["resets"].tolist() for b in batches] == [[True] * 4] + [[False] * 4] * (len(batches) - 1)


def test_without_carrying_every_window_resets_and_epochs_restart():
  batches = list(itertools.islice(window_batches(stream(40), batch_size=2, seq_len=5, train=True,
                                                 carry_state=False), 10))
  assert all(b["resets"].all() for b in batches)
  carried = list(itertools.islice(window_batches(stream(40), batch_size=2, seq_len=5, train=True,
                                                 carry_state=True), 10))
  per_epoch = 4  # ceil((20 - 1) / 5)
  assert [bool(b["resets"][0]) for b in carried] == [i % per_epoch == 0 for i in range(10)]
  np.testing.assert_array_equal(carried[0]["inputs"], carried[per_epoch]["inputs"])


def test_each_process_gets_its_own_lanes():
  whole = next(iter(window_batches(stream(), batch_size=4, seq_len=5, train=True, carry_state=True)))
  parts = [next(iter(window_batches(stream(), batch_size=4, seq_len=5, train=True, carry_state=True,
                                    shard_index=i, shard_count=2))) for i in range(2)]
  np.testing.assert_array_equal(np.concatenate([p["inputs"] for p in parts]), whole["inputs"])


def test_token_stream_ends_every_document_with_eos():
  vocab = Vocabulary.build(["ab", "c"], "char")
  assert token_stream([{"text": "ab"}, {"text": "c"}], vocab).tolist() == [
      *vocab.encode("ab"), EOS, *vocab.encode("c"), EOS]


def test_too_little_data_for_the_lanes_is_a_clear_error():
  with pytest.raises(DataError, match="--eval_data: 3 tokens cannot fill 4 lanes"):
    window_batches(np.arange(3, dtype=np.int32), batch_size=4, seq_len=5, train=False,
                   carry_state=True, what="--eval_data")


def _assert_state_round_trip(make_iterator, skip=7, compare=5):
  iterator = make_iterator()
  for _ in range(skip):
    next(iterator)
  state = iterator.get_state()
  expected = [next(iterator) for _ in range(compare)]
  restored = make_iterator()
  restored.set_state(state)
  for want, got in zip(expected, (next(restored) for _ in range(compare))):
    assert want.keys() == got.keys()
    for key in want:
      np.testing.assert_array_equal(want[key], got[key])


def test_iterator_state_round_trip_mid_epoch_for_sequences():
  _assert_state_round_trip(lambda: iter(sequence_batches(EXAMPLES, VOCAB, batch_size=3, seq_len=8, train=True,
                                                         seed=4)), skip=9)  # 9 batches: into epoch 2


def test_iterator_state_round_trip_mid_epoch_for_windows():
  _assert_state_round_trip(lambda: iter(window_batches(stream(), batch_size=4, seq_len=5, train=True,
                                                       carry_state=True)), skip=6)
