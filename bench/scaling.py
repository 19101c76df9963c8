r"""Data-parallel scaling on this machine: the real trainer on 1, 2 and 4 CPU devices in one
process, and 4 devices as 1 process x 4 or 2 processes x 2 (jax.distributed over gloo).

  python -m bench.scaling [--steps=80] [--json=scaling.json]

Throughput is read from the trainer's own `metrics.jsonl`, leaving out the first logging window
(compilation). Prints a Markdown table.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile

from launch import local

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = [
  "--task=lm",
  "--model=lstm",
  "--hidden_size=256",
  "--embed_size=64",
  "--batch_size=64",
  "--seq_len=64",
  "--eval_every=0",
  "--eval_steps=1",
  "--checkpoint_every=100000",
]
LAYOUTS = [  # (name, processes, devices per process, parallelism)
  ("1 process x 1 device", 1, 1, "jit"),
  ("1 process x 2 devices", 1, 2, "jit"),
  ("1 process x 4 devices", 1, 4, "jit"),
  ("1 process x 4 devices, shard_map", 1, 4, "shard_map"),
  ("2 processes x 2 devices", 2, 2, "jit"),
]


def measure(processes: int, devices: int, parallelism: str, steps: int, workdir: str) -> dict:
  log_every = steps // 4
  trainer = [
    sys.executable,
    "-m",
    "training.train",
    f"--workdir={workdir}",
    *MODEL,
    f"--num_steps={steps}",
    f"--log_every={log_every}",
    f"--parallelism={parallelism}",
  ]
  if processes == 1:
    env = local.process_env(devices, dict(os.environ))
    command = trainer
  else:
    env = dict(os.environ)
    command = [
      sys.executable,
      "-m",
      "launch.local",
      f"--num_processes={processes}",
      f"--devices_per_process={devices}",
      "--",
      *trainer,
    ]
  result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
  if result.returncode != 0:
    raise RuntimeError(result.stdout[-2000:] + result.stderr[-2000:])
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f if '"train"' in line]
  steady = rows[1:]  # the first window includes compilation
  tokens_per_sec = sum(r["tokens_per_sec"] for r in steady) / len(steady)
  tokens_per_step = 64 * 64
  return {"tokens_per_sec": tokens_per_sec, "step_ms": 1000 * tokens_per_step / tokens_per_sec}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=80)
  parser.add_argument("--json", default="")
  args = parser.parse_args()
  results = []
  with tempfile.TemporaryDirectory() as tmp:
    for index, (name, processes, devices, parallelism) in enumerate(LAYOUTS):
      figures = measure(processes, devices, parallelism, args.steps, os.path.join(tmp, str(index)))
      results.append(
        {
          "layout": name,
          "processes": processes,
          "devices_per_process": devices,
          "parallelism": parallelism,
          **figures,
        }
      )
  base = results[0]["tokens_per_sec"]
  print(
    f"LSTM 256 units, batch 64 x 64 tokens, {args.steps} steps; {os.cpu_count()} CPU cores,"
    f" {platform.machine()}\n"
  )
  print("| layout | step (ms) | tokens/s | vs 1 device |")
  print("| --- | --- | --- | --- |")
  for r in results:
    print(
      f"| {r['layout']} | {r['step_ms']:.1f} | {r['tokens_per_sec']:,.0f} | {r['tokens_per_sec'] / base:.2f}x |"
    )
  if args.json:
    with open(args.json, "w") as f:
      json.dump(results, f, indent=2)


if __name__ == "__main__":
  main()
