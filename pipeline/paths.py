"""Paths: made absolute once at an entry point, and read and written through one abstraction.

Orbax (and TensorStore under it) refuse relative checkpoint paths, and a relative path means
something else to any code that changes directory, so every path flag is resolved against the
working directory when a run starts. Paths with a scheme (`gs://bucket/run`) are left as they
are: they are absolute already.

Every file a run writes or reads beside its checkpoints (vocabulary, labels, run config,
metrics, summaries, prepared datasets) goes through `etils.epath`, the path library Orbax itself
uses, so a workdir or a dataset may be local or on any filesystem epath supports (`gs://` with
the usual Google Cloud credentials and `gcsfs` installed). What local filesystems allow and object
stores do not (an atomic rename, appending to a file) is done here, once, for both.
"""

import os
from collections.abc import Callable

from etils import epath


def absolute(path: str) -> str:
  """`path` made absolute against the working directory (`~` expanded); '' and URLs unchanged."""
  if not path or "://" in path:
    return path
  return os.path.abspath(os.path.expanduser(path))


def is_local(path) -> bool:
  return "://" not in str(path)


def exists(path) -> bool:
  return epath.Path(path).exists()


def is_dir(path) -> bool:
  return epath.Path(path).is_dir()


def make_dirs(path) -> None:
  epath.Path(path).mkdir(parents=True, exist_ok=True)


def read_text(path) -> str:
  return epath.Path(path).read_text(encoding="utf-8")


def read_bytes(path) -> bytes:
  return epath.Path(path).read_bytes()


def write_text(path, text: str) -> None:
  """Writes `text` so that a reader never sees half of it: a temporary file renamed over the
  target where the filesystem has an atomic rename; one object write (atomic) on object stores."""
  write_bytes(path, text.encode("utf-8"))


def write_bytes(path, data: bytes) -> None:
  if not is_local(path):
    epath.Path(path).write_bytes(data)
    return
  tmp = f"{path}.tmp"
  with open(tmp, "wb") as f:
    f.write(data)
  os.replace(tmp, path)


def append_text(path, text: str, whole_text: Callable[[], str]) -> None:
  """Appends `text` to a file whose whole new content is `whole_text()`: an append where the
  filesystem has one, a rewrite of the whole (small) file on object stores, which cannot append."""
  if is_local(path):
    with open(path, "a", encoding="utf-8") as f:
      f.write(text)
  else:
    epath.Path(path).write_text(whole_text(), encoding="utf-8")


def move(source, target) -> None:
  epath.Path(source).rename(target)


def remove(path) -> None:
  epath.Path(path).unlink()
