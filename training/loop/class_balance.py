"""A warning, once at the start of a classifier's run, when its dev or test split holds its
classes in other proportions than the training split.

The usual cause is a file sorted by label and cut into splits by position (`data.txt[:80%]`,
`[80%:90%]`, `[90%:]`): training then sees every class and dev and test only the last ones, and
accuracy, early stopping and the test figure all measure the wrong thing without a word. A split
is flagged when a class of one side is missing from the other, or when the total variation
distance between the two distributions (half the sum of the absolute differences of the
classes' shares: the share of the split that would have to change class to match) exceeds
`DISTANCE_THRESHOLD`. A class in dev or test that training has no name for is an error before
this is reached (`pipeline.labels`); one that training has no example of is flagged here.
"""

import numpy as np

# Half the sum of |share in split - share in training|. 0.2 flags 50/50 against 70/30 and
# anything further; a random split of a few hundred examples stays well under it.
DISTANCE_THRESHOLD = 0.2


def total_variation(counts, reference) -> float:
  shares = np.asarray(counts, np.float64) / max(np.sum(counts), 1)
  reference_shares = np.asarray(reference, np.float64) / max(np.sum(reference), 1)
  return float(np.abs(shares - reference_shares).sum() / 2)


def imbalance_warning(flag: str, counts, train_counts, class_names) -> str | None:
  """One line naming the split, the counts and the likely cause; None when the split's classes
  are distributed like training's."""
  counts, train_counts = np.asarray(counts), np.asarray(train_counts)
  if counts.sum() == 0:
    return None
  distance = total_variation(counts, train_counts)
  missing = [name for name, n, t in zip(class_names, counts, train_counts) if t and not n]
  untrained = [name for name, n, t in zip(class_names, counts, train_counts) if n and not t]
  if distance <= DISTANCE_THRESHOLD and not missing and not untrained:
    return None
  findings = []
  if missing:
    findings.append(f"no example of {', '.join(missing)}")
  if untrained:
    findings.append(f"{', '.join(untrained)} never seen in training")
  findings.append(f"total variation distance {distance:.2f} (warned above {DISTANCE_THRESHOLD})")
  shares = "; ".join(
    f"{name} {int(n):,} ({n / counts.sum():.1%}) against {int(t):,}"
    f" ({t / max(train_counts.sum(), 1):.1%})"
    for name, n, t in zip(class_names, counts, train_counts)
  )
  return (
    f"--{flag}: its classes are not distributed like --train_data's: {', '.join(findings)}."
    f" Examples per class, this split against training: {shares}. Is the file sorted by label?"
    " Hold the dev split out with --eval_data=holdout:10%, or shuffle the file before cutting it"
  )


def class_counts(label_ids, num_classes: int) -> np.ndarray:
  return np.bincount(np.asarray(label_ids, np.int64), minlength=num_classes)
