"""Class labels: ids as the data gives them, or names mapped to ids.

A run fixes its labels from the training data once and saves them beside the vocabulary, so that
a resumed run, evaluation, prediction and export all use the same mapping. Labels that are all
integers are class ids `0..C-1`; otherwise every label is a name, and names are numbered in
sorted order (`neg` -> 0, `pos` -> 1), whatever order the data lists them in.
"""

import dataclasses
import json
from collections.abc import Sequence

import numpy as np

from pipeline import paths
from pipeline.errors import DataError


@dataclasses.dataclass(frozen=True)
class Labels:
  num_classes: int
  names: tuple[str, ...] | None = None  # None: the data's labels are class ids
  # Where the class count came from, for errors
  origin: str = dataclasses.field(default="", compare=False)

  @classmethod
  def from_training(cls, examples: Sequence[dict], num_classes: int, what: str) -> "Labels":
    """The labels of `examples` (a training set, `what` names it); `num_classes` > 0 fixes the
    count of id labels."""
    ids = [example for example in examples if isinstance(example["label"], int)]
    if ids and len(ids) < len(examples):
      # Almost always a typo in a label column: refuse rather than invent a class for it.
      name = next(example for example in examples if not isinstance(example["label"], int))
      raise DataError(
        f"{name.get('where', what)}: label {name['label']!r} is a name, but other labels are class"
        f" ids (e.g. {ids[0]['label']} at {ids[0].get('where', what)}); use ids or names throughout"
      )
    if ids:
      count = num_classes or 1 + max(example["label"] for example in ids)
      if count < 2:
        raise DataError(f"{what}: every label is 0; a classifier needs 2 or more classes")
      return cls(
        count, None, "--num_classes" if num_classes else f"inferred from {what.split('=')[0]}"
      )
    names = tuple(sorted({str(example["label"]) for example in examples}))
    if len(names) < 2:
      raise DataError(f"{what}: every label is {names[0]!r}; a classifier needs 2 or more classes")
    if num_classes and num_classes != len(names):
      raise DataError(
        f"--num_classes={num_classes}: the training labels are {len(names)} names"
        f" ({', '.join(names)})"
      )
    return cls(len(names), names, f"the names in {what.split('=')[0]}")

  def ids(self, examples: Sequence[dict], source: str) -> np.ndarray:
    """Class ids [N] of `examples`; an unknown label is an error naming its file and line."""
    index = {name: i for i, name in enumerate(self.names or ())}
    ids = np.empty(len(examples), np.int32)
    for position, example in enumerate(examples):
      label, where = example["label"], example.get("where", source)
      if self.names is None:
        if not isinstance(label, int):
          raise DataError(
            f"{where}: label {label!r} is a name, but the training labels are class ids"
          )
        if label >= self.num_classes:
          raise DataError(
            f"{where}: label {label} is out of range for {self.num_classes} classes"
            + (f" ({self.origin})" if self.origin else "")
          )
        ids[position] = label
      else:
        if str(label) not in index:
          raise DataError(
            f"{where}: label {label!r} is not one of the training labels ({', '.join(self.names)})"
          )
        ids[position] = index[str(label)]
    return ids

  def name(self, class_id: int) -> str:
    return self.names[class_id] if self.names else str(class_id)

  def to_json(self) -> str:
    return json.dumps({"num_classes": self.num_classes, "names": self.names}, ensure_ascii=False)

  def save(self, path: str) -> None:
    paths.write_text(path, self.to_json())

  @classmethod
  def load(cls, path: str) -> "Labels":
    try:
      saved = json.loads(paths.read_text(path))
      return cls(
        int(saved["num_classes"]),
        None if saved["names"] is None else tuple(saved["names"]),
        f"saved in {path}",
      )
    except (OSError, ValueError, KeyError, TypeError) as e:
      raise DataError(f"{path}: unreadable labels ({e})") from None
