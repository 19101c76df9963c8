r"""Which tokenizer? Language models on one corpus with char, word, bpe and unigram tokens, the
same minutes of training each, compared in bits per byte on the same dev text.

  python -m bench.tokenizers --corpus=shakespeare [--minutes=5] [--workdir=runs/tokenizers]
  python -m bench.tokenizers --corpus=imdb

Losses per token of two tokenizers cannot be compared (a subword carries more text than a
character); bits per byte can: the summed loss in bits over the UTF-8 bytes of the text predicted.
Every run is the same LSTM (1 x 512, batch 32 x 128 tokens, constant step 2e-3) on the same
documents (`lines:` of Tiny Shakespeare, or the first 10,000 IMDB unlabelled reviews; the dev
split the same text for every tokenizer). A run first trains 60 steps, whose last log window
gives its speed; it then resumes for as many steps as the budget holds at that speed, and is
evaluated on the whole dev split once, at the end. Its minutes are what it took (training and
that evaluation), so a tokenizer pays for its softmax and its sequence length alike.
Writes docs/tokenizers_CORPUS.md.
"""

import argparse
import os

from bench import runs

CORPORA = {
  "shakespeare": {
    "data": "../shared/data/tiny_shakespeare/input.txt",
    "train": "lines:../shared/data/tiny_shakespeare/input.txt[:90%]",
    "eval": "lines:../shared/data/tiny_shakespeare/input.txt[90%:]",
    "vocab_size": {"char": 0, "word": 10000, "bpe": 2000, "unigram": 2000},
  },
  "imdb": {
    "data": "../shared/data/imdb/unsup.jsonl.gz",
    "train": "jsonl:../shared/data/imdb/unsup.jsonl.gz[:10000]",
    "eval": "jsonl:../shared/data/imdb/unsup.jsonl.gz[10000:11000]",
    "vocab_size": {"char": 0, "word": 20000, "bpe": 8000, "unigram": 8000},
  },
}
BATCH, WINDOW, CALIBRATION_STEPS = 32, 128, 60
FLAGS = [
  "--task=lm",
  "--model=lstm",
  "--num_layers=1",
  "--hidden_size=512",
  "--embed_size=128",
  f"--batch_size={BATCH}",
  f"--seq_len={WINDOW}",
  "--learning_rate=2e-3",
  "--log_every=20",
  "--eval_every=0",
  "--checkpoint_every=100000",
]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--corpus", choices=sorted(CORPORA), default="shakespeare")
  parser.add_argument("--minutes", type=float, default=5.0)
  parser.add_argument("--tokenizers", default="char,word,bpe,unigram")
  parser.add_argument("--workdir", default="runs/tokenizers")
  parser.add_argument("--out", default="")
  args = parser.parse_args()
  corpus = CORPORA[args.corpus]
  if not os.path.exists(corpus["data"]):
    raise SystemExit(
      f"{corpus['data']} not found: run from the repository root with ../shared/data beside it"
    )
  table = []
  for tokenizer in args.tokenizers.split(","):
    workdir = os.path.abspath(os.path.join(args.workdir, f"{args.corpus}_{tokenizer}"))
    flags = [
      *FLAGS,
      f"--tokenizer={tokenizer}",
      f"--vocab_size={corpus['vocab_size'][tokenizer]}",
      f"--train_data={corpus['train']}",
      f"--eval_data={corpus['eval']}",
    ]
    if not runs.finished(workdir) or runs.read_summary(workdir)["step"] == CALIBRATION_STEPS:
      runs.train(workdir, *flags, f"--num_steps={CALIBRATION_STEPS}")
      tokens_per_second = runs.rows(workdir, "train")[-1]["tokens_per_sec"]
      steps = max(
        CALIBRATION_STEPS + 1, round(args.minutes * 60 * tokens_per_second / (BATCH * WINDOW))
      )
      os.remove(os.path.join(workdir, "summary.json"))  # resumed for the budget's steps
    else:
      steps = runs.read_summary(workdir)["step"]
    summary = runs.train(workdir, *flags, f"--num_steps={steps}")
    evaluation = summary["eval"]
    table.append(
      [
        f"`{tokenizer}`",
        corpus["vocab_size"][tokenizer] or "all",
        f"{summary['step']:,}",
        f"{(runs.training_seconds(workdir) or 0) / 60:.1f}",
        f"{evaluation['loss']:.3f}",
        f"**{evaluation['bits_per_byte']:.3f}**",
      ]
    )
  runs.write_table(
    args.out or f"docs/tokenizers_{args.corpus}.md",
    f"Which tokenizer? ({args.corpus})",
    f"`python -m bench.tokenizers --corpus={args.corpus} --minutes={args.minutes:g}` on"
    f" {runs.machine()}: an LSTM language model (1 x 512) per tokenizer, {args.minutes:g} minutes"
    " of training each, evaluated once on the whole dev split. Bits per byte compare across"
    " tokenizers (lower is better); the loss is per token of each tokenizer's own.",
    ["tokenizer", "vocabulary", "steps", "minutes", "dev loss (nats/token)", "dev bits per byte"],
    table,
  )


if __name__ == "__main__":
  main()
