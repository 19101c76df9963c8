"""The pure train and eval steps: `train_step(state, batch) -> (state, metrics)` and
`eval_step(params, batch, carry)`, and `bind_steps`, which fixes everything but their arrays."""

import functools

import jax
import jax.numpy as jnp
import optax

from training.loop import adversarial
from training.model.models import with_path
from training.state import TrainState


def train_step(
  state: TrainState,
  batch: dict,
  *,
  model,
  optimizer,
  objective,
  inject_nan_at_step: int = 0,
  axis_name: str | None = None,
  lm_loss_weight: float = 0.0,
  target_lm_steps: int = 0,
  fast_path=None,
  adversarial_epsilon: float = 0.0,
):
  """One update on one batch. Returns (new state, metric sums for this batch).

  Under `jax.jit` (`axis_name=None`) the batch is global and XLA inserts the gradient
  all-reduce. Under `jax.shard_map` the batch is this device's rows and `axis_name` is the
  data axis: each device divides its loss sum by the *global* weight (real tokens or
  sequences), so that the `psum` of the devices' gradients is the gradient of the global mean
  and a device holding mostly padding weighs no more than its real tokens.

  A step whose loss or gradients are not finite leaves the state as it was (but counts the
  step, so the data moves on) and reports itself in `nonfinite` / `first_nonfinite_step_min`:
  the loop then stops or carries on, as `--on_nonfinite` says. Either way no NaN reaches the
  parameters, and so none reaches a checkpoint.

  A classifier's loss is its per-sequence loss plus `lm_loss_weight` times its per-token loss;
  in its first `target_lm_steps` steps it is the per-token loss alone (the head is not trained).

  `fast_path(batch)`, where given, says whether every recurrent layer may take its fast
  time loop on this batch (`models.RecurrentLayer.path`); the step then differentiates the model
  with one loop or the other, picked once for the batch, instead of letting each layer pick
  (whose `lax.cond` would keep the residuals of both loops for the backward pass).
  """
  total = (
    (lambda tree: jax.tree.map(lambda x: jax.lax.psum(x, axis_name), tree))
    if axis_name
    else (lambda tree: tree)
  )
  dropout_rng = jax.random.fold_in(state.rng, state.step)
  if axis_name:
    # Own mask per device
    dropout_rng = jax.random.fold_in(dropout_rng, jax.lax.axis_index(axis_name))
  step_number = state.step + 1  # 1-based, as logged

  def loss_fn(params, model, perturbations=None):
    sums, carry = objective(
      model, params, batch, state.carry, {"dropout": dropout_rng}, True, perturbations
    )
    loss = sums["loss_sum"] / jnp.maximum(total(sums["weight"]), 1.0)
    if "lm_loss_sum" in sums:  # a classifier's per-token loss on the same text
      token_loss = sums["lm_loss_sum"] / jnp.maximum(total(sums["lm_weight"]), 1.0)
      per_token_only = step_number <= target_lm_steps
      loss = (
        jnp.where(per_token_only, 0.0, loss)
        + jnp.where(per_token_only, 1.0, lm_loss_weight) * token_loss
      )
    if inject_nan_at_step:
      loss = jnp.where(step_number == inject_nan_at_step, jnp.nan, loss)
    return loss, (sums, carry)

  def gradients(model):
    if adversarial_epsilon > 0:
      return adversarial.value_and_grad(loss_fn, state.params, model, batch, adversarial_epsilon)
    return jax.value_and_grad(loss_fn, has_aux=True)(state.params, model)

  if fast_path is None:
    (loss, (sums, carry)), grads = gradients(model)
  else:
    applies = fast_path(batch)
    if axis_name:  # every device takes the same branch, so that the psums inside it pair up
      applies = jax.lax.pmin(applies.astype(jnp.int32), axis_name) == 1
    (loss, (sums, carry)), grads = jax.lax.cond(
      applies,
      lambda: gradients(with_path(model, "fast")),
      lambda: gradients(with_path(model, "general")),
    )
  loss, grads, sums = total(loss), total(grads), total(sums)
  grad_norm = optax.tree.norm(grads)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  keep_if_finite = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
  params, opt_state = (
    keep_if_finite(params, state.params),
    keep_if_finite(opt_state, state.opt_state),
  )
  if carry is not None:
    # Truncated BPTT: the next window starts from this state, but gradients stop here.
    carry = keep_if_finite(jax.lax.stop_gradient(carry), state.carry)
  sums = {name: jnp.where(finite, value, 0.0) for name, value in sums.items()}
  metrics = dict(
    sums,
    real_tokens=total(batch["mask"].sum(dtype=jnp.float32)),
    fed_tokens=total(jnp.float32(batch["mask"].size)),
    grad_norm_sum=jnp.where(finite, grad_norm, 0.0),
    steps=finite.astype(jnp.float32),
    nonfinite=1.0 - finite.astype(jnp.float32),
    first_nonfinite_step_min=jnp.where(finite, jnp.iinfo(jnp.int32).max, step_number),
  )
  return state.replace(step=step_number, params=params, opt_state=opt_state, carry=carry), metrics


def eval_step(params, batch: dict, carry, *, model, objective):
  """Metric sums on one batch without dropout; returns (sums, carry for the next window)."""
  return objective(model, params, batch, carry, {}, False)


def bind_steps(
  *,
  model,
  optimizer,
  objective,
  inject_nan_at_step: int = 0,
  axis_name: str | None = None,
  lm_loss_weight: float = 0.0,
  target_lm_steps: int = 0,
  fast_path=None,
  adversarial_epsilon: float = 0.0,
):
  """The two steps with their static parts bound, ready for `jax.jit` (or `jax.shard_map`)."""
  return (
    functools.partial(
      train_step,
      model=model,
      optimizer=optimizer,
      objective=objective,
      inject_nan_at_step=inject_nan_at_step,
      axis_name=axis_name,
      lm_loss_weight=lm_loss_weight,
      target_lm_steps=target_lm_steps,
      fast_path=fast_path,
      adversarial_epsilon=adversarial_epsilon,
    ),
    functools.partial(eval_step, model=model, objective=objective),
  )
