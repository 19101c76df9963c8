"""Generated tasks whose solution needs memory across many steps (the embedded default data).

Both are deterministic functions of their name, so every machine sees the same data and no
download is needed. Select with `synthetic:NAME[SLICE]`; the default train/eval split is
`[:90%]` / `[90%:]`.

- `copy` (per token): documents `xyz...=xyz...` of 4-12 random letters, then `=`, then the
  same letters. Before `=` each letter is a coin toss over 8 letters (ln 8 = 2.08 nats); after
  it the text is fully determined, but only for a model that remembered the first half across
  up to 13 steps. Lower bound of the mean loss: about 1.1 nats/char; a model without memory
  stays near 1.9.
- `recall` (per sequence): 10-40 random letters from `a`-`j`; the label (0, 1, 2) is given
  by the first letter, which is `a`, `b` or `c`. The later letters are noise drawn from the
  same alphabet, so the model must carry the first letter to the end, across up to 39 steps.
  Chance accuracy is 1/3.
- `recall@D` (per sequence): the same with exactly D letters after the first, so that the
  evidence is always D steps back from the end (the dependency-distance experiment,
  `bench/dependency_distance.py`).
"""

import functools
import re

import numpy as np

_SEED = 20261124


def _random_letters(rng: np.random.Generator, letters: bytes, length: int) -> str:
  """`length` letters drawn uniformly from `letters`: the draws of `rng.choice(letters, length)`
  (the same integers from the same stream, so the tasks are unchanged) without its per-call
  overhead, which made generating a task a second of every run's start."""
  table = np.frombuffer(letters, np.uint8)
  # `size` as a Python int: a NumPy integer there costs a `np.prod` per call (a third of the time).
  return table[rng.integers(0, len(table), size=int(length))].tobytes().decode()


def copy_documents(num_documents: int = 40_000) -> list[dict]:
  rng = np.random.default_rng(_SEED)
  documents = []
  for _ in range(num_documents):
    word = _random_letters(rng, b"abcdefgh", rng.integers(4, 13))
    documents.append(
      {"text": f"{word}={word}", "where": f"synthetic:copy document {len(documents)}"}
    )
  return documents


def recall_examples(
  num_examples: int = 20_000,
  num_classes: int = 3,
  noise_lengths: tuple[int, int] = (9, 40),
  name: str = "recall",
) -> list[dict]:
  """`noise_lengths`: the letters after the first, from low to high (exclusive)."""
  rng = np.random.default_rng(_SEED + 1)
  letters = b"abcdefghij"
  examples = []
  for _ in range(num_examples):
    label = int(rng.integers(num_classes))
    noise = _random_letters(rng, letters, rng.integers(*noise_lengths))
    examples.append(
      {
        "text": chr(letters[label]) + noise,
        "label": label,
        "where": f"synthetic:{name} example {len(examples)}",
      }
    )
  return examples


TASKS = {"copy": copy_documents, "recall": recall_examples}
TASK_NAMES = (*TASKS, "recall@D")  # for messages: the fixed tasks and the family by distance
_AT_DISTANCE = re.compile(r"^recall@([1-9]\d{0,3})$")


def is_task(name: str) -> bool:
  return name in TASKS or bool(_AT_DISTANCE.match(name))


@functools.cache  # a run reads its train and eval slices from one task: generate it once
def generate(name: str) -> tuple[dict, ...]:
  """The examples of task `name` (`is_task(name)` must hold), shared: read, do not change them."""
  match = _AT_DISTANCE.match(name)
  if match:
    distance = int(match.group(1))
    return tuple(
      recall_examples(num_examples=5_000, noise_lengths=(distance, distance + 1), name=name)
    )
  return tuple(TASKS[name]())
