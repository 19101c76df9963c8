"""The commands the README and docs/ show, read from the pages themselves so that tests and docs
cannot drift."""

import glob
import os
import re
import shlex

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
PAGES = [README, *sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))]


def code_blocks(path: str = README) -> list[str]:
  """The bodies of the ```bash blocks, in order."""
  with open(path, encoding="utf-8") as f:
    return re.findall(r"^```bash\n(.*?)^```", f.read(), flags=re.S | re.M)


def commands(block: str) -> list[str]:
  """One string per command: continuation lines joined, comments and blank lines dropped."""
  joined = re.sub(r"\\\n\s*", " ", block)
  lines = (line.split(" #")[0].strip() for line in joined.splitlines())
  return [line for line in lines if line and not line.startswith("#")]


def quickstart() -> tuple[str, str]:
  """The README's first two commands: (set up and run the main job, set up and run the tests)."""
  first = commands(code_blocks()[0])
  assert len(first) == 2, f"the README must start with exactly two commands, found {first}"
  return first[0], first[1]


def after_setup(command: str) -> list[str]:
  """The part of a quickstart command after the venv set-up and install, as an argv list."""
  parts = command.split(" && ")
  start = next(i for i, part in enumerate(parts) if part.startswith("python -m "))
  assert all(part.startswith("python -m ") for part in parts[start:]), parts[start:]
  assert len(parts[start:]) == 1, f"expected one command after the set-up: {parts[start:]}"
  return shlex.split(parts[start])


def all_commands(path: str = README) -> list[str]:
  return [command for block in code_blocks(path) for command in commands(block)]


def python_blocks(path: str = README) -> list[str]:
  with open(path, encoding="utf-8") as f:
    return re.findall(r"^```python\n(.*?)^```", f.read(), flags=re.S | re.M)
