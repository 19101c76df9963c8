"""The README's commands, as written: the two quickstart commands on a fresh copy of the
repository, and every other command it shows checked against the code (modules, flags, files)."""

import glob
import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib

import pytest

from tests.readme_commands import PAGES, ROOT, after_setup, all_commands, quickstart

SHARED = os.path.join(os.path.dirname(ROOT), "shared")


def fresh_checkout(destination) -> str:
  """What a clone of this working tree would hold (tracked and new, not ignored, files)."""
  if not os.path.isdir(os.path.join(ROOT, ".git")):
    pytest.skip("not a git checkout")
  listed = (
    subprocess.run(
      ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
      cwd=ROOT,
      capture_output=True,
      check=True,
    )
    .stdout.decode()
    .split("\0")
  )
  for name in filter(None, listed):
    source = os.path.join(ROOT, name)
    if os.path.isfile(source):
      os.makedirs(os.path.join(destination, os.path.dirname(name)), exist_ok=True)
      shutil.copy2(source, os.path.join(destination, name))
  return str(destination)


def run_in(checkout: str, argv: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
  assert argv[:2] == ["python", "-m"], argv
  # The suite's interpreter stands in for the venv the command's set-up part would make.
  env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "XLA_FLAGS")}
  return subprocess.run(
    [sys.executable, *argv[1:]],
    cwd=checkout,
    capture_output=True,
    text=True,
    timeout=timeout,
    env=env,
  )


@pytest.mark.slow
def test_the_first_command_trains_the_default_job_in_a_fresh_checkout(tmp_path):
  checkout = fresh_checkout(tmp_path / "repo")
  argv = after_setup(quickstart()[0])
  workdir = next(arg.split("=", 1)[1] for arg in argv if arg.startswith("--workdir="))
  assert not os.path.isabs(workdir)  # the case of issue 8: a relative workdir
  result = run_in(checkout, argv)
  output = result.stdout + result.stderr
  assert result.returncode == 0, output[-3000:]
  assert "Traceback" not in output and "error" not in output.lower().replace("errors", "")
  assert os.path.isfile(os.path.join(checkout, workdir, "summary.json"))
  assert os.listdir(os.path.join(checkout, workdir, "checkpoints"))


def test_the_second_command_installs_the_test_extra_and_runs_what_ci_runs(tmp_path):
  command = quickstart()[1]
  with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
    extras = tomllib.load(f)["project"]["optional-dependencies"]
  assert 'pip install -e ".[test]"' in command and "pytest" in extras["test"][0]
  argv = after_setup(command)
  with open(os.path.join(ROOT, ".ci", "run")) as f:
    assert shlex.join(argv) in f.read()  # CI runs the README's test command
  # Running the suite inside itself would recurse: collect it in the fresh checkout instead.
  result = run_in(fresh_checkout(tmp_path / "repo"), argv + ["--collect-only", "-q"], timeout=300)
  assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
  assert " tests collected" in result.stdout or "tests collected" in result.stdout


def _console_scripts() -> dict[str, str]:
  """Console script -> the module it runs (pyproject.toml's [project.scripts])."""
  with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
    return {
      name: target.split(":")[0] for name, target in tomllib.load(f)["project"]["scripts"].items()
    }


_FLAGS_OF = {}


def _flags_of(module: str) -> set[str]:
  """The flags `python -m MODULE` defines (in a process of its own: commands share flag names)."""
  if module not in _FLAGS_OF:
    listing = subprocess.run(
      [
        sys.executable,
        "-c",
        f"import {module}; from absl import flags; print(chr(10).join(flags.FLAGS))",
      ],
      cwd=ROOT,
      capture_output=True,
      text=True,
      check=True,
    )
    _FLAGS_OF[module] = set(listing.stdout.split())
  return _FLAGS_OF[module]


def _as_python_module(argv: list[str], scripts: dict[str, str]) -> list[str]:
  """`rnn-NAME ARGS` as the `python -m MODULE ARGS` it runs; anything else as it is."""
  if argv and argv[0] in scripts:
    return ["python", "-m", scripts[argv[0]], *argv[1:]]
  return argv


@pytest.mark.parametrize("page", [os.path.relpath(path, ROOT) for path in PAGES])
def test_every_command_a_page_shows_names_real_modules_flags_and_files(page):
  """Each command of README.md and docs/*.md, as written from the repository root: its module
  or console script exists, its flags are the command's own, its files are in the repository
  (or in ../shared when that is there), and every prepared dataset it reads is made by a
  `prepare` command above it on the same page."""
  scripts = _console_scripts()
  prepared_dirs = set()  # the --out of each prepare shown so far
  for command in all_commands(os.path.join(ROOT, page)):
    for part in re.split(r" && | \| ", command):
      argv = shlex.split(part)
      while argv and "=" in argv[0] and not argv[0].startswith("-"):
        argv = argv[1:]  # leading VAR=value assignments
      argv = _as_python_module(argv, scripts)
      if "--" in argv and argv[:3] == ["python", "-m", "launch.local"]:
        # The command the launcher starts
        argv = _as_python_module(argv[argv.index("--") + 1 :], scripts)
      if argv[:2] == ["python", "-m"]:
        module = argv[2]
        if module.split(".")[0] in ("training", "pipeline", "launch", "bench"):
          assert os.path.isfile(os.path.join(ROOT, *module.split(".")) + ".py"), (
            f"{command}: no module {module}"
          )
        else:
          assert importlib.util.find_spec(module), f"{command}: {module} is not installed"
        values = dict(arg[2:].partition("=")[::2] for arg in argv[3:] if arg.startswith("--"))
        if module in scripts.values() and module != "training.train":
          for name in values:
            assert name in _flags_of(module), f"{command}: unknown flag --{name}"
        if module == "pipeline.prepare":
          if "vocab_from" in values:
            assert values["vocab_from"] in prepared_dirs, (
              f"{command}: --vocab_from is prepared by no command above it"
            )
          prepared_dirs.add(values.get("out"))
        if module == "training.train":
          for name in values:  # (--flagfile is absl's parser's own, checked below)
            assert name in _flags_of("training.train") or name == "flagfile", (
              f"{command}: unknown flag --{name}"
            )
          for name, value in values.items():
            if name == "flagfile":
              assert os.path.isfile(os.path.join(ROOT, value)), f"{command}: no {value}"
            for spec in (
              value.split(",") if name in ("train_data", "eval_data", "test_data") else ()
            ):
              path = spec.split(":", 1)[-1].split("[")[0]
              if path.startswith("../shared/") and not os.path.isdir(SHARED):
                continue
              if spec.split(":")[0] in ("text", "lines", "jsonl", "csv", "tsv", "parquet"):
                assert os.path.isfile(os.path.join(ROOT, path)), (
                  f"{command}: no file {path} (relative to the repo root)"
                )
              if spec.split(":")[0] == "prepared":
                assert path in prepared_dirs, (
                  f"{command}: {path} is prepared by no command above it"
                )
      elif argv and argv[0] in ("sbatch", "kubectl"):
        path = argv[-1]
        assert os.path.isfile(os.path.join(ROOT, path)), f"{command}: no {path}"
      elif argv and argv[0].startswith("./"):
        assert os.access(os.path.join(ROOT, argv[0]), os.X_OK), (
          f"{command}: {argv[0]} is not executable"
        )


def test_the_pages_show_commands_and_the_readme_is_short():
  assert sum(len(all_commands(path)) for path in PAGES) >= 40
  with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
    readme = f.read()
  assert len(readme.splitlines()) <= 300
  # Documentation, not a log: history stays in git.
  for path in PAGES:
    with open(path, encoding="utf-8") as f:
      text = f.read()
    commit = re.search(r"\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*[0-9])[0-9a-f]{7,40}\b", text)
    assert not commit, f"{path}: a commit hash, {commit and commit.group()}"
    assert not re.search(r"\b(later|this|previous) session\b", text), f"{path}: a session diary"


def test_the_export_snippet_loads_a_model_without_the_trainer_and_agrees_with_predict(tmp_path):
  import ast
  import dataclasses

  from tests.readme_commands import python_blocks
  from training.bookkeeping.trained_run import load_run
  from training.config import Config
  from training.loop.trainer import train_and_evaluate
  from training.tools.exported import export
  from training.tools.inference import predict

  (snippet,) = [
    block for path in PAGES for block in python_blocks(path) if "msgpack_restore" in block
  ]
  config = Config(
    task="classify",
    tokenizer="word",
    hidden_size=16,
    embed_size=8,
    head_widths=(8,),
    batch_size=8,
    seq_len=32,
    num_steps=20,
    log_every=10,
    eval_every=0,
    checkpoint_every=20,
    train_data=f"csv:{ROOT}/docs/examples/reviews.csv[:75%]",
    eval_data=f"csv:{ROOT}/docs/examples/reviews.csv[75%:]",
  )
  train_and_evaluate(dataclasses.replace(config), str(tmp_path / "run"))
  run = load_run(str(tmp_path / "run"))
  export(run, str(tmp_path / "model.msgpack"))
  snippet = snippet.replace("runs/reviews_csv.msgpack", str(tmp_path / "model.msgpack"))
  assert str(tmp_path) in snippet
  assert len(snippet.strip().splitlines()) <= 12  # "a ten-line snippet"
  result = subprocess.run(
    [sys.executable, "-c", snippet], cwd=ROOT, capture_output=True, text=True, timeout=300
  )
  assert result.returncode == 0, result.stderr[-2000:]
  printed = ast.literal_eval(result.stdout.strip().splitlines()[-1])
  expected = next(predict(run, ["A warm and clever film."]))["probabilities"]
  assert printed.keys() == expected.keys() == {"neg", "pos"}
  for name in expected:
    assert printed[name] == pytest.approx(expected[name], abs=1e-5)


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "configs", "*.flags"))))
def test_every_config_names_known_flags_and_validates(path):
  """Each flag of the file is one of the trainer's and parses; the Config they make validates.
  (Parsed flag by flag: the global FLAGS also hold other commands' required flags.)"""
  from absl import flags

  import training.train  # noqa: F401  (defines the trainer's flags)
  from training.config import Config, validate

  values = {}
  for arg in flags.FLAGS.read_flags_from_files([f"--flagfile={path}"], force_gnu=True):
    name, has_value, value = arg.lstrip("-").partition("=")
    if not has_value:
      name, value = (
        (name[2:], "false") if name.startswith("no") and name[2:] in flags.FLAGS else (name, "true")
      )
    assert name in flags.FLAGS, f"{path}: unknown flag --{name}"
    values[name] = flags.FLAGS[name].parser.parse(value)
  fields = {name: value for name, value in values.items() if name in Config.__dataclass_fields__}
  for name in ("head_widths", "bucket_boundaries"):
    if name in fields:
      fields[name] = tuple(int(v) for v in fields[name])
  validate(Config(**fields))
