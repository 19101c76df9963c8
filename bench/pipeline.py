r"""The input pipeline alone, for each batching mode and worker count, beside the trainer.

  python -m bench.pipeline [--flagfile=configs/imdb_bucket.flags] [--batches=60] [--train_steps=24]

Prepares the flag file's training data once (`pipeline.prepare`, timed), then builds the
trainer's own pipeline (`training.loop.data.prepare_data`) on it, reads `--batches` training batches
per mode and worker count, and reports the start-up time (the index read, the first epoch
planned, the workers started) and then examples/s and real tokens/s. Then runs the trainer
itself on the same prepared data for `--train_steps` steps per mode and reports the median of
its per-step real tokens/s (the median leaves out steps that compile a new batch shape). Prints
a Markdown table.
"""

import argparse
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODES = ("pad", "bucket", "pack")


def read_flagfile(path: str) -> dict:
  values = {}
  with open(path) as f:
    for line in f:
      line = line.strip()
      if line.startswith("--"):
        name, _, value = line[2:].partition("=")
        values[name] = value
  return values


def config_from(flag_values: dict, **overrides):
  """A trainer Config from a flag file's values (scalar flags only, as in configs/)."""
  from training.config import Config

  defaults = Config()
  values = {}
  for name, value in flag_values.items():
    kind = type(getattr(defaults, name))
    values[name] = (value.lower() == "true") if kind is bool else kind(value)
  return dataclasses.replace(defaults, **{**values, **overrides})


def pipeline_rate(config, workdir: str, batches: int) -> dict:
  from training.loop.data import prepare_data

  os.makedirs(workdir, exist_ok=True)
  begin = time.perf_counter()
  iterator = prepare_data(config, workdir).train_batches(0)  # reads, tokenises
  next(iterator)  # plans the first epoch, starts the workers
  start, examples, tokens = time.perf_counter(), 0, 0
  startup_seconds = start - begin
  for _ in range(batches):
    batch = next(iterator)
    examples += int(batch["example_mask"].sum())
    tokens += int(batch["mask"].sum())
  seconds = time.perf_counter() - start
  return {
    "startup_seconds": startup_seconds,
    "examples_per_sec": examples / seconds,
    "tokens_per_sec": tokens / seconds,
  }


def prepare_once(flag_values: dict, out: str) -> float:
  """Prepares the flag file's training data into `out`; returns the seconds it took."""
  begin = time.perf_counter()
  command = [
    sys.executable,
    "-m",
    "pipeline.prepare",
    f"--data={flag_values['train_data']}",
    f"--out={out}",
    f"--tokenizer={flag_values.get('tokenizer', 'char')}",
    f"--vocab_size={flag_values.get('vocab_size', 0)}",
  ]
  if flag_values.get("task") == "classify":
    command.append("--labels")
  subprocess.run(command, cwd=ROOT, check=True, capture_output=True)
  return time.perf_counter() - begin


def trainer_rate(flagfile: str, train_data: str, batching: str, steps: int, workdir: str) -> float:
  command = [
    sys.executable,
    "-m",
    "training.train",
    f"--flagfile={flagfile}",
    f"--workdir={workdir}",
    f"--train_data={train_data}",
    "--eval_data=",
    f"--batching={batching}",
    f"--num_steps={steps}",
    "--log_every=1",
    "--eval_every=0",
    "--checkpoint_every=100000",
  ]
  result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
  if result.returncode != 0:
    raise RuntimeError(result.stderr[-3000:])
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f if '"train"' in line]
  return statistics.median(row["tokens_per_sec"] for row in rows[1:])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--flagfile", default="configs/imdb_bucket.flags")
  parser.add_argument("--batches", type=int, default=60)
  parser.add_argument("--workers", default="1,2,4")
  parser.add_argument("--train_steps", type=int, default=24)
  args = parser.parse_args()
  sys.path.insert(0, ROOT)
  os.chdir(ROOT)
  flag_values = read_flagfile(args.flagfile)
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    prepared = f"prepared:{os.path.join(tmp, 'prepared')}"
    prepare_seconds = prepare_once(flag_values, prepared.split(":", 1)[1])
    for mode in MODES:
      train_rate = trainer_rate(
        args.flagfile, prepared, mode, args.train_steps, os.path.join(tmp, f"train_{mode}")
      )
      for workers in map(int, args.workers.split(",")):
        config = config_from(
          flag_values, batching=mode, data_workers=workers, train_data=prepared, eval_data=""
        )
        rate = pipeline_rate(config, os.path.join(tmp, f"{mode}_{workers}"), args.batches)
        rows.append(
          {"batching": mode, "workers": workers, **rate, "trainer_tokens_per_sec": train_rate}
        )
  print(
    f"{args.flagfile}: {flag_values.get('train_data')}, batch {flag_values.get('batch_size')},"
    f" --seq_len={flag_values.get('seq_len')}; {os.cpu_count()} CPU cores, {platform.machine()};"
    f" prepared once in {prepare_seconds:.1f} s\n"
  )
  print(
    "| batching | workers | start-up (s) | pipeline examples/s | pipeline tokens/s | trainer tokens/s | margin |"
  )
  print("| --- | --- | --- | --- | --- | --- | --- |")
  for r in rows:
    print(
      f"| {r['batching']} | {r['workers']} | {r['startup_seconds']:.1f} | {r['examples_per_sec']:,.0f} |"
      f" {r['tokens_per_sec']:,.0f} |"
      f" {r['trainer_tokens_per_sec']:,.0f} | {r['tokens_per_sec'] / r['trainer_tokens_per_sec']:.0f}x |"
    )


if __name__ == "__main__":
  main()
