"""Padding efficiency on IMDB (../shared/data; skipped where absent): the issue's targets for
word tokens truncated at 1024 are bucket >= 0.85 with at most 8 shapes, pack >= 0.97 with one."""

import os

import numpy as np
import pytest

from pipeline import batch_plans, sources
from pipeline.sequence_batches import encode_all
from pipeline.tokenizers import Vocabulary

IMDB = os.path.join(
  os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
  "..",
  "shared",
  "data",
  "imdb",
  "train.jsonl.gz",
)
pytestmark = pytest.mark.skipif(not os.path.exists(IMDB), reason="../shared/data/imdb is absent")


@pytest.fixture(scope="module")
def lengths():
  examples = sources.read_examples(
    sources.parse_spec(f"jsonl:{IMDB}", "train_data"), with_labels=True
  )
  vocab = Vocabulary.build((e["text"] for e in examples), "word", max_size=30000)
  return np.array([len(ids) for ids in encode_all(examples, vocab)])


def test_bucketing_reaches_the_target_with_at_most_8_shapes(lengths):
  boundaries = batch_plans.optimal_boundaries(lengths, batch_plans.MAX_BUCKETS, 1024)
  plan = batch_plans.bucket_plan(
    lengths,
    boundaries=boundaries,
    batch_sizes=[32] * len(boundaries),
    seed=0,
    epoch=0,
    shuffle=True,
  )
  assert len({batch.width for batch in plan}) <= 8
  assert batch_plans.padding_efficiency(plan, lengths) >= 0.85
  pad = batch_plans.pad_plan(
    len(lengths), batch_size=32, seq_len=1024, seed=0, epoch=0, shuffle=True
  )
  assert batch_plans.padding_efficiency(pad, lengths) < 0.3


def test_packing_reaches_the_target_with_one_shape(lengths):
  plan = batch_plans.pack_plan(
    lengths, batch_size=32, seq_len=1024, max_segments=32, seed=0, epoch=0, shuffle=True
  )
  assert {batch.width for batch in plan} == {1024}
  assert batch_plans.padding_efficiency(plan, lengths) >= 0.97
