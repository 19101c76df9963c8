"""TFDS-style split slicing (`[:90%]`, `[90%:]`, `[:1000]`, `[10:-10]`) for any sequence."""

import re

from pipeline.errors import DataError

_BOUND = r"(-?\d+%?)?"
_SLICE_RE = re.compile(rf"^\[{_BOUND}:{_BOUND}\]$")


def parse_slice(text: str, what: str) -> tuple[str | None, str | None]:
  """Parses `[START:STOP]` into its two bounds (each `None`, `'N'` or `'N%'`)."""
  match = _SLICE_RE.match(text.replace(" ", ""))
  if not match:
    raise DataError(
      f"{what}: bad slice {text!r}; expected [START:STOP] with integers or percentages,"
      " e.g. [:90%], [90%:], [:1000]"
    )
  for bound in match.groups():
    if bound and bound.endswith("%") and not -100 <= int(bound[:-1]) <= 100:
      raise DataError(f"{what}: percentage out of range in slice {text!r}")
  return match.group(1), match.group(2)


def _resolve(bound: str | None, length: int, default: int) -> int:
  if bound is None:
    return default
  if bound.endswith("%"):
    percent = int(bound[:-1])
    # Floor of the fraction, as TFDS does, so that [:P%] and [P%:] are complementary.
    index = (abs(percent) * length) // 100
    return length - index if percent < 0 else index
  index = int(bound)
  return max(length + index, 0) if index < 0 else min(index, length)


def slice_range(text: str | None, length: int, what: str) -> range:
  """The indices of a sequence of `length` items selected by `text` (all of them if None)."""
  if text is None:
    return range(length)
  start, stop = parse_slice(text, what)
  return range(_resolve(start, length, 0), _resolve(stop, length, length))
