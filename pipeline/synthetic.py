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
"""

import numpy as np

_SEED = 20261124


def copy_documents(num_documents: int = 40_000) -> list[dict]:
  rng = np.random.default_rng(_SEED)
  letters = np.array(list("abcdefgh"))
  documents = []
  for _ in range(num_documents):
    word = "".join(rng.choice(letters, size=rng.integers(4, 13)))
    documents.append({"text": f"{word}={word}", "where": f"synthetic:copy document {len(documents)}"})
  return documents


def recall_examples(num_examples: int = 20_000, num_classes: int = 3) -> list[dict]:
  rng = np.random.default_rng(_SEED + 1)
  letters = np.array(list("abcdefghij"))
  examples = []
  for _ in range(num_examples):
    label = int(rng.integers(num_classes))
    noise = "".join(rng.choice(letters, size=rng.integers(9, 40)))
    examples.append({"text": letters[label] + noise, "label": label,
                     "where": f"synthetic:recall example {len(examples)}"})
  return examples


TASKS = {"copy": copy_documents, "recall": recall_examples}
