r"""Draws the train and eval curves of one or several runs side by side, to compare them.

  python -m training.tools.plot runs/copy_carry runs/copy_no_carry --out=runs/copy.png

One panel per metric (loss, and accuracy for classifiers; `--metrics` picks others, such as
`tokens_per_sec` or `grad_norm`), train as solid lines and eval as dashed ones, one colour per
run, read from each workdir's `metrics.jsonl`. Writes a PNG (or any format matplotlib knows by
the file's extension).
"""

import json
import os

from absl import app, flags

from launch import cli
from pipeline import paths

_OUT = flags.DEFINE_string("out", None, "The image to write (e.g. curves.png).", required=True)
_METRICS = flags.DEFINE_list(
  "metrics", [], "Metrics to draw; empty: loss, and accuracy where logged."
)
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


def plot_runs(workdirs: list[str], out: str, metrics: list[str] = (), title: str = "") -> list[str]:
  """Draws the runs' curves into `out`; returns the metrics drawn."""
  import matplotlib

  matplotlib.use("Agg")  # files only: no display needed
  import matplotlib.pyplot as plt

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
  if title:
    figure.suptitle(title)
  figure.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  figure.savefig(out, dpi=120)
  plt.close(figure)
  return list(metrics)


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
