"""A prepare killed half way, as a lost machine would kill it: what the local driver's and the
Beam driver's tests of crash safety share (`test_prepared`, `test_beam_prepare`)."""

import os
import signal
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORDS = "the cat sat on a mat while dogs ran far away from home and sang".split()


def write_corpus(path, lines: int) -> str:
  """A `lines:` file of `lines` lines of 12 words each."""
  rng = np.random.default_rng(0)
  words = rng.choice(WORDS, size=(lines, 12))
  path.write_text("\n".join(" ".join(row) for row in words) + "\n")
  return str(path)


def prepare_command(corpus, out, *flags: str) -> list[str]:
  return [
    sys.executable,
    "-m",
    "pipeline.prepare",
    f"--data=lines:{corpus}",
    f"--out={out}",
    "--tokenizer=word",
    "--num_workers=2",
    *flags,
  ]


def temporaries(directory) -> list[str]:
  """The temporaries of prepares into `directory/out`: a running one's, or a dead one's."""
  return [name for name in os.listdir(directory) if name.startswith(".out.tmp-")]


def kill_while_writing(command: list[str], directory, timeout: float) -> int:
  """Starts `command` (a prepare into `directory/out`) and, as soon as its temporary appears,
  SIGKILLs it with its workers (its process group); returns its process id."""
  killed = subprocess.Popen(
    command,
    cwd=ROOT,
    start_new_session=True,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
  )
  deadline = time.monotonic() + timeout
  while not temporaries(directory):  # the write pass has begun
    assert killed.poll() is None and time.monotonic() < deadline, "the write pass never began"
    time.sleep(0.01)
  os.killpg(killed.pid, signal.SIGKILL)
  killed.wait()
  return killed.pid
