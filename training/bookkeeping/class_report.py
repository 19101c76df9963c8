"""A classifier's evaluation beyond accuracy: per-class precision, recall, F1 and support, their
macro and weighted averages, and the confusion matrix, from the matrix alone.

The matrix is counted on the device with the other metric sums (`objectives.sequence_cross_entropy`:
rows are the true classes, columns the predicted ones), so it adds up exactly over batches,
devices and processes; everything here is derived from it on the host, with scikit-learn's
definitions (a class never predicted has precision 0, one never present has recall 0, and
`weighted` averages by support).
"""

import numpy as np

# A confusion matrix has C x C cells: up to TABLE_MATRIX_CLASSES classes it is printed under the
# report's table (wider, its lines are no longer read), and up to ROW_MATRIX_CLASSES it is kept in
# every evaluation's row of metrics.jsonl and TensorBoard (above, a 1,000-class run would write
# megabytes per evaluation). summary.json and the tools' JSON reports always hold it.
TABLE_MATRIX_CLASSES = 20
ROW_MATRIX_CLASSES = 100


def class_report(confusion, class_names) -> dict:
  """The report of a confusion matrix [C, C] (true x predicted counts) whose classes are named
  `class_names`, as plain JSON values."""
  confusion = np.asarray(confusion, np.float64)
  true_positives = np.diag(confusion)
  support = confusion.sum(axis=1)
  predicted = confusion.sum(axis=0)
  precision = _ratio(true_positives, predicted)
  recall = _ratio(true_positives, support)
  f1 = _ratio(2 * precision * recall, precision + recall)
  total = support.sum()
  weights = support / total if total else np.zeros_like(support)
  return {
    "macro_precision": float(precision.mean()),
    "macro_recall": float(recall.mean()),
    "macro_f1": float(f1.mean()),
    "weighted_precision": float(precision @ weights),
    "weighted_recall": float(recall @ weights),
    "weighted_f1": float(f1 @ weights),
    "per_class": {
      str(name): {
        "precision": float(precision[i]),
        "recall": float(recall[i]),
        "f1": float(f1[i]),
        "support": int(support[i]),
      }
      for i, name in enumerate(class_names)
    },
    "classes": [str(name) for name in class_names],
    "confusion_matrix": [[int(count) for count in row] for row in confusion],
  }


def _ratio(numerator, denominator):
  """numerator / denominator, 0 where the denominator is 0 (scikit-learn's zero_division=0)."""
  return np.divide(
    numerator, denominator, out=np.zeros_like(numerator, np.float64), where=denominator > 0
  )


def confusion_from_predictions(predicted, labels, num_classes: int) -> np.ndarray:
  """The confusion matrix [C, C] of predicted class ids against true ones (host-side, for tools
  that hold every prediction anyway: predict, ensemble)."""
  confusion = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(confusion, (np.asarray(labels), np.asarray(predicted)), 1)
  return confusion


def for_every_row(metrics: dict) -> dict:
  """An evaluation's metrics as a metrics.jsonl row holds them: without the confusion matrix of
  more than ROW_MATRIX_CLASSES classes."""
  if len(metrics.get("classes", ())) <= ROW_MATRIX_CLASSES:
    return metrics
  return {name: value for name, value in metrics.items() if name != "confusion_matrix"}


def format_report(metrics: dict, title: str = "", matrix_in: str = "the JSON report") -> str:
  """A report as a table for the log, in the layout of scikit-learn's `classification_report`,
  followed by the confusion matrix (of up to TABLE_MATRIX_CLASSES classes; else a line saying
  that it is in `matrix_in`)."""
  names = metrics["classes"]
  width = max(12, *(len(name) for name in names))
  lines = [title] if title else []
  lines.append(f"{'':>{width}} {'precision':>9} {'recall':>9} {'f1':>9} {'support':>9}")
  for name in names:
    row = metrics["per_class"][name]
    lines.append(
      f"{name:>{width}} {row['precision']:9.4f} {row['recall']:9.4f} {row['f1']:9.4f}"
      f" {row['support']:9d}"
    )
  support = sum(metrics["per_class"][name]["support"] for name in names)
  if "accuracy" in metrics:
    lines.append(f"{'accuracy':>{width}} {'':9} {'':9} {metrics['accuracy']:9.4f} {support:9d}")
  for average in ("macro", "weighted"):
    lines.append(
      f"{average + ' avg':>{width}} {metrics[average + '_precision']:9.4f}"
      f" {metrics[average + '_recall']:9.4f} {metrics[average + '_f1']:9.4f} {support:9d}"
    )
  if len(names) > TABLE_MATRIX_CLASSES:
    lines.append(f"confusion matrix: {len(names)} x {len(names)}, in {matrix_in}")
    return "\n".join(lines)
  cell = max(9, *(len(str(count)) + 1 for row in metrics["confusion_matrix"] for count in row))
  lines.append("confusion matrix (rows: true class, columns: predicted)")
  lines.append(f"{'':>{width}}" + "".join(f"{name[: cell - 1]:>{cell}}" for name in names))
  for name, row in zip(names, metrics["confusion_matrix"]):
    lines.append(f"{name:>{width}}" + "".join(f"{count:>{cell}d}" for count in row))
  return "\n".join(lines)


def scalar_metrics(metrics: dict) -> dict:
  """The single numbers of a metrics dict (for a log line or TensorBoard's scalars)."""
  return {
    name: value
    for name, value in metrics.items()
    if isinstance(value, (int, float)) and not isinstance(value, bool)
  }


def draw_confusion_matrix(axis, metrics: dict, title: str = "") -> None:
  """The confusion matrix of `metrics` on a matplotlib axis: each cell shaded by its share of
  its true class (row), and labelled with its count."""
  names, counts = metrics["classes"], np.asarray(metrics["confusion_matrix"], np.float64)
  shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
  axis.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
  if len(names) <= 40:
    axis.set_xticks(range(len(names)), names, rotation=45 if len(names) > 4 else 0, ha="right")
    axis.set_yticks(range(len(names)), names)
  axis.set_xlabel("predicted")
  axis.set_ylabel("true")
  if len(names) <= 20:  # counts stay legible
    for i in range(len(names)):
      for j in range(len(names)):
        colour = "white" if shares[i, j] > 0.5 else "black"
        axis.text(j, i, f"{int(counts[i, j])}", ha="center", va="center", color=colour)
  if title:
    axis.set_title(title)


def figure_inches(num_classes: int) -> float:
  """A confusion matrix's side: room for each class's name, up to 16 inches (hundreds of
  classes are drawn as shades, without names or counts)."""
  return min(2.5 + 0.4 * num_classes, 16.0)


def confusion_matrix_image(metrics: dict, title: str = "") -> np.ndarray:
  """The drawing above as an RGB image [H, W, 3] of uint8 (for TensorBoard)."""
  import matplotlib

  matplotlib.use("Agg")  # files only: no display needed
  import matplotlib.pyplot as plt

  size = figure_inches(len(metrics["classes"]))
  figure, axis = plt.subplots(figsize=(size, size))
  draw_confusion_matrix(axis, metrics, title)
  figure.tight_layout()
  figure.canvas.draw()
  image = np.asarray(figure.canvas.buffer_rgba())[..., :3].copy()
  plt.close(figure)
  return image
