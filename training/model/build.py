"""Building a model from a run's configuration: the class and keyword arguments a `Config`
gives (what an exported file stores), and the module itself."""

from training.config import Config
from training.model.models import model_from_spec


def model_spec(
  config: Config, vocab_size: int, num_classes: int, kernel: str = "scan"
) -> tuple[str, dict]:
  """(model class name, its keyword arguments): what `build_model` builds, in plain values
  (`training.tools.export` saves it, so that an exported file rebuilds the same model). `kernel`: the
  LSTM's time loop (`training.model.kernels.time_loop`); exported models keep the portable one."""
  kwargs = dict(
    vocab_size=vocab_size,
    embed_size=config.embed_size,
    hidden_size=config.hidden_size,
    num_layers=config.num_layers,
    cell=config.model,
    dropout_rate=config.dropout,
    unroll=config.unroll,
    backward=config.recurrent_backward,
    remat=config.remat,
  )
  if kernel != "scan":
    kwargs["kernel"] = kernel
  if config.tie_embeddings:
    kwargs["tie_embeddings"] = True
  if config.word_dropout:
    kwargs["word_dropout_rate"] = config.word_dropout
  if config.variational_dropout:
    kwargs["variational_dropout"] = True
  if config.softmax_vocab_size:
    kwargs["softmax_vocab_size"] = config.softmax_vocab_size
  if config.chrono_init:
    kwargs["chrono_max_length"] = config.chrono_init
  if config.task == "lm":
    return "LanguageModel", kwargs
  kwargs = dict(
    kwargs, num_classes=num_classes, head_widths=list(config.head_widths), pooling=config.pooling
  )
  if config.bidirectional:
    kwargs["bidirectional"] = True
  if config.backward_embedding:
    kwargs["backward_embedding"] = True
  if config.read_backward:
    kwargs["read_backward"] = True
  if config.lm_loss_weight > 0 or config.target_lm_steps > 0:
    kwargs["next_token_head"] = True  # per token and per sequence, at once or in turn
  return "SequenceClassifier", kwargs


def build_model(config: Config, vocab_size: int, num_classes: int, kernel: str = "scan"):
  name, kwargs = model_spec(config, vocab_size, num_classes, kernel)
  return model_from_spec(name, kwargs)
