"""Every source kind on small files the tests write, slicing, and errors that name the culprit."""

import gzip
import json

import pytest

from pipeline import sources
from pipeline.errors import DataError
from pipeline.labels import Labels
from pipeline.slicing import slice_range
from pipeline.tfds_corpus import write_tfds_dataset


def read(spec, with_labels=False, **kwargs):
  """Examples without their `where` (tested on its own below)."""
  examples = sources.read_examples(
    sources.parse_spec(spec, "train_data"), with_labels=with_labels, **kwargs
  )
  return [{k: v for k, v in example.items() if k != "where"} for example in examples]


@pytest.mark.parametrize(
  "text, expected",
  [
    ("[:90%]", range(0, 9)),
    ("[90%:]", range(9, 10)),
    ("[:3]", range(0, 3)),
    ("[-2:]", range(8, 10)),
    ("[2:-2]", range(2, 8)),
    ("[:-10%]", range(0, 9)),
    ("[50%:200]", range(5, 10)),
    (None, range(10)),
  ],
)
def test_slices_follow_tfds_split_slicing(text, expected):
  assert slice_range(text, 10, "flag") == expected


def test_complementary_percent_slices_cover_everything_once():
  for n in (1, 7, 99, 1001):
    a, b = slice_range("[:37%]", n, "f"), slice_range("[37%:]", n, "f")
    assert a.stop == b.start and a.start == 0 and b.stop == n


def test_text_source_slices_characters(tmp_path):
  path = tmp_path / "input.txt"
  path.write_text("abcdefghij")
  assert read(f"text:{path}[:90%]") == [{"text": "abcdefghi"}]
  assert read(f"text:{path}[90%:]") == [{"text": "j"}]


def test_lines_source_with_and_without_labels(tmp_path):
  path = tmp_path / "train.txt"
  path.write_text("1 a fine film\n\n0 dull\n2 so-so\n")
  assert read(f"lines:{path}", with_labels=True) == [
    {"text": "a fine film", "label": 1},
    {"text": "dull", "label": 0},
    {"text": "so-so", "label": 2},
  ]
  assert read(f"lines:{path}[1:]") == [{"text": "0 dull"}, {"text": "2 so-so"}]


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz"])
def test_jsonl_source_plain_and_gzipped(tmp_path, suffix):
  path = tmp_path / f"data{suffix}"
  lines = "".join(
    json.dumps({"text": f"review {i}", "label": i % 2, "id": i}) + "\n" for i in range(5)
  )
  if suffix.endswith(".gz"):
    with gzip.open(path, "wt", encoding="utf-8") as f:
      f.write(lines)
  else:
    path.write_text(lines)
  assert read(f"jsonl:{path}[:2]", with_labels=True) == [
    {"text": "review 0", "label": 0},
    {"text": "review 1", "label": 1},
  ]
  assert read(f"jsonl:{path}[-1:]") == [{"text": "review 4"}]


def test_tfds_source_reads_what_prepare_wrote(tmp_path):
  examples = [{"text": f"sentence {i}", "label": i % 3} for i in range(10)]
  write_tfds_dataset(
    "tiny_corpus",
    {"train": examples, "test": examples[:4]},
    data_dir=str(tmp_path),
    with_labels=True,
  )
  train = read("tfds:tiny_corpus/train", with_labels=True, tfds_data_dir=str(tmp_path))
  assert sorted(train, key=lambda e: e["text"]) == sorted(examples, key=lambda e: e["text"])
  assert (
    len(read("tfds:tiny_corpus/train[:30%]", with_labels=True, tfds_data_dir=str(tmp_path))) == 3
  )
  assert len(read("tfds:tiny_corpus/test", tfds_data_dir=str(tmp_path))) == 4
  with pytest.raises(DataError, match="has no field 'sentence'"):
    read("tfds:tiny_corpus/train", tfds_data_dir=str(tmp_path), text_field="sentence")


def test_synthetic_sources_are_deterministic_and_split():
  train, held_out = (
    read("synthetic:recall[:90%]", with_labels=True),
    read("synthetic:recall[90%:]", with_labels=True),
  )
  assert len(train) == 18_000 and len(held_out) == 2_000
  assert train == read("synthetic:recall[:90%]", with_labels=True)
  assert all("abc"[e["label"]] == e["text"][0] for e in train[:100])
  copy = read("synthetic:copy[:5]")
  assert all(doc["text"].split("=")[0] == doc["text"].split("=")[1] for doc in copy)


@pytest.mark.parametrize(
  "content, with_labels, message",
  [
    (
      "1 ok\n1.5 fractional label\n",
      True,
      r"train.txt:2: label '1.5' is a name, but other labels are class ids",
    ),
    ("1 ok\n-1 negative\n", True, r"train.txt:2: label -1 is negative"),
    ("\n\n", False, r"no examples in .*train.txt"),
  ],
)
def test_bad_lines_name_file_and_line(tmp_path, content, with_labels, message):
  path = tmp_path / "train.txt"
  path.write_text(content)
  with pytest.raises(DataError, match=message):
    # Reading accepts class names; the run's labels refuse ids and names mixed.
    examples = sources.read_examples(
      sources.parse_spec(f"lines:{path}", "train_data"), with_labels=with_labels
    )
    Labels.from_training(examples, 0, "--train_data")


def test_bad_json_and_bad_bytes_name_file_and_line(tmp_path):
  path = tmp_path / "data.jsonl"
  path.write_text('{"text": "fine", "label": 1}\n{"text": "broken", \n')
  with pytest.raises(DataError, match=r"data.jsonl:2: malformed JSON"):
    read(f"jsonl:{path}", with_labels=True)
  path.write_text('{"text": "fine", "label": 1}\n{"text": "no label"}\n')
  with pytest.raises(DataError, match=r"data.jsonl:2: no label field 'label'"):
    read(f"jsonl:{path}", with_labels=True)


def test_bytes_that_are_not_utf8_are_refused_or_replaced_as_asked(tmp_path):
  binary = tmp_path / "latin1.txt"
  binary.write_bytes("1 line one\n0 caf\xe9\n".encode("latin-1"))
  with pytest.raises(DataError, match=r"latin1.txt:2: not valid UTF-8 .*--utf8_errors=replace"):
    read(f"text:{binary}")
  assert read(f"lines:{binary}", with_labels=True, utf8_errors="replace")[1] == {
    "text": "caf\ufffd",
    "label": 0,
  }


def test_only_newlines_separate_records(tmp_path):
  path = tmp_path / "data.jsonl"
  path.write_text(
    json.dumps({"text": "one\u2028two\x85three", "label": 1}, ensure_ascii=False)
    + "\r\n"
    + json.dumps({"text": "four", "label": 0})
    + "\n",
    encoding="utf-8",
  )
  assert read(f"jsonl:{path}", with_labels=True) == [
    {"text": "one\u2028two\x85three", "label": 1},
    {"text": "four", "label": 0},
  ]
  lines = tmp_path / "lines.txt"
  lines.write_text("1 a\u2028b\r\n0 c\n", encoding="utf-8")
  assert read(f"lines:{lines}", with_labels=True) == [
    {"text": "a\u2028b", "label": 1},
    {"text": "c", "label": 0},
  ]


def test_file_examples_know_their_line(tmp_path):
  path = tmp_path / "train.txt"
  path.write_text("1 a\n\n0 b\n")
  examples = sources.read_examples(
    sources.parse_spec(f"lines:{path}[1:]", "train_data"), with_labels=True
  )
  assert [e["where"] for e in examples] == [f"{path}:3"]


@pytest.mark.parametrize(
  "spec, message",
  [
    ("xml:data.xml", "unknown data kind 'xml'"),
    ("nocolon", "expected KIND:PATH"),
    ("synthetic:nope", "unknown synthetic task 'nope'"),
    ("text:/no/such/file.txt", "no such file: /no/such/file.txt"),
    ("synthetic:copy[:0]", "selects none"),
    ("synthetic:copy[a:b]", "bad slice"),
  ],
)
def test_bad_specs_name_the_flag(spec, message):
  with pytest.raises(DataError, match=message) as error:
    read(spec)
  assert "--train_data" in str(error.value)


def test_comma_joined_specs_read_one_after_the_other(tmp_path):
  (tmp_path / "a.txt").write_text("0 first\n1 second\n")
  (tmp_path / "b.txt").write_text("1 third\n")
  joined = sources.read_joined(
    f"lines:{tmp_path}/a.txt,lines:{tmp_path}/b.txt[:1]", "train_data", with_labels=True
  )
  assert [e["text"] for e in joined] == ["first", "second", "third"]
  assert (
    sources.with_absolute_path("lines:a.txt,jsonl:/abs/b.jsonl").split(",")[1]
    == "jsonl:/abs/b.jsonl"
  )
  assert sources.with_absolute_path("lines:a.txt,jsonl:b.jsonl").count(str(tmp_path.cwd())) == 2


def test_holdout_takes_a_fixed_random_share_out_of_training():
  examples = [{"text": str(i), "label": i % 2} for i in range(1000)]
  train, dev = sources.holdout_split(examples, "holdout:10%", "eval_data")
  assert len(dev) == 100 and len(train) == 900
  # Disjoint, complete
  assert sorted(e["text"] for e in train + dev) == sorted(e["text"] for e in examples)
  # Training keeps its order
  assert [e["text"] for e in train] == sorted((e["text"] for e in train), key=int)
  # Random, not the file's tail (sorted files are common)
  assert 30 < sum(e["label"] for e in dev) < 70
  assert sources.holdout_split(examples, "holdout:10%", "eval_data") == (train, dev)  # fixed
  # Drawn from the whole file, not its tail: every tenth of the file gives some of it, and a file
  # sorted by label (the first half 0, the second 1) gives a dev split of both classes.
  positions = sorted(int(e["text"]) for e in dev)
  assert {position // 100 for position in positions} == set(range(10)), positions
  by_label = [{"text": str(i), "label": int(i >= 500)} for i in range(1000)]
  _, sorted_dev = sources.holdout_split(by_label, "holdout:10%", "eval_data")
  assert 30 < sum(e["label"] for e in sorted_dev) < 70
  for bad in ("holdout:0%", "holdout:10", "holdout:100%"):
    with pytest.raises(DataError, match=f"--eval_data='{bad}': expected holdout:P%"):
      sources.holdout_split(examples, bad, "eval_data")
  with pytest.raises(DataError, match="leaves no dev or no training example"):
    sources.holdout_split(examples[:5], "holdout:10%", "eval_data")
