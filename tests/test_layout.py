"""The code's layout keeps its promises: no import cycle among pipeline/, training/ and launch/
(function-local imports included), no two top-level folders importing each other, the pipeline
knowing nothing of the model, and a finished run loaded for predict, generate or export
without the training loop."""

import ast
import importlib.util
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("pipeline", "training", "launch")
pytestmark = pytest.mark.newest_jax


def modules() -> dict[str, str]:
  """Module name -> file, for every module of the packages."""
  found = {}
  for package in PACKAGES:
    for directory, _, files in os.walk(os.path.join(ROOT, package)):
      for name in files:
        if name.endswith(".py"):
          path = os.path.join(directory, name)
          module = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
          found[module.removesuffix(".__init__")] = path
  return found


def import_graph() -> dict[str, set[str]]:
  """Module -> the package modules it imports anywhere in its file (the module a name comes from,
  or the module itself when a name is a submodule)."""
  known = modules()

  def resolve(name: str) -> str | None:
    while name and name not in known:
      name = name.rpartition(".")[0]
    return name or None

  graph = {}
  for module, path in known.items():
    with open(path, encoding="utf-8") as f:
      tree = ast.parse(f.read())
    imported = set()
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        imported |= {resolve(alias.name) for alias in node.names}
      elif isinstance(node, ast.ImportFrom):
        assert node.level == 0, f"{path}: relative import"
        imported |= {
          resolve(f"{node.module}.{alias.name}") or resolve(node.module) for alias in node.names
        }
    graph[module] = {name for name in imported if name and name != module}
  return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """The strongly connected components of more than one module (Tarjan)."""
  index, low, stack, on_stack, found = {}, {}, [], set(), []

  def visit(node):
    index[node] = low[node] = len(index)
    stack.append(node)
    on_stack.add(node)
    for other in graph[node]:
      if other not in index:
        visit(other)
        low[node] = min(low[node], low[other])
      elif other in on_stack:
        low[node] = min(low[node], index[other])
    if low[node] == index[node]:
      component = []
      while True:
        other = stack.pop()
        on_stack.discard(other)
        component.append(other)
        if other == node:
          break
      if len(component) > 1:
        found.append(sorted(component))

  for node in sorted(graph):
    if node not in index:
      visit(node)
  return found


def test_the_import_graph_has_no_cycle():
  graph = import_graph()
  assert len(graph) > 50
  assert cycles(graph) == []


def test_no_two_top_level_folders_import_each_other_and_the_pipeline_knows_no_model():
  pairs = {}
  for module, imported in import_graph().items():
    for other in imported:
      pair = (module.split(".")[0], other.split(".")[0])
      if pair[0] != pair[1]:
        pairs.setdefault(pair, []).append(f"{module} -> {other}")
  for (a, b), examples in pairs.items():
    assert (b, a) not in pairs, (
      f"{a} and {b} import each other: {examples[:3]} and {pairs[(b, a)][:3]}"
    )
  assert ("pipeline", "training") not in pairs, pairs.get(("pipeline", "training"))


def test_the_graph_sees_function_local_imports():
  graph = {"a": {"b"}, "b": {"a"}, "c": set()}
  assert cycles(graph) == [["a", "b"]]
  # training.model.models imports the kernel inside a function only.
  assert "training.model.kernels.onednn" in import_graph()["training.model.models"]


def test_a_finished_run_is_loaded_and_used_without_the_training_loop():
  probe = """
import sys
from training.bookkeeping.trained_run import load_run
from training.tools import export, exported, inference  # (one command module: commands share flag names)
run = load_run("tests/data/workdirs_2026_12/classifier")
print(next(inference.predict(run, ["good cat sat"]))["label"])
exported.export(run, sys.argv[1])
exported.load_exported(sys.argv[1])
lm = load_run("tests/data/workdirs_2026_12/lm")
print(inference.sample(lm, "The", 3, seed=0))
loop = sorted(name for name in sys.modules if name.startswith("training.loop"))
assert not loop, loop
"""
  out = os.path.join(ROOT, ".test-layout-export.msgpack")
  try:
    result = subprocess.run(
      [sys.executable, "-c", probe, out], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
  finally:
    if os.path.exists(out):
      os.remove(out)
  assert result.returncode == 0, result.stderr[-3000:]


COMMANDS = (
  "training.train",
  "training.tools.generate",
  "training.tools.predict",
  "training.tools.export",
  "training.tools.ensemble",
  "training.tools.plot",
  "pipeline.prepare",
  "launch.local",
)


# Modules of an optional extra, and the package they need: imported where it is installed.
EXTRAS = {"pipeline.beam_prepare": "apache_beam"}


def test_every_module_imports():
  """Every module of the packages, on this interpreter and its jax: the libraries in one process,
  each command (they define flags of the same names) in one of its own."""
  missing = {m for m, package in EXTRAS.items() if importlib.util.find_spec(package) is None}
  libraries = sorted(
    m for m in modules() if m not in COMMANDS and m not in missing and not m.endswith("__main__")
  )
  for group in [libraries, *([command] for command in COMMANDS)]:
    probe = "import importlib, sys\nfor name in sys.argv[1:]:\n  importlib.import_module(name)\n"
    result = subprocess.run(
      [sys.executable, "-c", probe, *group], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, (group, result.stderr[-3000:])
