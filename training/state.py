"""The train state and its optimiser: what a checkpoint holds, and how a run makes its first one
(the template that restoring a checkpoint also needs)."""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import struct

from training.config import Config
from training.model.models import zero_carry


@struct.dataclass
class TrainState:
  """Everything that decides the next step, and so everything a checkpoint holds (with the
  data iterator's position)."""

  step: jax.Array  # int32 scalar: number of updates applied
  params: Any
  opt_state: Any
  rng: jax.Array  # base PRNG key; step s uses fold_in(rng, s), so resuming repeats it exactly
  carry: Any  # per-token training: hidden state [L, S, B, H] carried to the next window; else None


def eval_params(state: TrainState):
  """The parameters a run evaluates and serves: their moving average where one is kept
  (`--ema_decay`; it lives in the optimiser state, see `average_params`)."""
  average = optax.tree.get(state.opt_state, "params_average")
  return state.params if average is None else average


def with_params(state: TrainState, params) -> TrainState:
  """`state` with new starting parameters (`--init_from`), their moving average included."""
  opt_state = state.opt_state
  if optax.tree.get(opt_state, "params_average") is not None:
    # A copy: the train step donates its state, and one buffer may not be donated twice.
    opt_state = optax.tree.set(opt_state, params_average=jax.tree.map(jnp.copy, params))
  return state.replace(params=params, opt_state=opt_state)


class ParamsAverage(NamedTuple):
  count: jax.Array  # updates averaged
  params_average: Any


def average_params(decay: float) -> optax.GradientTransformation:
  """Keeps an exponential moving average of the parameters as the transforms before it leave
  them (it goes last in the chain) and leaves the updates alone. In the optimiser state rather
  than a train state field of its own: a run without it keeps checkpoints as they always were."""

  def init(params):
    return ParamsAverage(count=jnp.zeros((), jnp.int32), params_average=params)

  def update(updates, state, params):
    count = state.count + 1
    average = updated_average(
      state.params_average, optax.apply_updates(params, updates), decay, count
    )
    return updates, ParamsAverage(count=count, params_average=average)

  return optax.GradientTransformation(init, update)


def updated_average(average, params, decay: float, step):
  """One step of the moving average. Its decay grows from 0.1 at step 1 towards `decay`
  ((1 + step) / (10 + step), as TensorFlow's ExponentialMovingAverage with num_updates), so that
  early averages are not dominated by the initial parameters."""
  rate = jnp.minimum(decay, (1.0 + step) / (10.0 + step))
  return jax.tree.map(lambda a, p: rate * a + (1.0 - rate) * p, average, params)


def make_schedule(*, learning_rate: float, num_steps: int, warmup_steps: int, lr_decay: str):
  """The learning rate: optional linear warm-up, then constant or cosine decay (a plain float
  when constant, which keeps the optimiser state, and so checkpoints, as they always were)."""
  if lr_decay == "cosine" and warmup_steps == 0:
    # The same values as the warm-up version below with no warm-up, without its zero-step linear
    # schedule, which made optax log a line about it in every such run.
    return optax.cosine_decay_schedule(learning_rate, max(num_steps, 1))
  if lr_decay == "cosine":
    return optax.warmup_cosine_decay_schedule(
      0.0, learning_rate, warmup_steps, max(num_steps, warmup_steps + 1)
    )
  if warmup_steps > 0:
    return optax.linear_schedule(0.0, learning_rate, warmup_steps)
  return learning_rate


def learning_rate_at(schedule, step: int) -> float:
  return float(schedule(step)) if callable(schedule) else float(schedule)


def make_optimizer(
  *,
  learning_rate: float,
  num_steps: int,
  warmup_steps: int,
  lr_decay: str,
  weight_decay: float,
  grad_clip: float,
  encoder_lr_scale: float = 1.0,
  freeze_encoder_steps: int = 0,
  freeze_encoder_from: int = 0,
  freeze_embeddings: bool = False,
  ema_decay: float = 0.0,
) -> optax.GradientTransformation:
  """AdamW with optional linear warm-up and cosine decay, after global-norm clipping.

  `encoder_lr_scale`, `freeze_encoder_steps`: the parameters under `encoder` take steps this
  many times smaller, and none in the `freeze_encoder_steps` steps after the first
  `freeze_encoder_from` (fine-tuning a pretrained encoder; those first steps are the
  per-token ones of `--target_lm_steps`, where the encoder must learn). Only when asked for:
  the optimiser state, and so checkpoints, are otherwise as they always were.
  `freeze_embeddings`: the token embeddings take no step at all (weight decay included), and
  their gradient counts nowhere (not in the clipping norm, not in Adam's moments).
  `ema_decay`: the state also keeps a moving average of the parameters (`average_params`).
  """
  schedule = make_schedule(
    learning_rate=learning_rate, num_steps=num_steps, warmup_steps=warmup_steps, lr_decay=lr_decay
  )
  transforms = [optax.clip_by_global_norm(grad_clip)] if grad_clip > 0 else []
  transforms.append(optax.adamw(schedule, weight_decay=weight_decay))
  if encoder_lr_scale != 1.0 or freeze_encoder_steps > 0:
    frozen = lambda update: (
      (update >= freeze_encoder_from) & (update < freeze_encoder_from + freeze_encoder_steps)
    )
    encoder_scale = lambda update: jnp.where(frozen(update), 0.0, encoder_lr_scale)
    transforms.append(optax.masked(optax.scale_by_schedule(encoder_scale), _encoder_mask))
  if freeze_embeddings:
    # The frozen embeddings leave the optimiser before anything else sees their gradient: it
    # neither counts in the clipping norm (where it would shrink every other step) nor keeps
    # Adam moments (a 30,000 x 256 table's, twice), and weight decay never reaches them.
    transforms = [
      optax.multi_transform(
        {"trains": optax.chain(*transforms), "frozen": optax.set_to_zero()}, _embedding_labels
      )
    ]
  if ema_decay > 0:
    transforms.append(average_params(ema_decay))
  return optax.chain(*transforms)


EMBEDDINGS = ("embed", "backward_embed")  # the encoder's token embeddings (models.Encoder)


def _path_mask(params, selects):
  """A mask of `params` for `optax.masked`: True where `selects` holds for a leaf's key names
  (outermost first: `("encoder", "embed", "embedding")`)."""
  return jax.tree_util.tree_map_with_path(
    lambda path, _: selects(tuple(key.key for key in path)), params
  )


def _embedding_mask(params):
  """True for the encoder's token embeddings, False elsewhere."""
  return _path_mask(params, lambda names: names[0] == "encoder" and names[1] in EMBEDDINGS)


def _embedding_labels(params):
  """`optax.multi_transform`'s labels: "frozen" for the token embeddings, "trains" elsewhere."""
  return jax.tree.map(lambda frozen: "frozen" if frozen else "trains", _embedding_mask(params))


def _encoder_mask(params):
  """True for every parameter of the encoder (embedding and recurrent stack), False elsewhere."""
  return _path_mask(params, lambda names: names[0] == "encoder")


def create_train_state(rng, model, optimizer, init_args: tuple, carry) -> TrainState:
  """Initialises parameters from `rng` on dummy model inputs `init_args` of the right shapes."""
  init_rng, state_rng = jax.random.split(rng)
  # Only the inputs' shapes matter: `lazy_init` leaves out the forward pass over them, which
  # `init` computed (a whole batch through the recurrent stack) and XLA compiled at every start.
  shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), init_args)
  params = model.lazy_init({"params": init_rng}, *shapes, train=False)["params"]
  return TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    opt_state=optimizer.init(params),
    rng=state_rng,
    carry=carry,
  )


def initial_state_fn(config: Config, model, optimizer):
  """rng -> the initial TrainState (parameters from `rng`, zero carried state for lm)."""

  def init_state(rng):
    carry = None
    if config.task == "lm":
      carry = zero_carry(config.model, config.num_layers, config.batch_size, config.hidden_size)
    tokens = jnp.zeros((config.batch_size, config.seq_len), jnp.int32)
    mask = jnp.ones((config.batch_size, config.seq_len), bool)
    if config.task == "lm":
      args = (tokens, mask, carry)
    else:
      args = (tokens, mask, mask.astype(jnp.int32), jnp.zeros((config.batch_size, 1), jnp.int32))
    return create_train_state(rng, model, optimizer, args, carry)

  return init_state


def make_optimizer_for(config: Config):
  return make_optimizer(
    learning_rate=config.learning_rate,
    num_steps=config.num_steps,
    warmup_steps=config.warmup_steps,
    lr_decay=config.lr_decay,
    weight_decay=config.weight_decay,
    grad_clip=config.grad_clip,
    encoder_lr_scale=config.encoder_lr_scale,
    freeze_encoder_steps=config.freeze_encoder_steps,
    freeze_embeddings=config.freeze_embeddings,
    freeze_encoder_from=config.target_lm_steps,
    ema_decay=config.ema_decay,
  )


def schedule_for(config: Config):
  return make_schedule(
    learning_rate=config.learning_rate,
    num_steps=config.num_steps,
    warmup_steps=config.warmup_steps,
    lr_decay=config.lr_decay,
  )
