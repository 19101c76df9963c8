r"""Memory of one train step against window length, with and without `--remat`.

  python -m bench.memory [--hidden_size=512] [--batch_size=64] [--windows=128,256,512,1024,2048]

Reads XLA's own accounting of the compiled step (`memory_analysis()`: temporary buffers, the
activations kept for the backward pass among them), so it needs no run and no accelerator; the
figures are for this backend. Prints a Markdown table. Both columns are the portable scan's
(`--remat` applies to it); where oneDNN's LSTM runs here, a third column gives its step memory
(its forward workspace is an XLA buffer and counted; its scratchpad, reused across steps, is not).
"""

import argparse
import dataclasses

import jax

from training.config import Config
from training.loop import parallel
from training.loop.trainer import build_steps
from training.model.kernels import onednn


def step_temp_bytes(config: Config, vocab_size: int) -> int:
  steps = build_steps(config, vocab_size, 0, parallel.make_mesh())
  shape = (config.batch_size, config.seq_len)
  batch = {
    "inputs": jax.ShapeDtypeStruct(shape, "int32"),
    "targets": jax.ShapeDtypeStruct(shape, "int32"),
    "mask": jax.ShapeDtypeStruct(shape, "bool"),
    "resets": jax.ShapeDtypeStruct(shape[:1], "bool"),
  }
  compiled = steps.train_fn.lower(
    steps.abstract_state, batch, jax.eval_shape(steps.no_sums, batch)
  ).compile()
  return compiled.memory_analysis().temp_size_in_bytes


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--hidden_size", type=int, default=512)
  parser.add_argument("--num_layers", type=int, default=2)
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--vocab_size", type=int, default=65)
  parser.add_argument("--windows", default="128,256,512,1024,2048")
  args = parser.parse_args()
  base = Config(
    hidden_size=args.hidden_size,
    embed_size=args.hidden_size,
    num_layers=args.num_layers,
    batch_size=args.batch_size,
    recurrent_kernel="scan",
  )
  with_kernel = onednn.available()
  print(
    f"char LM, {args.num_layers} x {args.hidden_size}, batch {args.batch_size}; {jax.devices()[0].platform},"
    f" jax {jax.__version__}\n"
  )
  extra = (" oneDNN kernel (MiB) |", " --- |") if with_kernel else ("", "")
  print("| window | step memory (MiB) | with --remat (MiB) | saved |" + extra[0])
  print("| --- | --- | --- | --- |" + extra[1])
  for window in map(int, args.windows.split(",")):
    plain, remat = (
      step_temp_bytes(dataclasses.replace(base, seq_len=window, remat=r), args.vocab_size) / 2**20
      for r in (False, True)
    )
    kernel = ""
    if with_kernel:
      fused = dataclasses.replace(base, seq_len=window, recurrent_kernel="onednn")
      kernel = f" {step_temp_bytes(fused, args.vocab_size) / 2**20:,.0f} |"
    print(
      f"| {window} | {plain:,.0f} | {remat:,.0f} | {100 * (1 - remat / plain):.0f}% |{kernel}",
      flush=True,
    )


if __name__ == "__main__":
  main()
