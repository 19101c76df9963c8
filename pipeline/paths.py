"""Paths as the user gave them, made absolute once at an entry point.

Orbax (and TensorStore under it) refuse relative checkpoint paths, and a relative path means
something else to any code that changes directory, so every path flag is resolved against the
working directory when a run starts. Paths with a scheme (`gs://bucket/run`) are left as they
are: they are absolute already.
"""

import os


def absolute(path: str) -> str:
  """`path` made absolute against the working directory (`~` expanded); '' and URLs unchanged."""
  if not path or "://" in path:
    return path
  return os.path.abspath(os.path.expanduser(path))
