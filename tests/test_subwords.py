"""Subword tokenizers (`--tokenizer=bpe` and `unigram`): lossless on any UTF-8 text, the same
file for the same data, trained where vocabularies are fixed and read back by every tool; bits per
byte against a hand computation; a run that trains, resumes exactly, generates real text and
streams a prepared dataset on 2 x 2 processes; bad input refused in one line."""

import json
import math
import os
import random
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pipeline import prepared_writer
from pipeline.errors import DataError
from pipeline.prepared import PreparedDataset
from pipeline.subwords import SubwordSample, training_lines
from pipeline.tokenizers import EOS, PAD, SPECIAL_TOKENS, SUBWORD_KINDS, Vocabulary
from training.loop.objectives import finalize_metrics, lm_loss
from training.model.models import zero_carry

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAKESPEARE = os.path.join(ROOT, "..", "shared", "data", "tiny_shakespeare", "input.txt")
PHRASES = [
  "The Quick brown fox jumps over the lazy dog.",
  "ROMEO: But soft, what light through yonder window breaks?",
  "Café crème, naïve façade; Ærø and Øresund.",
  "東京は日本の首都です。漢字とかなを混ぜた文。",
  "Emoji: 😀🎉 and a flag 🇫🇷 in one line",
  "  two leading spaces,\ttabs\tand trailing space ",
  "",
  "Numbers 12345 and 3.14159, URLs https://example.com/a?b=c",
]


def corpus(lines=3000, seed=0) -> str:
  """A small multilingual corpus with case, whitespace and empty lines: the phrases, and their
  words shuffled into new lines."""
  rng = random.Random(seed)
  words = " ".join(PHRASES).split()

  def line():
    if rng.random() < 0.3:
      return rng.choice(PHRASES)
    return " ".join(rng.choice(words) for _ in range(rng.randint(1, 12)))

  return "\n".join(line() for _ in range(lines)) + "\n"


@pytest.fixture(scope="module", params=SUBWORD_KINDS)
def vocab(request):
  return Vocabulary.build([corpus()], request.param, 400)


def random_text(rng: random.Random, length: int) -> str:
  """Any Unicode scalar values: ASCII, Latin-1, controls, CJK, emoji, rare planes."""
  ranges = [(0x0, 0x7F), (0x80, 0xFF), (0x4E00, 0x9FFF), (0x1F600, 0x1F64F), (0xE000, 0x10FFFF)]
  chars = []
  for _ in range(length):
    low, high = rng.choice(ranges)
    code = rng.randint(low, high)
    chars.append(chr(code) if not 0xD800 <= code <= 0xDFFF else "x")
  return "".join(chars)


@pytest.mark.newest_jax
def test_any_utf8_text_round_trips_exactly_without_unknown_tokens(vocab):
  rng = random.Random(0)
  latin1 = bytes(range(256)).decode("latin-1")  # a Latin-1 file decoded: every byte a character
  texts = [
    *PHRASES,
    corpus(50, seed=1),
    latin1,
    "\n\n\nempty lines\n\n",
    "CRLF line\r\nends\r\n",
    "   ",
    *(random_text(rng, rng.randint(0, 60)) for _ in range(200)),
  ]
  for text in texts:
    ids = vocab.encode(text)
    assert ids.dtype == np.int32 and (ids > EOS).all(), text  # no <pad>, <unk> or <eos>
    assert vocab.decode(ids) == text
  assert tuple(vocab.tokens[:3]) == SPECIAL_TOKENS and len(vocab) == 400
  # Case is kept: "The" and "the" are other tokens.
  assert vocab.encode("The")[0] != vocab.encode("the")[0]
  # Padding is dropped when decoding, as for every tokenizer.
  assert vocab.decode([PAD, *vocab.encode("ab"), PAD]) == "ab"


def test_the_byte_lengths_of_the_ids_are_the_bytes_of_the_text(vocab):
  rng = random.Random(1)
  for text in [corpus(20, seed=2), *(random_text(rng, 40) for _ in range(50))]:
    ids = vocab.encode(text)
    assert vocab.byte_lengths()[ids].sum() == len(text.encode("utf-8"))


@pytest.mark.newest_jax
def test_the_same_data_gives_the_same_file_byte_for_byte_in_any_process(tmp_path, vocab):
  kind = vocab.kind
  script = (
    "import sys; sys.path.insert(0, '.');"
    "from tests.test_subwords import corpus; from pipeline.tokenizers import Vocabulary;"
    f"Vocabulary.build([corpus()], {kind!r}, 400).save(sys.argv[1])"
  )
  for name in ("a.json", "b.json"):
    subprocess.run([sys.executable, "-c", script, str(tmp_path / name)], cwd=ROOT, check=True)
  vocab.save(str(tmp_path / "here.json"))
  files = {(tmp_path / name).read_bytes() for name in ("a.json", "b.json", "here.json")}
  assert len(files) == 1
  assert Vocabulary.load(str(tmp_path / "a.json")) == vocab
  # And other data gives another tokenizer.
  assert Vocabulary.build([corpus(seed=5) + "Zebra zebra zebra\n" * 50], kind, 400) != vocab


def test_the_training_sample_is_bounded_and_fixed_by_the_lines_whatever_their_order():
  lines = corpus(4000).split("\n")
  whole = SubwordSample(1 << 30)
  whole.add(["\n".join(lines)])
  assert whole.sampled_all and sorted(whole.lines()) == sorted(training_lines(["\n".join(lines)]))
  samples = []
  for seed in range(3):
    shuffled = lines[:]
    random.Random(seed).shuffle(shuffled)
    sample = SubwordSample(20_000)
    for start in range(0, len(shuffled), 333):  # in chunks, as workers would hand them over
      sample.add(["\n".join(shuffled[start : start + 333])])
    samples.append(sample.lines())
    assert not sample.sampled_all
    assert sum(len(line.encode()) for line in sample.lines()) <= 20_000
  assert samples[0] == samples[1] == samples[2] and len(samples[0]) > 100
  # A line's every copy is kept or dropped together.
  kept = set(samples[0])
  assert all(samples[0].count(line) == lines.count(line) for line in kept)
  # Samples of parts of the corpus, merged (as Beam's combiner merges its workers'), are the
  # whole's sample, however the corpus was split among them.
  for parts in (2, 5):
    pieces = []
    for part in range(parts):
      sample = SubwordSample(20_000)
      sample.add(["\n".join(lines[part::parts])])
      pieces.append(sample)
    merged = SubwordSample.merged(pieces, 20_000)
    assert merged.lines() == samples[0] and not merged.sampled_all
  # Long lines are cut before a space, into lines SentencePiece trains on.
  long = " ".join(["word"] * 3000)
  assert all(len(piece) <= 4096 for piece in training_lines([long]))
  assert "".join(training_lines([long])) == long


@pytest.mark.newest_jax
def test_bits_per_byte_equal_a_hand_computation_on_a_tiny_model(vocab):
  from training.config import Config
  from training.model.build import build_model

  config = Config(hidden_size=8, embed_size=8, tokenizer=vocab.kind, vocab_size=len(vocab))
  model = build_model(config, len(vocab), 0)
  texts = ["ROMEO: 東京 😀 café", "The lazy dog.\n"]
  ids = [vocab.encode(text) for text in texts]
  width = max(len(row) for row in ids)
  inputs = np.zeros((2, width), np.int32)
  targets = np.zeros((2, width), np.int32)
  mask = np.zeros((2, width), bool)
  for row, row_ids in enumerate(ids):
    inputs[row, : len(row_ids)] = [EOS, *row_ids[:-1]]
    targets[row, : len(row_ids)] = row_ids
    mask[row, : len(row_ids)] = True
  batch = {
    "inputs": jnp.asarray(inputs),
    "targets": jnp.asarray(targets),
    "mask": jnp.asarray(mask),
    "resets": jnp.ones(2, bool),
  }
  carry = zero_carry(config.model, config.num_layers, 2, config.hidden_size)
  params = model.init(jax.random.PRNGKey(0), batch["inputs"], batch["mask"], carry, train=False)[
    "params"
  ]
  sums, _ = lm_loss(model, params, batch, carry, {}, False, token_bytes=vocab.byte_lengths())
  metrics = finalize_metrics(sums)
  # By hand: each real target's -log2 p from the model's own logits, over the texts' UTF-8 bytes.
  logits, _ = model.apply({"params": params}, batch["inputs"], batch["mask"], carry, train=False)
  log_p = jax.nn.log_softmax(np.asarray(logits, np.float64), axis=-1)
  bits = -sum(
    float(log_p[row, t, targets[row, t]]) for row in range(2) for t in range(len(ids[row]))
  ) / math.log(2)
  text_bytes = sum(len(text.encode("utf-8")) for text in texts)
  assert metrics["bits_per_byte"] == pytest.approx(bits / text_bytes, rel=1e-5)
  assert metrics["loss"] == pytest.approx(bits * math.log(2) / mask.sum(), rel=1e-5)


def test_word_bits_per_byte_are_calibrated_on_the_training_text():
  text = corpus()
  for kind in ("word", "ptb"):
    vocabulary = Vocabulary.build([text], kind, 30)  # most words outside: <unk> counts too
    ids = vocabulary.encode(text)
    assert vocabulary.byte_lengths()[ids].sum() == pytest.approx(len(text.encode()), rel=1e-6)


def test_a_subword_vocabulary_is_saved_with_its_model_and_damage_is_named(tmp_path, vocab):
  path = tmp_path / "vocab.json"
  vocab.save(str(path))
  saved = json.loads(path.read_text())
  assert saved["kind"] == vocab.kind and "sentencepiece_model" in saved
  saved["sentencepiece_model"] = saved["sentencepiece_model"][:100]
  path.write_text(json.dumps(saved))
  with pytest.raises(DataError, match=r"vocab.json: (unreadable vocabulary|not a SentencePiece)"):
    Vocabulary.load(str(path))
  del saved["sentencepiece_model"]
  path.write_text(json.dumps(saved))
  with pytest.raises(DataError, match="vocab.json: unreadable vocabulary"):
    Vocabulary.load(str(path))


def test_prepare_trains_the_tokenizer_on_a_sample_alike_for_any_worker_count(tmp_path):
  (tmp_path / "docs.jsonl").write_text(
    "".join(json.dumps({"text": corpus(40, seed=s)}) + "\n" for s in range(60))
  )
  metas = []
  for workers in (1, 2):
    out = tmp_path / f"out{workers}"
    metas.append(
      prepared_writer.prepare_corpus(
        f"jsonl:{tmp_path / 'docs.jsonl'}",
        str(out),
        tokenizer="unigram",
        vocab_size=350,
        tokenizer_sample_mb=0.02,  # smaller than the corpus: a sample
        num_workers=workers,
      )
    )
  assert (tmp_path / "out1" / "vocab.json").read_bytes() == (
    tmp_path / "out2" / "vocab.json"
  ).read_bytes()
  assert metas[0]["tokenizer_sample_mb"] == 0.02 and metas[0]["shards"] == metas[1]["shards"]
  one, two = PreparedDataset(str(tmp_path / "out1")), PreparedDataset(str(tmp_path / "out2"))
  stream = one.view(None, "x").stream()
  assert (
    stream.read(0, len(stream)).tolist()
    == two.view(None, "x").stream().read(0, len(stream)).tolist()
  )
  assert one.vocab.decode(stream.read(0, len(stream))).startswith(corpus(40, seed=0)[:200])


def command(*args, timeout=600):
  return subprocess.run(
    [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
  )


def last_line(result) -> str:
  return result.stderr.strip().splitlines()[-1]


def write_corpus(tmp_path) -> str:
  path = tmp_path / "corpus.txt"
  if os.path.exists(SHAKESPEARE):
    with open(SHAKESPEARE, encoding="utf-8") as f:
      path.write_text(f.read()[:200_000], encoding="utf-8")
  else:
    path.write_text(corpus(4000), encoding="utf-8")
  return str(path)


LM_FLAGS = [
  "--hidden_size=32",
  "--embed_size=16",
  "--batch_size=8",
  "--seq_len=32",
  "--log_every=10",
  "--eval_every=20",
  "--eval_steps=4",
  "--checkpoint_every=20",
]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["bpe"])  # unigram: the classifier's language model, and 2 x 2
def test_a_subword_language_model_trains_resumes_exactly_and_generates_real_text(tmp_path, kind):
  data = write_corpus(tmp_path)
  flags = [
    f"--tokenizer={kind}",
    "--vocab_size=500",
    f"--train_data=text:{data}[:90%]",
    f"--eval_data=text:{data}[90%:]",
    *LM_FLAGS,
  ]
  whole = command("training.train", f"--workdir={tmp_path / 'whole'}", "--num_steps=60", *flags)
  assert whole.returncode == 0, whole.stderr[-3000:]
  stopped = command("training.train", f"--workdir={tmp_path / 'resumed'}", "--num_steps=40", *flags)
  assert stopped.returncode == 0, stopped.stderr[-3000:]
  resumed = command("training.train", f"--workdir={tmp_path / 'resumed'}", "--num_steps=60", *flags)
  assert resumed.returncode == 0 and "Resumed from the checkpoint at step 40" in resumed.stderr
  summaries = [
    json.loads((tmp_path / name / "summary.json").read_text()) for name in ("whole", "resumed")
  ]
  assert summaries[0]["param_fingerprint"] == summaries[1]["param_fingerprint"]
  evaluation = summaries[0]["eval"]
  assert 0 < evaluation["bits_per_byte"] < evaluation["loss"] / math.log(2)  # > 1 byte a token
  rows = [json.loads(line) for line in open(tmp_path / "whole" / "metrics.jsonl")]
  assert all("bits_per_byte" in row for row in rows if row["split"] in ("train", "eval"))
  vocabulary = json.loads((tmp_path / "whole" / "vocab.json").read_text())
  assert vocabulary["kind"] == kind and len(vocabulary["tokens"]) == 500
  sample = command(
    "training.tools.generate", f"--workdir={tmp_path / 'whole'}", "--prompt=The ", "--length=200"
  )
  assert sample.returncode == 0, sample.stderr[-2000:]
  generated = sample.stdout.split("The ", 1)[1]
  assert any(c.isupper() for c in generated) and "<unk>" not in generated and " " in generated
  # Exported and read back, the vocabulary keeps its model.
  exported = command(
    "training.tools.export", f"--workdir={tmp_path / 'whole'}", f"--out={tmp_path / 'lm.msgpack'}"
  )
  assert exported.returncode == 0, exported.stderr[-2000:]
  from training.tools.exported import load_exported

  _, _, loaded, _ = load_exported(str(tmp_path / "lm.msgpack"))
  assert loaded == Vocabulary.load(str(tmp_path / "whole" / "vocab.json"))
  assert loaded.decode(loaded.encode("ROMEO: Hi!\n")) == "ROMEO: Hi!\n"


@pytest.mark.slow
def test_a_subword_classifier_predicts_and_an_init_from_run_takes_its_vocabulary(tmp_path):
  import csv

  rng = random.Random(0)
  with open(tmp_path / "reviews.csv", "w", newline="", encoding="utf-8") as f:
    writer = csv.writer(f)
    writer.writerow(["text", "label"])
    for _ in range(400):
      good = rng.random() < 0.5
      words = rng.sample(
        ["Wonderful", "GREAT", "lovely", "délicieux"]
        if good
        else ["awful", "BAD", "dull", "ennuyeux"],
        2,
      )
      writer.writerow([f"{rng.choice(PHRASES)} {' '.join(words)} 😀", "pos" if good else "neg"])
  lm = command(
    "training.train",
    f"--workdir={tmp_path / 'lm'}",
    "--tokenizer=unigram",
    "--vocab_size=370",
    f"--train_data=csv:{tmp_path / 'reviews.csv'}",
    "--num_steps=20",
    *LM_FLAGS,
  )
  assert lm.returncode == 0, lm.stderr[-3000:]
  classifier = command(
    "training.train",
    f"--workdir={tmp_path / 'classifier'}",
    "--task=classify",
    f"--init_from={tmp_path / 'lm'}",
    f"--train_data=csv:{tmp_path / 'reviews.csv'}[:80%]",
    f"--eval_data=csv:{tmp_path / 'reviews.csv'}[80%:]",
    "--num_steps=100",
    "--batch_size=16",
    "--seq_len=48",
    "--eval_every=50",
  )
  assert classifier.returncode == 0, classifier.stderr[-3000:]
  assert (tmp_path / "classifier" / "vocab.json").read_bytes() == (
    tmp_path / "lm" / "vocab.json"
  ).read_bytes()
  summary = json.loads((tmp_path / "classifier" / "summary.json").read_text())
  assert summary["best"]["eval"]["accuracy"] > 0.9
  predicted = command(
    "training.tools.predict",
    f"--workdir={tmp_path / 'classifier'}",
    f"--data=csv:{tmp_path / 'reviews.csv'}[80%:]",
  )
  assert predicted.returncode == 0, predicted.stderr[-2000:]
  rows = [json.loads(line) for line in predicted.stdout.splitlines()]
  accuracy = np.mean([row["label"] == row["true_label"] for row in rows])
  assert accuracy == pytest.approx(summary["best"]["eval"]["accuracy"], abs=1e-9)


@pytest.mark.slow
def test_a_prepared_unigram_dataset_streams_on_2x2_processes_like_on_one(tmp_path):
  data = write_corpus(tmp_path)
  prepared = command(
    "pipeline.prepare",
    f"--data=text:{data}",
    f"--out={tmp_path / 'prepared'}",
    "--tokenizer=unigram",
    "--vocab_size=400",
    "--num_workers=2",
  )
  assert prepared.returncode == 0, prepared.stderr[-2000:]
  flags = [
    "--train_data=prepared:" + str(tmp_path / "prepared"),
    "--num_steps=20",
    *LM_FLAGS,
  ]
  one = command("training.train", f"--workdir={tmp_path / 'one'}", *flags)
  assert one.returncode == 0, one.stderr[-3000:]
  job = subprocess.run(
    [
      sys.executable,
      "-m",
      "launch.local",
      "--num_processes=2",
      "--devices_per_process=2",
      "--",
      sys.executable,
      "-m",
      "training.train",
      f"--workdir={tmp_path / 'two_by_two'}",
      *flags,
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert job.returncode == 0, job.stderr[-3000:]
  rows = {
    name: [json.loads(line) for line in open(tmp_path / name / "metrics.jsonl")]
    for name in ("one", "two_by_two")
  }
  assert [(r["step"], r["split"]) for r in rows["one"]] == [
    (r["step"], r["split"]) for r in rows["two_by_two"]
  ]
  for ours, theirs in zip(rows["two_by_two"], rows["one"]):
    assert ours["loss"] == pytest.approx(theirs["loss"], rel=1e-4)
    assert ours["bits_per_byte"] == pytest.approx(theirs["bits_per_byte"], rel=1e-4)


@pytest.mark.slow
def test_bad_subword_input_is_refused_in_one_line_and_nothing_is_lost(tmp_path):
  data = write_corpus(tmp_path)
  base = [f"--train_data=text:{data}", "--num_steps=20", *LM_FLAGS]
  unknown = command("training.train", f"--workdir={tmp_path / 'a'}", "--tokenizer=wordpiece", *base)
  assert unknown.returncode != 0 and "--tokenizer" in last_line(unknown)
  assert "wordpiece" in last_line(unknown)
  no_size = command("training.train", f"--workdir={tmp_path / 'b'}", "--tokenizer=bpe", *base)
  assert last_line(no_size).startswith("error: --vocab_size: --tokenizer=bpe needs the number")
  too_small = command(
    "training.train",
    f"--workdir={tmp_path / 'c'}",
    "--tokenizer=unigram",
    "--vocab_size=100",
    *base,
  )
  assert too_small.returncode != 0
  assert last_line(too_small).startswith(
    "error: --vocab_size=100: too small for --tokenizer=unigram"
  )
  prepared = command(
    "pipeline.prepare",
    f"--data=text:{data}",
    f"--out={tmp_path / 'p'}",
    "--tokenizer=bpe",
    "--vocab_size=100",
  )
  assert last_line(prepared).startswith("error: --vocab_size=100: too small for --tokenizer=bpe")
  assert not (tmp_path / "p").exists()
  # A run with checkpoints whose vocabulary is damaged, then missing: refused, checkpoints kept.
  good = command(
    "training.train", f"--workdir={tmp_path / 'run'}", "--tokenizer=bpe", "--vocab_size=500", *base
  )
  assert good.returncode == 0, good.stderr[-3000:]
  vocab_file = tmp_path / "run" / "vocab.json"
  original = vocab_file.read_bytes()
  vocab_file.write_bytes(original[: len(original) // 2])
  more = [
    f"--train_data=text:{data}",
    "--num_steps=40",
    *LM_FLAGS,
    "--tokenizer=bpe",
    "--vocab_size=500",
  ]
  damaged = command("training.train", f"--workdir={tmp_path / 'run'}", *more)
  assert damaged.returncode != 0
  assert last_line(damaged).startswith(f"error: {vocab_file}: unreadable vocabulary")
  vocab_file.unlink()
  missing = command("training.train", f"--workdir={tmp_path / 'run'}", *more)
  assert last_line(missing).startswith(
    f"error: {vocab_file}: missing, but the workdir has checkpoints"
  )
  assert sorted(os.listdir(tmp_path / "run" / "checkpoints")) == ["20"]
  vocab_file.write_bytes(original)  # put back, the run resumes
  resumed = command("training.train", f"--workdir={tmp_path / 'run'}", *more)
  assert resumed.returncode == 0 and "Resumed from the checkpoint at step 20" in resumed.stderr
