r"""Starts an N-process JAX job on this machine: `python -m launch.local -- COMMAND...`.

  python -m launch.local --num_processes=2 --devices_per_process=2 -- \
      python -m training.train --workdir=runs/local2x2

Each process gets `--coordinator_address=127.0.0.1:PORT --num_processes=N --process_id=I`
appended to COMMAND (a free port, new for every launch) and D CPU devices
(`--xla_force_host_platform_device_count`); collectives go over gloo. Output is streamed with a
`[I]` prefix. When one process fails the others are stopped and its exit status is returned;
SIGTERM and Ctrl-C are passed on to every process (each then saves and exits).
"""

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading

from launch.cores import THREADS_ENV, usable_cores


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def process_commands(command: list[str], num_processes: int, port: int) -> list[list[str]]:
  return [
    command
    + [
      f"--coordinator_address=127.0.0.1:{port}",
      f"--num_processes={num_processes}",
      f"--process_id={index}",
    ]
    for index in range(num_processes)
  ]


def process_env(devices_per_process: int, base: dict, num_processes: int = 1) -> dict:
  env = dict(base, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
  other_xla_flags = " ".join(
    f
    for f in env.get("XLA_FLAGS", "").split()
    if not f.startswith("--xla_force_host_platform_device_count")
  )
  env["XLA_FLAGS"] = (
    f"{other_xla_flags} --xla_force_host_platform_device_count={devices_per_process}".strip()
  )
  if num_processes > 1:
    # The processes share this machine's cores: oneDNN's LSTM (training.model.kernels) would otherwise
    # start a thread per core in every one of them. The user's own setting stands.
    env.setdefault(THREADS_ENV, str(max(1, usable_cores() // num_processes)))
  return env


def _stream(index: int, pipe, out) -> None:
  for line in iter(pipe.readline, ""):
    out.write(f"[{index}] {line}")
    out.flush()


def launch(command: list[str], num_processes: int, devices_per_process: int) -> int:
  """Runs the job; returns 0, or the exit status of the first process that failed."""
  env = process_env(devices_per_process, dict(os.environ), num_processes)
  processes = [
    subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for cmd in process_commands(command, num_processes, free_port())
  ]
  streams = [
    threading.Thread(target=_stream, args=(i, p.stdout, sys.stdout), daemon=True)
    for i, p in enumerate(processes)
  ]
  for thread in streams:
    thread.start()

  def forward(signum, frame):
    del frame
    for process in processes:
      if process.poll() is None:
        process.send_signal(signum)

  previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
  status = 0
  try:
    remaining = set(range(num_processes))
    while remaining:
      for index in sorted(remaining):
        try:
          code = processes[index].wait(timeout=0.2)
        except subprocess.TimeoutExpired:
          continue
        remaining.discard(index)
        if code != 0 and status == 0:
          status = code if code > 0 else 128 - code
          print(
            f"[launch] process {index} exited with status {code}; stopping the others",
            file=sys.stderr,
          )
          for other in processes:
            if other.poll() is None:
              other.kill()
  finally:
    for sig, handler in previous.items():
      signal.signal(sig, handler)
    for thread in streams:
      thread.join(timeout=5)
  return status


def main(argv: list[str]) -> int:
  # argparse, not absl flags: the launcher's flags must not join the global flag registry of
  # the program it starts (which has its own --num_processes).
  parser = argparse.ArgumentParser(
    prog="python -m launch.local", description=__doc__.splitlines()[0]
  )
  parser.add_argument("--num_processes", type=int, default=2, help="processes to start")
  parser.add_argument("--devices_per_process", type=int, default=1, help="CPU devices per process")
  parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
  args = parser.parse_args(argv)
  command = args.command[1:] if args.command[:1] == ["--"] else args.command
  if not command:
    parser.error("give the command to run after --, e.g. -- python -m training.train --workdir=DIR")
  if args.num_processes < 1 or args.devices_per_process < 1:
    parser.error("--num_processes and --devices_per_process must be positive")
  return launch(command, args.num_processes, args.devices_per_process)


def run_main():
  """Console entry point (`rnn-launch-local`)."""
  sys.exit(main(sys.argv[1:]))


if __name__ == "__main__":
  run_main()
