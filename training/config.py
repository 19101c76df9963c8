"""A run's configuration: one frozen dataclass, each field with its default and its help text.

This is the one place a setting is defined: the trainer's flags are made from these fields
(`training.config_flags`), with their defaults and help. Functions take a `Config` (or its
fields), never flags, so tests and other entry points build one directly.
"""

import dataclasses

from pipeline import tokenizers
from pipeline.batch_plans import BATCHINGS
from pipeline.paths import absolute
from pipeline.sources import with_absolute_path

TASKS = ("lm", "classify")
MODELS = ("lstm", "gru", "rnn")
POOLINGS = ("last", "mean", "max", "concat")
SELECT_METRICS = ("loss", "accuracy", "macro_f1")
# --select_metric=f1:CLASS: the F1 of one named class (imbalanced data where one class matters).
CLASS_F1_PREFIX = "f1:"
LR_DECAYS = ("none", "cosine")
ON_NONFINITE = ("stop", "skip")
UTF8_ERRORS = ("strict", "replace")
PARALLELISMS = ("jit", "shard_map")
RECURRENT_BACKWARDS = ("fused", "autodiff")
RECURRENT_KERNELS = ("auto", "scan", "onednn")

# With no data flags each task trains on a generated task that needs memory (pipeline.synthetic).
DEFAULT_DATA = {
  "lm": ("synthetic:copy[:90%]", "synthetic:copy[90%:]"),
  "classify": ("synthetic:recall[:90%]", "synthetic:recall[90%:]"),
}

# The fields that fix the parameters' shapes (and whether an average of them is kept) or what
# they mean (the direction a language model reads): a resume must not change them.
MODEL_FIELDS = (
  "task",
  "model",
  "num_layers",
  "hidden_size",
  "embed_size",
  "head_widths",
  "tokenizer",
  "vocab_size",
  "softmax_vocab_size",
  "num_classes",
  "pooling",
  "bidirectional",
  "tie_embeddings",
  "read_backward",
  "backward_embedding",
  "lm_loss_weight",
  "target_lm_steps",
  "ema_decay",
)


def config_from_fields(saved: dict) -> "Config":
  """A Config from its fields as JSON gives them back (lists where it holds tuples); names it
  does not have (a newer or older run's) are left out."""
  fields = {name: saved[name] for name in Config.__dataclass_fields__ if name in saved}
  for name in ("head_widths", "bucket_boundaries"):
    fields[name] = tuple(fields.get(name, ()))
  return Config(**fields)


def setting(default, help_text: str):
  """A Config field: its default, and the help its flag shows (`--helpfull`)."""
  return dataclasses.field(default=default, metadata={"help": help_text})


def choices(values: tuple[str, ...]) -> str:
  """A flag's values as its help lists them: "a | b | c"."""
  return " | ".join(values)


class ConfigError(ValueError):
  """An invalid flag or combination of flags; the message names the flag."""


@dataclasses.dataclass(frozen=True)
class Config:
  # Objective and model.
  task: str = setting("lm", f"Objective: {choices(TASKS)} (per token | per sequence).")
  model: str = setting("lstm", f"Recurrent cell: {choices(MODELS)}.")
  num_layers: int = setting(1, "Stacked recurrent layers.")
  hidden_size: int = setting(128, "Units per recurrent layer.")
  embed_size: int = setting(32, "Token embedding width.")
  dropout: float = setting(0.0, "Dropout rate on embeddings, between layers and in the head.")
  word_dropout: float = setting(
    0.0,
    "Drop each token's whole embedding with this probability in training (word "
    "dropout: the word is left out of the text; --dropout drops single units).",
  )
  variational_dropout: bool = setting(
    False,
    "--dropout drops the same units at every time step of a sequence (Gal & "
    "Ghahramani 2016) instead of new ones at each.",
  )
  head_widths: tuple[int, ...] = setting(
    (128,), "Hidden widths of the classifier's MLP head (the class count is added)."
  )
  pooling: str = setting(
    "last",
    f"Classifier features: {choices(POOLINGS)} (the last state, the mean or elementwise max of "
    "the states, or all three side by side).",
  )
  bidirectional: bool = setting(
    False,
    "classify: a second recurrent stack reads every sequence backwards; the two "
    "stacks' outputs are concatenated.",
  )
  tie_embeddings: bool = setting(
    False,
    "lm: the output layer reuses the embedding matrix (through a projection to "
    "--embed_size when --hidden_size differs).",
  )
  softmax_vocab_size: int = setting(
    0,
    "Next-token softmax over only the N most frequent tokens of --vocab_size; rarer "
    "ones keep embeddings of their own (a classifier from this LM reads them) but are"
    " predicted as <unk>. 0: the whole vocabulary.",
  )
  read_backward: bool = setting(
    False,
    "lm: read the text from its end to its start, predicting each token from the text"
    " after it (a backward language model, for --init_backward_from); classify: read "
    "each sequence from its last token to its first (from such a model, --init_from).",
  )
  backward_embedding: bool = setting(
    False,
    "classify, --bidirectional: the backward stack reads an embedding of its own "
    "(--init_backward_from sets it: each language model learnt its own).",
  )
  lm_loss_weight: float = setting(
    0.0,
    "classify: add this weight times the next-token loss on the same text (per token "
    "and per sequence at once); 0: off.",
  )
  init_from: str = setting(
    "",
    "classify: workdir of a trained language model; the classifier starts from its "
    "encoder (and next-token head) and uses its vocabulary.",
  )
  init_backward_from: str = setting(
    "",
    "classify, with --bidirectional and --init_from: workdir of a backward language "
    "model (--read_backward) trained on the same data as --init_from's; the backward "
    "stack starts from its embedding and layers (ULMFiT and ELMo pretrain both "
    "directions).",
  )
  target_lm_steps: int = setting(
    0,
    "classify: train the first N steps per token only, on the classifier's own "
    "training text (ULMFiT's target-task language-model fine-tuning), then per "
    "sequence; dev evaluations and --freeze_encoder_steps start after them.",
  )
  num_classes: int = setting(0, "Classes; 0 infers 1 + the largest training label.")
  chrono_init: int = setting(
    0,
    "lstm, gru: draw each unit's gate biases so that its memory lasts between 1 and N"
    " steps (chrono initialisation, Tallec & Ollivier 2018), for dependencies up to "
    "about N tokens long; 0: constant biases (the forget gate at 1).",
  )
  unroll: int = setting(1, "Time steps unrolled per scan iteration.")
  recurrent_backward: str = setting(
    "fused",
    f"Gradient of the time loop: {choices(RECURRENT_BACKWARDS)} (hand-written, weight gradients"
    " as one matmul after the loop | jax.grad of the scan, the reference).",
  )
  recurrent_kernel: str = setting(
    "auto",
    f"The LSTM's time loop: {choices(RECURRENT_KERNELS)} (oneDNN's fused LSTM where it is "
    "installed and applies: CPU, LSTM, no --remat, one device or "
    "--parallelism=shard_map; the portable JAX scan always; oneDNN or an error saying"
    " why not).",
  )
  remat: bool = setting(
    False,
    "Keep only the recurrent state for the backward pass and recompute the rest "
    "there: less memory for long windows, for one more matmul per step.",
  )
  # Data.
  train_data: str = setting(
    "",
    "KIND:PATH[SLICE] with KIND text|lines|jsonl|csv|tsv|parquet|tfds|synthetic; "
    "empty: generated task.",
  )
  eval_data: str = setting(
    "",
    "KIND:PATH[SLICE] of the dev split (evaluations and model selection); empty: none"
    " (or the generated task's held-out part when --train_data is empty too).",
  )
  test_data: str = setting(
    "",
    "KIND:PATH[SLICE] of the test split: evaluated once, at the end, with the "
    "parameters of the best --eval_data evaluation; empty: none.",
  )
  tokenizer: str = setting(
    "char",
    "char | word | ptb (words split as the Penn Treebank does: does n't, it 's) | bpe | unigram"
    " (subwords trained on the training data by SentencePiece: lossless, case and whitespace"
    " kept; --vocab_size of them).",
  )
  vocab_size: int = setting(
    0, "Keep the most frequent tokens; 0 keeps all. bpe, unigram: the subwords to learn."
  )
  tokenizer_sample_mb: float = setting(
    64.0,
    "bpe, unigram: train the tokenizer on at most this many MB of the training text (a sample"
    " fixed by the lines' hashes, the same for the same data).",
  )
  text_field: str = setting(
    "text", "Text field (column) of jsonl:, csv:, tsv:, parquet: and tfds: records."
  )
  label_field: str = setting(
    "label",
    "Label field (column) of jsonl:, csv:, tsv:, parquet: and tfds: records; class "
    "ids 0..C-1 or class names.",
  )
  tfds_data_dir: str = setting("", "TFDS data directory; empty: TFDS's default.")
  data_workers: int = setting(2, "Threads preparing batches ahead of the trainer.")
  utf8_errors: str = setting(
    "strict",
    f"Bytes that are not UTF-8: {choices(UTF8_ERRORS)} (refuse, or replace with U+FFFD and warn"
    " with file and line).",
  )
  encoding: str = setting("utf-8", "Text encoding of data files (e.g. latin-1); see --utf8_errors.")
  batching: str = setting(
    "pad",
    f"classify: how sequences become batches: {choices(BATCHINGS)} (pad each to --seq_len | "
    "group by length | several per row).",
  )
  bucket_boundaries: tuple[int, ...] = setting(
    (), "bucket: row widths (up to 8); empty: chosen from the data."
  )
  batch_tokens: int = setting(
    0,
    "bucket: token budget per batch (rows = budget // width, so short buckets carry "
    "more rows); 0: --batch_size rows.",
  )
  max_segments: int = setting(32, "pack: sequences per row at most.")
  batch_size: int = setting(32, "Global batch size (rows, over all devices).")
  parallelism: str = setting(
    "jit",
    f"Data-parallel train step: {choices(PARALLELISMS)} (XLA partitions a global step | the "
    "step written per device with explicit psums).",
  )
  steps_per_call: int = setting(
    1,
    "Train steps run inside one call of the compiled step (one dispatch for all of "
    "them; a call ends where the loop logs, saves or evaluates): for small models on "
    "a small CPU or an accelerator. The same results for any value.",
  )
  seq_len: int = setting(64, "Tokens per row: window length (lm) or truncation (classify).")
  carry_state: bool = setting(
    True, "lm: carry the hidden state from one window to the next (truncated BPTT)."
  )
  # Optimisation.
  num_steps: int = setting(1000, "Training steps in all (a resumed run counts those done).")
  learning_rate: float = setting(3e-3, "Peak learning rate of AdamW.")
  warmup_steps: int = setting(0, "Linear warm-up steps.")
  lr_decay: str = setting("none", f"Learning-rate decay after warm-up: {choices(LR_DECAYS)}.")
  weight_decay: float = setting(0.0, "AdamW weight decay.")
  grad_clip: float = setting(1.0, "Clip gradients to this global norm; 0 disables.")
  encoder_lr_scale: float = setting(
    1.0,
    "The encoder's (embedding and recurrent stack's) step relative to the rest's, "
    "e.g. 0.3 when fine-tuning a pretrained encoder (discriminative learning rates, "
    "ULMFiT).",
  )
  freeze_encoder_steps: int = setting(
    0,
    "Leave the encoder unchanged for this many first per-sequence steps while the new"
    " head learns (the simplest gradual unfreezing).",
  )
  freeze_embeddings: bool = setting(
    False,
    "Leave the token embeddings as they start (a pretrained language model's under "
    "--init_from) for the whole run; the rest trains.",
  )
  adversarial_epsilon: float = setting(
    0.0,
    "Also train each step on the batch with every sequence's embeddings perturbed "
    "against the model by this fraction of their norm (adversarial training, Miyato "
    "et al. 2017; a second forward and backward pass), e.g. 0.05; 0: off.",
  )
  ema_decay: float = setting(
    0.0,
    "Keep an exponential moving average of the parameters with this decay (e.g. "
    "0.999) and evaluate, select, test and serve it instead of the last parameters; "
    "0: off.",
  )
  seed: int = setting(0, "Seed of parameters, dropout and data order.")
  # Reporting and checkpoints.
  log_every: int = setting(50, "Steps between train rows in metrics.jsonl.")
  eval_every: int = setting(250, "Steps between evaluations; 0: only at the end.")
  eval_steps: int = setting(0, "Eval batches per evaluation; 0: the whole eval set.")
  checkpoint_every: int = setting(250, "Steps between checkpoints (and one at the end).")
  keep_checkpoints: int = setting(3, "Checkpoints kept.")
  async_checkpointing: bool = setting(True, "Save checkpoints in the background.")
  restore_step: int = setting(
    0,
    "Resume from this checkpoint step; 0: the latest readable one (an unreadable one "
    "is set aside and the previous one used).",
  )
  select_metric: str = setting(
    "",
    "Eval metric that picks the best checkpoint (kept in WORKDIR/best_checkpoint) and stops "
    "early: loss | accuracy | macro_f1 | f1:CLASS (one class's F1); empty: accuracy to "
    "classify, loss for lm.",
  )
  patience: int = setting(
    0,
    "Stop after this many evaluations in a row without a better --select_metric; 0: "
    "never stop early.",
  )
  # Faults.
  on_nonfinite: str = setting(
    "stop",
    f"A non-finite loss or gradient: {choices(ON_NONFINITE)} (stop the run naming the step, "
    "keeping the last checkpoint; or skip that update).",
  )
  inject_nan_at_step: int = setting(0, "Testing aid: make this step's loss NaN.")

  def data_specs(self) -> tuple[str, str]:
    """(train spec, eval spec); the defaults only when no data flag is given."""
    if not self.train_data:
      return DEFAULT_DATA[self.task] if not self.eval_data else ("", self.eval_data)
    return self.train_data, self.eval_data

  def model_fields(self) -> dict:
    return {name: getattr(self, name) for name in MODEL_FIELDS}

  def with_absolute_paths(self) -> "Config":
    """The same config with every path flag resolved against the working directory."""
    return dataclasses.replace(
      self,
      train_data=with_absolute_path(self.train_data),
      eval_data=with_absolute_path(self.eval_data),
      test_data=with_absolute_path(self.test_data),
      tfds_data_dir=absolute(self.tfds_data_dir),
      init_from=absolute(self.init_from),
      init_backward_from=absolute(self.init_backward_from),
    )

  def selection_metric(self) -> str:
    """The eval metric that picks the best checkpoint: accuracy for classifiers, loss for LMs."""
    return self.select_metric or ("accuracy" if self.task == "classify" else "loss")


def _require(condition: bool, flag: str, message: str) -> None:
  if not condition:
    raise ConfigError(f"--{flag}: {message}")


def validate(config: Config, device_count: int = 1) -> None:
  """Raises `ConfigError` naming the first invalid flag."""
  for flag, allowed in (
    ("task", TASKS),
    ("model", MODELS),
    ("pooling", POOLINGS),
    ("lr_decay", LR_DECAYS),
    ("tokenizer", tokenizers.KINDS),
    ("batching", BATCHINGS),
    ("on_nonfinite", ON_NONFINITE),
    ("utf8_errors", UTF8_ERRORS),
    ("parallelism", PARALLELISMS),
    ("recurrent_backward", RECURRENT_BACKWARDS),
    ("recurrent_kernel", RECURRENT_KERNELS),
  ):
    value = getattr(config, flag)
    _require(
      value in allowed, flag, f"unknown value {value!r}; expected one of {', '.join(allowed)}"
    )
  for flag in (
    "num_layers",
    "hidden_size",
    "embed_size",
    "batch_size",
    "seq_len",
    "num_steps",
    "log_every",
    "checkpoint_every",
    "keep_checkpoints",
    "unroll",
    "data_workers",
    "steps_per_call",
  ):
    _require(getattr(config, flag) > 0, flag, f"must be positive, got {getattr(config, flag)}")
  for flag in (
    "eval_every",
    "eval_steps",
    "vocab_size",
    "num_classes",
    "warmup_steps",
    "restore_step",
    "inject_nan_at_step",
  ):
    _require(getattr(config, flag) >= 0, flag, f"must be >= 0, got {getattr(config, flag)}")
  for flag in ("dropout", "word_dropout"):
    _require(
      0.0 <= getattr(config, flag) < 1.0, flag, f"must be in [0, 1), got {getattr(config, flag)}"
    )
  _require(
    config.learning_rate > 0, "learning_rate", f"must be positive, got {config.learning_rate}"
  )
  _require(all(w > 0 for w in config.head_widths), "head_widths", "widths must be positive")
  _require(config.num_classes != 1, "num_classes", "a classifier needs at least 2 classes")
  _require(
    config.vocab_size == 0 or config.vocab_size > 3,
    "vocab_size",
    "must leave room beyond the 3 special tokens",
  )
  _require(
    config.tokenizer not in tokenizers.SUBWORD_KINDS or config.vocab_size > 0,
    "vocab_size",
    f"--tokenizer={config.tokenizer} needs the number of subwords to learn (e.g. --vocab_size=8000)",
  )
  _require(
    config.tokenizer_sample_mb > 0,
    "tokenizer_sample_mb",
    f"must be positive, got {config.tokenizer_sample_mb}",
  )
  _require(
    config.softmax_vocab_size == 0 or config.softmax_vocab_size > 3,
    "softmax_vocab_size",
    f"must be 0 (the whole vocabulary) or leave room beyond the 3 special tokens, got {config.softmax_vocab_size}",
  )
  _require(
    config.softmax_vocab_size == 0
    or config.vocab_size == 0
    or config.softmax_vocab_size < config.vocab_size,
    "softmax_vocab_size",
    f"{config.softmax_vocab_size} is not smaller than --vocab_size={config.vocab_size};"
    " use 0 for a softmax over the whole vocabulary",
  )
  _require(
    config.batch_size % device_count == 0,
    "batch_size",
    f"the global batch of {config.batch_size} does not divide by the {device_count} devices;"
    f" use a multiple of {device_count}",
  )
  _require(config.max_segments > 0, "max_segments", f"must be positive, got {config.max_segments}")
  _require(config.batch_tokens >= 0, "batch_tokens", f"must be >= 0, got {config.batch_tokens}")
  boundaries = list(config.bucket_boundaries)
  _require(
    boundaries == sorted(set(boundaries))
    and all(0 < b <= config.seq_len for b in boundaries)
    and len(boundaries) <= 8,
    "bucket_boundaries",
    f"need at most 8 increasing lengths in 1..--seq_len={config.seq_len}, got {boundaries}",
  )
  _require(
    config.batching == "pad" or config.task == "classify",
    "batching",
    f"{config.batching} applies to --task=classify; per-token data is read in contiguous lanes"
    " with no padding to remove",
  )
  _require(
    config.batch_tokens == 0 or config.batching == "bucket",
    "batch_tokens",
    "needs --batching=bucket",
  )
  _require(
    bool(config.train_data) or not (config.eval_data or config.test_data),
    "train_data",
    "--eval_data or --test_data was given without --train_data",
  )
  _require(
    config.select_metric in ("",) + SELECT_METRICS
    or (
      config.select_metric.startswith(CLASS_F1_PREFIX)
      and len(config.select_metric) > len(CLASS_F1_PREFIX)
    ),
    "select_metric",
    f"unknown value {config.select_metric!r}; expected one of {', '.join(SELECT_METRICS)}"
    f" or {CLASS_F1_PREFIX}CLASS",
  )
  _require(
    config.selection_metric() == "loss" or config.task == "classify",
    "select_metric",
    f"{config.select_metric} is measured for --task=classify only; use loss",
  )
  _require(config.patience >= 0, "patience", f"must be >= 0, got {config.patience}")
  _require(
    config.patience == 0 or bool(config.data_specs()[1]),
    "patience",
    "early stopping needs --eval_data (the dev split it watches)",
  )
  _require(
    config.patience == 0 or config.eval_every > 0,
    "patience",
    "early stopping counts evaluations: it needs --eval_every > 0",
  )
  _require(
    config.lm_loss_weight >= 0, "lm_loss_weight", f"must be >= 0, got {config.lm_loss_weight}"
  )
  _require(
    config.encoder_lr_scale >= 0, "encoder_lr_scale", f"must be >= 0, got {config.encoder_lr_scale}"
  )
  _require(
    config.adversarial_epsilon >= 0,
    "adversarial_epsilon",
    f"must be >= 0, got {config.adversarial_epsilon}",
  )
  _require(
    config.chrono_init == 0 or config.chrono_init >= 3,
    "chrono_init",
    f"must be 0 (constant gate biases) or a dependency length of at least 3 steps, got {config.chrono_init}",
  )
  _require(
    config.chrono_init == 0 or config.model != "rnn",
    "chrono_init",
    "sets the gates' biases: --model=rnn has no gates (use lstm or gru)",
  )
  _require(0.0 <= config.ema_decay < 1.0, "ema_decay", f"must be in [0, 1), got {config.ema_decay}")
  _require(
    config.freeze_encoder_steps >= 0,
    "freeze_encoder_steps",
    f"must be >= 0, got {config.freeze_encoder_steps}",
  )
  _require(
    config.target_lm_steps >= 0, "target_lm_steps", f"must be >= 0, got {config.target_lm_steps}"
  )
  _require(
    config.target_lm_steps < config.num_steps,
    "target_lm_steps",
    f"{config.target_lm_steps} leaves no per-sequence step of --num_steps={config.num_steps}",
  )
  for flag in (
    "bidirectional",
    "lm_loss_weight",
    "init_from",
    "init_backward_from",
    "target_lm_steps",
    "backward_embedding",
  ):
    _require(
      not getattr(config, flag) or config.task == "classify", flag, "applies to --task=classify"
    )
  _require(
    not (config.read_backward and config.bidirectional),
    "read_backward",
    "and --bidirectional: a bidirectional classifier reads both ways already; give a backward"
    " language model as --init_backward_from",
  )
  # (--lm_loss_weight and --target_lm_steps are classify's alone, checked above.)
  _require(
    not (config.read_backward and (config.lm_loss_weight or config.target_lm_steps)),
    "read_backward",
    "a classifier that reads backwards has no next-token objective (--lm_loss_weight,"
    " --target_lm_steps): its next token is the one before",
  )
  _require(
    not config.init_backward_from or (config.bidirectional and config.init_from),
    "init_backward_from",
    "starts the backward stack of a classifier that also has --bidirectional and --init_from (the"
    " forward language model)",
  )
  _require(
    not config.backward_embedding or config.bidirectional,
    "backward_embedding",
    "needs --bidirectional",
  )


def source_read_options(config: Config) -> dict:
  """How the run reads its source files (`sources.read_examples`' keyword arguments)."""
  return dict(
    text_field=config.text_field,
    label_field=config.label_field,
    tfds_data_dir=config.tfds_data_dir or None,
    utf8_errors=config.utf8_errors,
    encoding=config.encoding,
  )
