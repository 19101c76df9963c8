"""A run's configuration: one frozen dataclass, filled from flags by `training.train`.

Functions take a `Config` (or its fields), never flags, so tests and other entry points build
one directly. The defaults are those of the flags.
"""

import dataclasses

from pipeline import tokenizers
from pipeline.batch_plans import BATCHINGS
from pipeline.paths import absolute
from pipeline.sources import with_absolute_path

TASKS = ("lm", "classify")
MODELS = ("lstm", "gru", "rnn")
POOLINGS = ("last", "mean", "max", "concat")
SELECT_METRICS = ("loss", "accuracy")
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


class ConfigError(ValueError):
  """An invalid flag or combination of flags; the message names the flag."""


@dataclasses.dataclass(frozen=True)
class Config:
  # Objective and model.
  task: str = "lm"
  model: str = "lstm"
  num_layers: int = 1
  hidden_size: int = 128
  embed_size: int = 32
  dropout: float = 0.0
  word_dropout: float = 0.0  # a token's whole embedding, dropped with this probability in training
  variational_dropout: bool = (
    False  # --dropout's units dropped for a whole window, not per time step
  )
  head_widths: tuple[int, ...] = (128,)
  pooling: str = "last"
  bidirectional: bool = False  # classify: a backward layer beside each forward one
  tie_embeddings: bool = False  # the next-token layer reuses the embedding matrix
  # The next-token softmax predicts only the N most frequent tokens (rarer ones are read with
  # embeddings of their own, and predicted as <unk>): a large vocabulary for what follows (a
  # classifier's rare words) at the cost of a small softmax; 0: the whole vocabulary.
  softmax_vocab_size: int = 0
  # lm: read the text from its end to its start, predicting each token from what follows it (a
  # backward language model, for a bidirectional classifier's backward stack). classify: read
  # each sequence from its last token to its first (started from such a model by --init_from).
  read_backward: bool = False
  # classify, bidirectional: the backward stack reads an embedding of its own (set by
  # --init_backward_from: each language model learnt its own).
  backward_embedding: bool = False
  lm_loss_weight: float = 0.0  # classify: add this times the next-token loss of the same text
  init_from: str = ""  # classify: a trained language model's workdir; its encoder and vocabulary
  # classify, bidirectional: a backward language model's workdir (--read_backward, trained on the
  # same data as --init_from's); its embedding and layers start the backward stack.
  init_backward_from: str = ""
  # classify: the first N steps train per token only, on the classifier's own training text
  # (ULMFiT's second stage, target-task LM fine-tuning); per sequence from step N + 1.
  target_lm_steps: int = 0
  num_classes: int = 0  # 0: one more than the largest training label
  # > 0: the gated cells' gate biases drawn for dependencies of up to N steps (chrono
  # initialisation, Tallec & Ollivier 2018; `cells.chrono_bias`); 0: constant biases (the LSTM's
  # forget gate at 1).
  chrono_init: int = 0
  unroll: int = 1
  recurrent_backward: str = "fused"  # or "autodiff": jax.grad of the scan (the reference)
  # The LSTM's time loop: "onednn" (the fused kernel PyTorch uses on x86-64 CPUs), "scan" (the
  # portable JAX layer), or "auto": onednn where it is installed and applies (training.model.kernels).
  recurrent_kernel: str = "auto"
  remat: bool = False  # recompute in the backward pass what it would otherwise keep (long windows)
  # Data.
  train_data: str = ""  # "" means the task's embedded default (DEFAULT_DATA)
  eval_data: str = ""  # the dev split: evaluations and model selection
  test_data: str = ""  # the test split: evaluated once, at the end, with the selected parameters
  tokenizer: str = "char"
  vocab_size: int = 0  # 0: every token of the training data
  text_field: str = "text"
  label_field: str = "label"
  tfds_data_dir: str = ""
  data_workers: int = 2
  utf8_errors: str = "strict"  # or "replace" (with a warning naming the file and line)
  encoding: str = "utf-8"  # of text files (e.g. latin-1)
  batching: str = "pad"  # classify: "pad" to seq_len, "bucket" by length, or "pack" rows
  bucket_boundaries: tuple[int, ...] = ()  # bucket: () chooses up to 8 from the data's lengths
  batch_tokens: int = 0  # bucket: rows per batch = batch_tokens // width (0: --batch_size rows)
  max_segments: int = 32  # pack: sequences per row at most
  batch_size: int = 32  # global, over all devices and processes
  parallelism: str = "jit"  # or "shard_map": the same step written per device
  steps_per_call: int = 1  # train steps run inside one call of the compiled step (fewer dispatches)
  seq_len: int = 64
  carry_state: bool = True
  # Optimisation.
  num_steps: int = 1000
  learning_rate: float = 3e-3
  warmup_steps: int = 0
  lr_decay: str = "none"
  weight_decay: float = 0.0
  grad_clip: float = 1.0
  # Fine-tuning a pretrained encoder (ULMFiT's discriminative learning rates and, in its simplest
  # form, gradual unfreezing): the encoder's step is this times the rest's ...
  encoder_lr_scale: float = 1.0
  # ... and it is not updated at all for the first N steps of per-sequence training (after
  # --target_lm_steps), while the new head settles.
  freeze_encoder_steps: int = 0
  # The token embeddings (a pretrained LM's, under --init_from) stay as they start for the whole
  # run: words of the dev and test text that training never shows keep their places beside the
  # words it moved.
  freeze_embeddings: bool = False
  # Each step also trains on the batch with every sequence's embeddings moved against the model,
  # by this fraction of their norm (adversarial training, training/loop/adversarial.py); 0: off.
  adversarial_epsilon: float = 0.0
  # An exponential moving average of the parameters (Polyak averaging), evaluated, selected,
  # tested and served in their place; 0: none.
  ema_decay: float = 0.0
  seed: int = 0
  # Reporting and checkpoints.
  log_every: int = 50
  eval_every: int = 250  # 0: only at the end
  eval_steps: int = 0  # 0: the whole eval set
  checkpoint_every: int = 250
  keep_checkpoints: int = 3
  async_checkpointing: bool = True
  restore_step: int = 0  # 0: the latest readable checkpoint
  select_metric: str = ""  # the eval metric that picks the best checkpoint; "": the task's default
  patience: int = 0  # stop after this many evaluations without a better one (0: never)
  # Faults.
  on_nonfinite: str = "stop"  # a non-finite loss or gradient: "stop" the run, or "skip" the update
  inject_nan_at_step: int = 0  # testing aid: make step N's loss NaN (0: never)

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
    config.select_metric in ("",) + SELECT_METRICS,
    "select_metric",
    f"unknown value {config.select_metric!r}; expected one of {', '.join(SELECT_METRICS)}",
  )
  _require(
    config.selection_metric() != "accuracy" or config.task == "classify",
    "select_metric",
    "accuracy is measured for --task=classify only; use loss",
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
