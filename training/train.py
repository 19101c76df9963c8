r"""Trains a recurrent model: `python -m training.train --workdir=DIR [flags]`.

With no data flags it trains on a generated task (per token by default, `--task=classify` for
per sequence). Running the same command on the same workdir resumes from its last checkpoint.
Experiments are flag files: `--flagfile=configs/NAME.flags`.
"""

import os
import sys

from absl import app, flags, logging

from launch import cli, distributed, huge_pages
from pipeline.errors import DataError
from training.config import (
  BATCHINGS,
  LR_DECAYS,
  MODELS,
  ON_NONFINITE,
  PARALLELISMS,
  POOLINGS,
  RECURRENT_BACKWARDS,
  RECURRENT_KERNELS,
  TASKS,
  UTF8_ERRORS,
  Config,
  ConfigError,
)

_D = Config()  # The flags' defaults are the config's.

_WORKDIR = flags.DEFINE_string(
  "workdir", None, "Directory for checkpoints, metrics and the vocabulary.", required=True
)
# Enum flags are plain strings checked by `config.validate`, so that every bad value gets the
# same one-line error instead of absl's usage dump.
flags.DEFINE_string("task", _D.task, f"Objective: {' | '.join(TASKS)} (per token | per sequence).")
flags.DEFINE_string("model", _D.model, f"Recurrent cell: {' | '.join(MODELS)}.")
flags.DEFINE_integer("num_layers", _D.num_layers, "Stacked recurrent layers.")
flags.DEFINE_integer("hidden_size", _D.hidden_size, "Units per recurrent layer.")
flags.DEFINE_integer("embed_size", _D.embed_size, "Token embedding width.")
flags.DEFINE_float(
  "dropout", _D.dropout, "Dropout rate on embeddings, between layers and in the head."
)
flags.DEFINE_float(
  "word_dropout",
  _D.word_dropout,
  "Drop each token's whole embedding with this probability in"
  " training (word dropout: the word is left out of the text; --dropout drops single units).",
)
flags.DEFINE_bool(
  "variational_dropout",
  _D.variational_dropout,
  "--dropout drops the same units at every time step"
  " of a sequence (Gal & Ghahramani 2016) instead of new ones at each.",
)
flags.DEFINE_list(
  "head_widths",
  list(map(str, _D.head_widths)),
  "Hidden widths of the classifier's MLP head (the class count is added).",
)
flags.DEFINE_string(
  "pooling",
  _D.pooling,
  f"Classifier features: {' | '.join(POOLINGS)} (the last state, the"
  " mean or elementwise max of the states, or all three side by side).",
)
flags.DEFINE_bool(
  "bidirectional",
  _D.bidirectional,
  "classify: a second recurrent stack reads every sequence"
  " backwards; the two stacks' outputs are concatenated.",
)
flags.DEFINE_bool(
  "backward_embedding",
  _D.backward_embedding,
  "classify, --bidirectional: the backward stack"
  " reads an embedding of its own (--init_backward_from sets it: each language model learnt its own).",
)
flags.DEFINE_bool(
  "read_backward",
  _D.read_backward,
  "lm: read the text from its end to its start, predicting"
  " each token from the text after it (a backward language model, for --init_backward_from);"
  " classify: read each sequence from its last token to its first (from such a model, --init_from).",
)
flags.DEFINE_bool(
  "tie_embeddings",
  _D.tie_embeddings,
  "lm: the output layer reuses the embedding matrix"
  " (through a projection to --embed_size when --hidden_size differs).",
)
flags.DEFINE_integer(
  "softmax_vocab_size",
  _D.softmax_vocab_size,
  "Next-token softmax over only the N most"
  " frequent tokens of --vocab_size; rarer ones keep embeddings of their own (a classifier"
  " from this LM reads them) but are predicted as <unk>. 0: the whole vocabulary.",
)
flags.DEFINE_float(
  "lm_loss_weight",
  _D.lm_loss_weight,
  "classify: add this weight times the next-token"
  " loss on the same text (per token and per sequence at once); 0: off.",
)
flags.DEFINE_string(
  "init_from",
  _D.init_from,
  "classify: workdir of a trained language model; the"
  " classifier starts from its encoder (and next-token head) and uses its vocabulary.",
)
flags.DEFINE_string(
  "init_backward_from",
  _D.init_backward_from,
  "classify, with --bidirectional and --init_from:"
  " workdir of a backward language model (--read_backward) trained on the same data as"
  " --init_from's; the backward stack starts from its embedding and layers (ULMFiT and ELMo"
  " pretrain both directions).",
)
flags.DEFINE_integer(
  "target_lm_steps",
  _D.target_lm_steps,
  "classify: train the first N steps per token"
  " only, on the classifier's own training text (ULMFiT's target-task language-model"
  " fine-tuning), then per sequence; dev evaluations and --freeze_encoder_steps start"
  " after them.",
)
flags.DEFINE_integer(
  "num_classes", _D.num_classes, "Classes; 0 infers 1 + the largest training label."
)
flags.DEFINE_integer(
  "chrono_init",
  _D.chrono_init,
  "lstm, gru: draw each unit's gate biases so that its"
  " memory lasts between 1 and N steps (chrono initialisation, Tallec & Ollivier 2018),"
  " for dependencies up to about N tokens long; 0: constant biases (the forget gate at 1).",
)
flags.DEFINE_integer("unroll", _D.unroll, "Time steps unrolled per scan iteration.")
flags.DEFINE_string(
  "recurrent_backward",
  _D.recurrent_backward,
  f"Gradient of the time loop: {' | '.join(RECURRENT_BACKWARDS)} (hand-written, weight"
  " gradients as one matmul after the loop | jax.grad of the scan, the reference).",
)
flags.DEFINE_string(
  "recurrent_kernel",
  _D.recurrent_kernel,
  f"The LSTM's time loop: {' | '.join(RECURRENT_KERNELS)} (oneDNN's fused LSTM where it is"
  " installed and applies: CPU, LSTM, no --remat, one device or --parallelism=shard_map; the"
  " portable JAX scan always; oneDNN or an error saying why not).",
)
flags.DEFINE_string(
  "train_data",
  _D.train_data,
  "KIND:PATH[SLICE] with KIND text|lines|jsonl|csv|tsv|parquet|tfds|synthetic; empty: generated task.",
)
flags.DEFINE_string(
  "eval_data",
  _D.eval_data,
  "KIND:PATH[SLICE] of the dev split (evaluations and model"
  " selection); empty: none (or the generated task's held-out part when --train_data is empty too).",
)
flags.DEFINE_string(
  "test_data",
  _D.test_data,
  "KIND:PATH[SLICE] of the test split: evaluated once, at the"
  " end, with the parameters of the best --eval_data evaluation; empty: none.",
)
flags.DEFINE_string(
  "tokenizer",
  _D.tokenizer,
  "char | word | ptb (words split as the Penn Treebank does: does n't, it 's).",
)
flags.DEFINE_integer("vocab_size", _D.vocab_size, "Keep the most frequent tokens; 0 keeps all.")
flags.DEFINE_string(
  "text_field",
  _D.text_field,
  "Text field (column) of jsonl:, csv:, tsv:, parquet: and tfds: records.",
)
flags.DEFINE_string(
  "label_field",
  _D.label_field,
  "Label field (column) of jsonl:, csv:, tsv:, parquet: and tfds: records;"
  " class ids 0..C-1 or class names.",
)
flags.DEFINE_string(
  "tfds_data_dir", _D.tfds_data_dir, "TFDS data directory; empty: TFDS's default."
)
flags.DEFINE_bool(
  "remat",
  _D.remat,
  "Keep only the recurrent state for the backward pass and recompute"
  " the rest there: less memory for long windows, for one more matmul per step.",
)
flags.DEFINE_string(
  "encoding", _D.encoding, "Text encoding of data files (e.g. latin-1); see --utf8_errors."
)
flags.DEFINE_integer(
  "data_workers", _D.data_workers, "Threads preparing batches ahead of the trainer."
)
flags.DEFINE_string(
  "utf8_errors",
  _D.utf8_errors,
  f"Bytes that are not UTF-8: {' | '.join(UTF8_ERRORS)}"
  " (refuse, or replace with U+FFFD and warn with file and line).",
)
flags.DEFINE_string(
  "batching",
  _D.batching,
  f"classify: how sequences become batches: {' | '.join(BATCHINGS)}"
  " (pad each to --seq_len | group by length | several per row).",
)
flags.DEFINE_list(
  "bucket_boundaries", [], "bucket: row widths (up to 8); empty: chosen from the data."
)
flags.DEFINE_integer(
  "batch_tokens",
  _D.batch_tokens,
  "bucket: token budget per batch (rows = budget //"
  " width, so short buckets carry more rows); 0: --batch_size rows.",
)
flags.DEFINE_integer("max_segments", _D.max_segments, "pack: sequences per row at most.")
flags.DEFINE_integer("batch_size", _D.batch_size, "Global batch size (rows, over all devices).")
flags.DEFINE_string(
  "parallelism",
  _D.parallelism,
  f"Data-parallel train step: {' | '.join(PARALLELISMS)}"
  " (XLA partitions a global step | the step written per device with explicit psums).",
)
flags.DEFINE_integer(
  "steps_per_call",
  _D.steps_per_call,
  "Train steps run inside one call of the compiled step"
  " (one dispatch for all of them; a call ends where the loop logs, saves or evaluates):"
  " for small models on a small CPU or an accelerator. The same results for any value.",
)
flags.DEFINE_integer(
  "seq_len", _D.seq_len, "Tokens per row: window length (lm) or truncation (classify)."
)
flags.DEFINE_bool(
  "carry_state",
  _D.carry_state,
  "lm: carry the hidden state from one window to the next (truncated BPTT).",
)
flags.DEFINE_integer(
  "num_steps", _D.num_steps, "Training steps in all (a resumed run counts those done)."
)
flags.DEFINE_float("learning_rate", _D.learning_rate, "Peak learning rate of AdamW.")
flags.DEFINE_integer("warmup_steps", _D.warmup_steps, "Linear warm-up steps.")
flags.DEFINE_string(
  "lr_decay", _D.lr_decay, f"Learning-rate decay after warm-up: {' | '.join(LR_DECAYS)}."
)
flags.DEFINE_float("weight_decay", _D.weight_decay, "AdamW weight decay.")
flags.DEFINE_float("grad_clip", _D.grad_clip, "Clip gradients to this global norm; 0 disables.")
flags.DEFINE_float(
  "encoder_lr_scale",
  _D.encoder_lr_scale,
  "The encoder's (embedding and recurrent"
  " stack's) step relative to the rest's, e.g. 0.3 when fine-tuning a pretrained encoder"
  " (discriminative learning rates, ULMFiT).",
)
flags.DEFINE_integer(
  "freeze_encoder_steps",
  _D.freeze_encoder_steps,
  "Leave the encoder unchanged for this"
  " many first per-sequence steps while the new head learns (the simplest gradual unfreezing).",
)
flags.DEFINE_boolean(
  "freeze_embeddings",
  _D.freeze_embeddings,
  "Leave the token embeddings as they start"
  " (a pretrained language model's under --init_from) for the whole run; the rest trains.",
)
flags.DEFINE_float(
  "adversarial_epsilon",
  _D.adversarial_epsilon,
  "Also train each step on the batch with"
  " every sequence's embeddings perturbed against the model by this fraction of their"
  " norm (adversarial training, Miyato et al. 2017; a second forward and backward pass),"
  " e.g. 0.05; 0: off.",
)
flags.DEFINE_float(
  "ema_decay",
  _D.ema_decay,
  "Keep an exponential moving average of the parameters with"
  " this decay (e.g. 0.999) and evaluate, select, test and serve it instead of the last"
  " parameters; 0: off.",
)
flags.DEFINE_integer("seed", _D.seed, "Seed of parameters, dropout and data order.")
flags.DEFINE_integer("log_every", _D.log_every, "Steps between train rows in metrics.jsonl.")
flags.DEFINE_integer("eval_every", _D.eval_every, "Steps between evaluations; 0: only at the end.")
flags.DEFINE_integer(
  "eval_steps", _D.eval_steps, "Eval batches per evaluation; 0: the whole eval set."
)
flags.DEFINE_integer(
  "checkpoint_every", _D.checkpoint_every, "Steps between checkpoints (and one at the end)."
)
flags.DEFINE_integer("keep_checkpoints", _D.keep_checkpoints, "Checkpoints kept.")
flags.DEFINE_bool(
  "async_checkpointing", _D.async_checkpointing, "Save checkpoints in the background."
)
flags.DEFINE_integer(
  "restore_step",
  _D.restore_step,
  "Resume from this checkpoint step; 0: the latest"
  " readable one (an unreadable one is set aside and the previous one used).",
)
flags.DEFINE_string(
  "select_metric",
  _D.select_metric,
  "Eval metric that picks the best checkpoint (kept in"
  " WORKDIR/best_checkpoint): loss | accuracy; empty: accuracy to classify, loss for lm.",
)
flags.DEFINE_integer(
  "patience",
  _D.patience,
  "Stop after this many evaluations in a row without a better"
  " --select_metric; 0: never stop early.",
)
flags.DEFINE_string(
  "on_nonfinite",
  _D.on_nonfinite,
  f"A non-finite loss or gradient: {' | '.join(ON_NONFINITE)}"
  " (stop the run naming the step, keeping the last checkpoint; or skip that update).",
)
flags.DEFINE_integer(
  "inject_nan_at_step", _D.inject_nan_at_step, "Testing aid: make this step's loss NaN."
)

# Multi-process jobs (see launch/): all three, or none (then the cluster's environment decides).
_COORDINATOR = flags.DEFINE_string(
  "coordinator_address", None, "HOST:PORT of process 0's coordinator."
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the job.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index, 0..num_processes-1.")

FLAGS = flags.FLAGS


def config_from_flags() -> Config:
  values = {name: FLAGS[name].value for name in Config.__dataclass_fields__}
  for name in ("head_widths", "bucket_boundaries"):
    try:
      values[name] = tuple(int(value) for value in values[name])
    except ValueError:
      raise ConfigError(f"--{name}={','.join(values[name])}: expected integers") from None
  return Config(**values)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  cli.quiet_libraries()
  try:
    how = distributed.initialize(
      _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value, os.environ
    )
  except distributed.LaunchError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  import jax

  if jax.process_index() != 0:
    logging.set_verbosity(logging.WARNING)  # Process 0 reports; the others speak only of trouble.
  logging.info(
    "Started (%s): process %d of %d, %d devices in all",
    how,
    jax.process_index(),
    jax.process_count(),
    jax.device_count(),
  )
  if huge_pages.is_set(os.environ):
    logging.info(
      "Large buffers on transparent huge pages (GLIBC_TUNABLES=%s; %s=0 turns it off)",
      os.environ["GLIBC_TUNABLES"],
      huge_pages.OPT_OUT,
    )
  # Imported here so that `--help` and flag errors do not pay for importing JAX.
  from training.bookkeeping.checkpoints import CheckpointError
  from training.loop.trainer import TrainingError, train_and_evaluate

  try:
    summary = train_and_evaluate(config_from_flags(), _WORKDIR.value)
  except (ConfigError, DataError) as e:
    # A mistake in flags or data: one line naming the culprit, no traceback.
    _exit_with_error(e, 2)
  except (CheckpointError, TrainingError) as e:
    _exit_with_error(e, 1)
  logging.info("summary: %s", summary)


def _exit_with_error(error: Exception, status: int) -> None:
  print(f"error: {error}", file=sys.stderr)
  import jax

  if jax.process_count() > 1:
    # A clean exit shuts jax.distributed down, which waits for every process at a barrier;
    # the others may be waiting for this one in a collective, and the job would hang for the
    # barrier's minutes. Exit now: the launcher (or the cluster) then stops the others.
    sys.stderr.flush()
    sys.stdout.flush()
    os._exit(status)
  sys.exit(status)


def run_main():
  """Console entry point (`rnn-train`)."""
  huge_pages.reexec_with_huge_pages()  # first: it starts the program again
  cli.run(main, __name__)


if __name__ == "__main__":
  run_main()
