"""What the experiments share: run the trainer as a user would (a subprocess of
`python -m training.train`), read what it wrote, and write a Markdown table and a PNG plot.

A run whose workdir already holds its `summary.json` is not trained again (so an experiment that
stopped part-way is finished by the same command, and a finished one only redraws its outputs);
a run stopped mid-way resumes from its checkpoint.
"""

import json
import os
import platform
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def finished(workdir: str) -> bool:
  """Whether the run in `workdir` has ended (its summary is written at the end)."""
  return os.path.exists(os.path.join(workdir, "summary.json"))


def train(workdir: str, *flags: str, log: str | None = None) -> dict:
  """Trains (or finishes) the run in `workdir`; returns its summary."""
  if not finished(workdir):
    os.makedirs(workdir, exist_ok=True)
    command = [sys.executable, "-m", "training.train", f"--workdir={workdir}", *flags]
    print("$", " ".join(command[1:]), flush=True)
    with open(log or os.path.join(workdir, "train.log"), "a") as out:
      result = subprocess.run(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    if result.returncode != 0:
      raise RuntimeError(f"training failed (exit {result.returncode}); see {out.name}")
  return read_summary(workdir)


def read_summary(workdir: str) -> dict:
  with open(os.path.join(workdir, "summary.json"), encoding="utf-8") as f:
    return json.load(f)


def rows(workdir: str, split: str) -> list[dict]:
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    return [row for row in map(json.loads, f) if row["split"] == split]


def training_seconds(workdir: str) -> float | None:
  """Wall seconds of training and evaluation (start-up excluded), over resumes; None when some
  rows were written before `elapsed_s` was logged (the figure would leave that part out)."""
  logged = rows(workdir, "train") + rows(workdir, "eval")
  if not logged or any("elapsed_s" not in row for row in logged):
    return None
  return max(row["elapsed_s"] for row in logged)


def machine() -> str:
  return f"{platform.machine()} CPU, {os.cpu_count()} cores, {platform.python_version()}"


def write_table(path: str, title: str, intro: str, header: list[str], table: list[list]) -> None:
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  lines = [
    f"# {title}",
    "",
    intro,
    "",
    "| " + " | ".join(header) + " |",
    "|" + " --- |" * len(header),
  ]
  lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in table]
  with open(path, "w", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")
  print(open(path, encoding="utf-8").read())


def new_figure(panels: int = 1):
  import matplotlib

  matplotlib.use("Agg")  # files only, no display
  import matplotlib.pyplot as plt

  figure, axes = plt.subplots(1, panels, figsize=(6 * panels, 4.2), squeeze=False)
  return figure, axes[0]


def save_figure(figure, path: str) -> None:
  figure.tight_layout()
  figure.savefig(path, dpi=110)
  print(f"wrote {path}")
