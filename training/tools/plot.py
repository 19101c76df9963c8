r"""Draws the train and eval curves of one or several runs side by side, to compare them.

  python -m training.tools.plot runs/copy_carry runs/copy_no_carry --out=runs/copy.png

One panel per metric (loss, and accuracy for classifiers; `--metrics` picks others, such as
`tokens_per_sec` or `grad_norm`), train as solid lines and eval as dashed ones, one colour per
run, read from each workdir's `metrics.jsonl`. Writes a PNG (or any format matplotlib knows by
the file's extension).

`--metrics=confusion_matrix` draws a finished classifier's confusion matrices instead, from its
`summary.json`: the dev evaluation that chose its parameters, and the test split read with them.

  python -m training.tools.plot runs/recall_lstm --metrics=confusion_matrix --out=runs/recall_lstm_confusion.png
"""

import json
import os

from absl import app, flags

from launch import cli
from pipeline import paths

_OUT = flags.DEFINE_string("out", None, "The image to write (e.g. curves.png).", required=True)
_METRICS = flags.DEFINE_list(
  "metrics",
  [],
  "Metrics to draw; empty: loss, and accuracy where logged; confusion_matrix: a finished"
  " classifier's confusion matrices (dev and test) instead of curves.",
)
CONFUSION_MATRIX = "confusion_matrix"
_TITLE = flags.DEFINE_string("title", "", "Figure title.")


class PlotError(ValueError):
  pass


def read_rows(workdir: str) -> list[dict]:
  path = os.path.join(workdir, "metrics.jsonl")
  if not paths.exists(path):
    raise PlotError(f"{workdir}: no metrics.jsonl (is it a run's workdir?)")
  rows = []
  for line in paths.read_text(path).split("\n"):
    try:
      rows.append(json.loads(line))
    except json.JSONDecodeError:
      continue  # a blank line, or the half-written last line of a running or killed run
  return rows


def confusion_matrices(workdir: str) -> list[tuple[str, dict]]:
  """(title, evaluation) of each confusion matrix in a finished run's summary: dev (best), test."""
  path = os.path.join(workdir, "summary.json")
  if not paths.exists(path):
    raise PlotError(f"{workdir}: no summary.json (has the run finished?)")
  summary = json.loads(paths.read_text(path))
  best, test = summary.get("best") or {}, summary.get("test") or {}
  found = []
  if CONFUSION_MATRIX in best.get("eval", {}):
    found.append((f"dev, step {best['step']} (best)", best["eval"]))
  elif CONFUSION_MATRIX in (summary.get("eval") or {}):
    found.append((f"dev, step {summary['step']}", summary["eval"]))
  if CONFUSION_MATRIX in test:
    found.append(("test", test))
  if not found:
    raise PlotError(
      f"{workdir}: its summary.json has no confusion matrix (a language model, or a classifier"
      " trained before they were recorded: evaluate it with rnn-predict --data)"
    )
  return found


def plot_confusion_matrices(workdirs: list[str], out: str, title: str = "") -> list[str]:
  """Draws each run's confusion matrices into `out`, one panel per run and split."""
  plt = _pyplot()
  from training.bookkeeping.class_report import draw_confusion_matrix, figure_inches

  panels = [
    (f"{os.path.basename(os.path.normpath(w)) or w}: {split}", evaluation)
    for w in workdirs
    for split, evaluation in confusion_matrices(w)
  ]
  size = figure_inches(max(len(evaluation["classes"]) for _, evaluation in panels))
  figure, axes = plt.subplots(1, len(panels), figsize=(size * len(panels), size), squeeze=False)
  for axis, (name, evaluation) in zip(axes[0], panels):
    draw_confusion_matrix(axis, evaluation, name)
  return _save(plt, figure, out, title, [CONFUSION_MATRIX])


def _pyplot():
  import matplotlib

  matplotlib.use("Agg")  # files only: no display needed
  import matplotlib.pyplot as plt

  return plt


def _save(plt, figure, out: str, title: str, drawn: list[str]) -> list[str]:
  if title:
    figure.suptitle(title)
  figure.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  figure.savefig(out, dpi=120)
  plt.close(figure)
  return drawn


def plot_runs(workdirs: list[str], out: str, metrics: list[str] = (), title: str = "") -> list[str]:
  """Draws the runs' curves into `out`; returns the metrics drawn."""
  if CONFUSION_MATRIX in metrics:
    if list(metrics) != [CONFUSION_MATRIX]:
      raise PlotError(
        f"--metrics={','.join(metrics)}: {CONFUSION_MATRIX} is drawn on its own, not beside curves"
      )
    return plot_confusion_matrices(workdirs, out, title)
  plt = _pyplot()

  runs = {os.path.basename(os.path.normpath(w)) or w: read_rows(w) for w in workdirs}
  if not metrics:
    logged = {name for rows in runs.values() for row in rows for name in row}
    metrics = [name for name in ("loss", "accuracy") if name in logged]
  if not metrics:
    raise PlotError(f"nothing to plot: no rows in {', '.join(workdirs)}")
  figure, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 4), squeeze=False)
  colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  for axis, metric in zip(axes[0], metrics):
    for index, (name, rows) in enumerate(runs.items()):
      for split, style in (("train", "-"), ("eval", "--")):
        points = [
          (row["step"], row[metric]) for row in rows if row.get("split") == split and metric in row
        ]
        if points:
          steps, values = zip(*points)
          axis.plot(
            steps,
            values,
            style,
            color=colours[index % len(colours)],
            label=f"{name} ({split})",
            marker="o" if split == "eval" and len(points) < 20 else None,
            markersize=3,
          )
    axis.set_xlabel("step")
    axis.set_ylabel(metric)
    axis.grid(alpha=0.3)
    axis.legend(fontsize="small")
  return _save(plt, figure, out, title, list(metrics))


def main(argv):
  workdirs = argv[1:]
  cli.quiet_libraries()
  if not workdirs:
    raise app.UsageError(
      "give one or more workdirs: python -m training.tools.plot WORKDIR [WORKDIR...] --out=FILE.png"
    )
  with cli.one_line_errors(PlotError):
    drawn = plot_runs(workdirs, _OUT.value, _METRICS.value, _TITLE.value)
  print(f"wrote {_OUT.value}: {', '.join(drawn)} of {len(workdirs)} run(s)")


def run_main():
  """Console entry point (`rnn-plot`)."""
  cli.run(main, __name__)


if __name__ == "__main__":
  run_main()
