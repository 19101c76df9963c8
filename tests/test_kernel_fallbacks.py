"""When oneDNN's LSTM cannot run, `--recurrent_kernel=auto` trains on the scan with one log line
saying why, and `--recurrent_kernel=onednn` refuses in one line with the reason: no C++ compiler,
a compile that fails, the oneDNN wheel missing from the environment. Each is made for real in a
trainer process of its own (an empty build cache, a PATH without compilers, a compiler that
fails, a virtual environment without the wheel), since a process builds the kernel once. And
the build cache is replaced atomically: a build killed half way leaves nothing a later process
would load, and a later build removes its leftovers."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.promises import needs_onednn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Large enough that `auto` would take the kernel (16 rows x 4 x 128^2 = MIN_STEP_WORK).
KERNEL_SIZED = [
  "--hidden_size=128",
  "--embed_size=8",
  "--batch_size=16",
  "--seq_len=8",
  "--num_steps=2",
  "--eval_every=0",
  "--log_every=1",
]
pytestmark = [
  pytest.mark.slow,
  needs_onednn,
]  # (where the kernel is not promised, there is nothing to fall back from)


def train(
  workdir, env: dict, kernel: str, python: str = sys.executable
) -> subprocess.CompletedProcess:
  return subprocess.run(
    [
      python,
      "-m",
      "training.train",
      f"--workdir={workdir}",
      f"--recurrent_kernel={kernel}",
      *KERNEL_SIZED,
    ],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )


def environment(tmp_path, **changes) -> dict:
  """This environment with an empty kernel build cache (so that the process must build) and `changes`."""
  env = {**os.environ, "RNN_KERNEL_CACHE": str(tmp_path / "kernel-cache"), **changes}
  return {name: value for name, value in env.items() if value is not None}


def check_fallback_and_refusal(
  tmp_path, env: dict, reason: str, python: str = sys.executable
) -> None:
  auto = train(tmp_path / "auto", env, "auto", python)
  assert auto.returncode == 0, auto.stderr[-3000:]
  lines = [line for line in auto.stderr.splitlines() if "oneDNN" in line]
  assert (
    len(lines) == 1
    and "Time loop of encoder/layer_0: the JAX scan (oneDNN's LSTM not used: " in lines[0]
  ), lines
  assert reason in lines[0], lines
  with open(tmp_path / "auto" / "summary.json") as f:
    time_loop = json.load(f)["time_loop"]
  assert (
    time_loop["layers"] == {"encoder/layer_0": "scan"} and reason in time_loop["why_not_onednn"]
  )
  refused = train(tmp_path / "refused", env, "onednn", python)
  assert refused.returncode == 2, refused.stderr[-3000:]
  last = refused.stderr.strip().splitlines()[-1]
  assert (
    last.startswith("error: --recurrent_kernel=onednn: not available here: ") and reason in last
  ), last
  assert "Traceback" not in refused.stderr


def test_no_compiler(tmp_path):
  # Only the interpreter's own folder on PATH: no g++, c++ or clang++.
  env = environment(tmp_path, PATH=os.path.dirname(sys.executable), CXX=None)
  check_fallback_and_refusal(tmp_path, env, "no C++ compiler (g++, c++ or clang++; or set CXX)")


def test_a_compile_that_fails(tmp_path):
  compiler = tmp_path / "broken-c++"
  compiler.write_text(
    "#!/bin/sh\necho 'In file included from onednn_lstm.cc:3:' >&2\n"
    "echo 'onednn_lstm.cc:12:10: fatal error: oneapi/dnnl/dnnl.hpp: No such file' >&2\n"
    "echo 'compilation terminated.' >&2\nexit 1\n"
  )
  compiler.chmod(0o755)
  env = environment(tmp_path, CXX=str(compiler))
  check_fallback_and_refusal(
    tmp_path,
    env,
    f"compiling onednn_lstm.cc with {compiler} failed: onednn_lstm.cc:12:10:"
    " fatal error: oneapi/dnnl/dnnl.hpp: No such file",
  )
  # The compiler's whole output is kept beside the cache, and nothing that could be loaded.
  cache = os.listdir(tmp_path / "kernel-cache")
  assert [name for name in cache if name.endswith(".log")] and not [
    name for name in cache if name.endswith(".so")
  ]


def test_onednn_missing_from_the_environment(tmp_path):
  """A virtual environment that sees this one's packages but not the oneDNN wheel's library and
  headers (installed under the environment's prefix, where the kernel looks)."""
  venv = tmp_path / "venv"
  subprocess.run(
    [sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120
  )
  site = subprocess.run(
    [
      str(venv / "bin" / "python"),
      "-c",
      "import sysconfig; print(sysconfig.get_paths()['purelib'])",
    ],
    capture_output=True,
    text=True,
    check=True,
  ).stdout.strip()
  ours = [path for path in sys.path if path.endswith("site-packages")]
  with open(os.path.join(site, "this_projects_packages.pth"), "w") as f:
    f.write("\n".join([ROOT, *ours]) + "\n")
  env = environment(tmp_path, DNNL_ROOT=None)
  check_fallback_and_refusal(
    tmp_path,
    env,
    f"oneDNN is not installed in this environment ({venv}): install the"
    " onednn-cpu-gomp and onednn-devel-cpu-gomp wheels",
    python=str(venv / "bin" / "python"),
  )


def test_a_build_killed_half_way_leaves_nothing_a_later_process_loads(tmp_path):
  # A compiler that writes half a library and hangs: the process building is killed meanwhile.
  compiler = tmp_path / "slow-c++"
  compiler.write_text(
    '#!/bin/sh\nwhile [ "$1" != "-o" ]; do shift; done\nprintf "half a library" > "$2"\nsleep 120\n'
  )
  compiler.chmod(0o755)
  cache = tmp_path / "kernel-cache"
  probe = [
    sys.executable,
    "-c",
    "from training.model.kernels import onednn; print(onednn.available(), onednn.why_unavailable())",
  ]
  building = subprocess.Popen(
    probe,
    cwd=ROOT,
    env=environment(tmp_path, CXX=str(compiler)),
    start_new_session=True,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
  )
  deadline = time.monotonic() + 120
  while not (cache.exists() and [n for n in os.listdir(cache) if n.endswith(".tmp")]):
    assert building.poll() is None and time.monotonic() < deadline, "the build never started"
    time.sleep(0.05)
  os.killpg(building.pid, signal.SIGKILL)
  building.wait()
  left = os.listdir(cache)
  # Nothing at the library's own name
  assert len(left) == 1 and left[0].endswith(f".{building.pid}.tmp"), left
  # A later process with a working compiler builds, loads and runs the kernel, and removes the
  # dead build's partial file.
  later = subprocess.run(
    probe, cwd=ROOT, env=environment(tmp_path), capture_output=True, text=True, timeout=300
  )
  assert later.stdout.split() == ["True", "None"], later.stderr[-3000:]
  left = os.listdir(cache)
  assert len(left) == 1 and left[0].endswith(".so"), left
