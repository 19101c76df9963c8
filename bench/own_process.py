"""A benchmark side in a fresh Python process of its own, and the protocol between the two: the
request as JSON on the child's stdin, its figures as JSON on the last line of its stdout (what
the side prints before, and its logs on stderr, are not part of the answer).

`bench.torch_peer` runs PyTorch so (its OpenMP team and JAX's thread pools would share the
cores), and `bench.project_side` the trainer and its bare step (a process's earlier work moved
the next measurement).
"""

import json
import os
import subprocess
import sys
from collections.abc import Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def call(module: str, request: dict, what: str, env: dict | None = None, echo_stderr: bool = False):
  """`python -m module` from the repo root with `request`; its answer. `what` names the side in
  the error raised when the child fails (with the end of its stderr); `echo_stderr` passes the
  child's stderr on (e.g. how to install PyTorch)."""
  result = subprocess.run(
    [sys.executable, "-m", module],
    input=json.dumps(request),
    text=True,
    capture_output=True,
    env=env,
    cwd=ROOT,
  )
  if result.returncode != 0:
    raise RuntimeError(f"{what} failed:\n{result.stderr[-3000:]}")
  if echo_stderr:
    print(result.stderr, end="", file=sys.stderr)
  return json.loads(result.stdout.splitlines()[-1])


def serve(measure: Callable[[dict], object]) -> None:
  """The child's side of `call`: the request from stdin, `measure`'s answer to stdout."""
  print(json.dumps(measure(json.load(sys.stdin))))
