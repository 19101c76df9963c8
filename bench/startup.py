"""Start-up time and peak memory of a training process against corpus size: a prepared dataset
(`pipeline.prepare`) against the same JSON lines given directly.

  python -m bench.startup --workdir=/tmp/startup --sizes_mb=20,132,1024

For each size it writes a corpus of IMDB review text (JSON lines, from `../shared/data/imdb`,
repeated past 132 MB), prepares it once with `pipeline.prepare` (word tokens, 20,000 of them),
and starts a word-level language model (LSTM 256) on it: on the prepared dataset, and (up to
`--direct_up_to_mb`) on the JSON lines given directly, which the trainer's first start prepares
into its workdir. For each it measures the seconds from the process's start to its first
training step (the moment the step's row reaches `metrics.jsonl`) and the peak resident memory of
the process (`ru_maxrss`). The corpora, the prepared datasets (with the figures of their prepare
job) and the runs stay in `--workdir`, reused by a later call; the table goes to `docs/startup.md`.
"""

import argparse
import gzip
import json
import os
import subprocess
import sys
import time

from bench.runs import ROOT, machine, write_table

IMDB = os.path.join(ROOT, "..", "shared", "data", "imdb")
MODEL_FLAGS = [
  "--task=lm",
  "--model=lstm",
  "--hidden_size=256",
  "--embed_size=256",
  "--batch_size=32",
  "--seq_len=64",
  "--num_steps=1",
  "--log_every=1",
  "--eval_every=0",
  "--checkpoint_every=1000",
  "--async_checkpointing=false",
]


def write_corpus(path: str, megabytes: int) -> int:
  """JSON lines of IMDB reviews (unsup, train, test, then again) until `megabytes` MiB of text."""
  if os.path.exists(path):
    return os.path.getsize(path)
  target, written = megabytes << 20, 0
  with open(path + ".tmp", "w", encoding="utf-8") as out:
    while written < target:
      for name in ("unsup", "train", "test"):
        with gzip.open(os.path.join(IMDB, f"{name}.jsonl.gz"), "rt", encoding="utf-8") as f:
          for line in f:
            text = json.loads(line)["text"]
            out.write(json.dumps({"text": text}) + "\n")
            written += len(text.encode("utf-8"))
            if written >= target:
              break
        if written >= target:
          break
  os.replace(path + ".tmp", path)
  return os.path.getsize(path)


def measured(command: list[str], log: str, first_row_of: str | None = None) -> dict:
  """Runs `command`; returns its wall seconds, peak RSS (MiB) and, with `first_row_of`, the
  seconds until that metrics file held a row."""
  start = time.perf_counter()
  with open(log, "w") as out:
    process = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
  first_row = None
  while True:
    if (
      first_row is None
      and first_row_of
      and os.path.exists(first_row_of)
      and os.path.getsize(first_row_of) > 0
    ):
      first_row = time.perf_counter() - start
    pid, status, usage = os.wait4(process.pid, os.WNOHANG)
    if pid:
      break
    time.sleep(0.02)
  if os.waitstatus_to_exitcode(status) != 0:
    raise RuntimeError(f"{' '.join(command)} failed; see {log}")
  return {
    "seconds": time.perf_counter() - start,
    "first_step_s": first_row,
    "peak_rss_mib": usage.ru_maxrss / 1024,
  }


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--sizes_mb", default="20,132,1024")
  parser.add_argument(
    "--direct_up_to_mb",
    type=int,
    default=132,
    help="also start from the JSON lines given directly up to this size",
  )
  parser.add_argument("--num_workers", type=int, default=os.cpu_count())
  parser.add_argument("--out", default=os.path.join(ROOT, "docs", "startup.md"))
  args = parser.parse_args()
  if not os.path.isdir(IMDB):
    sys.exit(f"needs the IMDB corpus in {os.path.normpath(IMDB)}")
  os.makedirs(args.workdir, exist_ok=True)
  table = []
  for megabytes in map(int, args.sizes_mb.split(",")):
    corpus = os.path.join(args.workdir, f"imdb_text_{megabytes}mb.jsonl")
    size = write_corpus(corpus, megabytes)
    prepared = os.path.join(args.workdir, f"prepared_{megabytes}mb")
    prepare_figures = prepared + ".prepare.json"
    if not os.path.exists(os.path.join(prepared, "prepared.json")):
      figures = measured(
        [
          sys.executable,
          "-m",
          "pipeline.prepare",
          f"--data=jsonl:{corpus}",
          "--tokenizer=word",
          "--vocab_size=20000",
          f"--out={prepared}",
          f"--num_workers={args.num_workers}",
        ],
        os.path.join(args.workdir, f"prepare_{megabytes}mb.log"),
      )
      with open(prepare_figures, "w") as f:
        json.dump(figures, f)
    prepare_row = json.load(open(prepare_figures)) if os.path.exists(prepare_figures) else None
    ways = [("prepared:, from pipeline.prepare", f"prepared:{prepared}", [])]
    if megabytes <= args.direct_up_to_mb:
      ways.insert(
        0,
        (
          "jsonl: given directly (first start prepares it)",
          f"jsonl:{corpus}",
          ["--tokenizer=word", "--vocab_size=20000"],
        ),
      )
    for way, data, extra in ways:
      run = os.path.join(args.workdir, f"run_{megabytes}mb_{way.split(':')[0]}")
      subprocess.run(["rm", "-rf", run], check=True)
      result = measured(
        [
          sys.executable,
          "-m",
          "training.train",
          f"--workdir={run}",
          f"--train_data={data}",
          *MODEL_FLAGS,
          *extra,
        ],
        run + ".log",
        first_row_of=os.path.join(run, "metrics.jsonl"),
      )
      table.append(
        [
          f"{size / 2**20:,.0f} MiB",
          way,
          f"{result['first_step_s']:.1f}",
          f"{result['peak_rss_mib']:,.0f}",
          f"{prepare_row['seconds']:.0f} s, {prepare_row['peak_rss_mib']:,.0f} MiB"
          if prepare_row and way.startswith("prepared")
          else "-",
        ]
      )
      print(table[-1], flush=True)
  write_table(
    args.out,
    "Start-up and memory against corpus size",
    f"`python -m bench.startup --sizes_mb={args.sizes_mb}` on {machine()}: a word-level LSTM 256"
    " language model (vocabulary 20,000, batch 32 x 64) started on IMDB review text. Seconds from the"
    " process's start to its first training step (JAX start-up and compilation included) and the"
    " process's peak resident memory. The last column is the one-off `pipeline.prepare` job"
    f" ({args.num_workers} worker processes; its own process's peak memory).",
    [
      "corpus (JSON lines)",
      "training data",
      "start to first step (s)",
      "peak RSS (MiB)",
      "prepare (once)",
    ],
    table,
  )


if __name__ == "__main__":
  main()
