"""The training loop: data, model and steps wired together, with evaluation, checkpoints and
reports. `train_and_evaluate(config, workdir)` is the whole job."""

import json
import math
import os
import time

import jax
import jax.numpy as jnp
from absl import logging

from pipeline.paths import absolute
from training import parallel
from training.checkpoints import Checkpointer
from training.config import Config, ConfigError, validate
from training.data import RunData, prepare_data
from training.metrics_log import MetricsLog, param_fingerprint, write_json
from training.models import LanguageModel, SequenceClassifier, zero_carry
from training.objectives import OBJECTIVES, finalize_metrics
from training.preemption import PreemptionWatch
from training.train_state import bind_steps, create_train_state, make_optimizer
from training.workdir import check_writable, free_bytes, require_free_space

RUN_CONFIG_FILE = "run_config.json"


def build_model(config: Config, vocab_size: int, num_classes: int):
  common = dict(vocab_size=vocab_size, embed_size=config.embed_size, hidden_size=config.hidden_size,
                num_layers=config.num_layers, cell=config.model, dropout_rate=config.dropout,
                unroll=config.unroll, backward=config.recurrent_backward)
  if config.task == "lm":
    return LanguageModel(**common)
  return SequenceClassifier(num_classes=num_classes, head_widths=tuple(config.head_widths),
                            pooling=config.pooling, **common)


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
  return make_optimizer(learning_rate=config.learning_rate, num_steps=config.num_steps,
                        warmup_steps=config.warmup_steps, lr_decay=config.lr_decay,
                        weight_decay=config.weight_decay, grad_clip=config.grad_clip)


def check_run_config(config: Config, workdir: str) -> None:
  """Refuses to resume a workdir whose model was made with other model flags."""
  path = os.path.join(workdir, RUN_CONFIG_FILE)
  current = json.loads(json.dumps(config.model_fields()))  # tuples as lists, as saved
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      saved = json.load(f)
    for name, value in current.items():
      if name in saved and saved[name] != value:
        raise ConfigError(f"--{name}={value} differs from {saved[name]} of the run in {workdir};"
                          " resume with the same model flags or use a new --workdir")
  elif jax.process_index() == 0:
    write_json(path, {**current, "full_config": json.loads(json.dumps(config.__dict__))})


@jax.jit
def _accumulate(total, new):
  # One dispatch per step for all the metrics, not one per metric (which an accelerator feels).
  return {name: (jnp.minimum if name.endswith("_min") else jnp.add)(total[name], new[name]) for name in total}


def _add(total, new):
  """Accumulates metric sums; `*_min` entries keep their minimum instead."""
  return new if total is None else _accumulate(total, new)


def evaluate(eval_fn, params, data: RunData, config: Config, mesh, initial_carry) -> dict:
  """Metrics over the eval set (or its first `eval_steps` batches); per-token evaluation
  carries the state across windows from `initial_carry` (zeros)."""
  carry = initial_carry
  totals = None
  for index, local_batch in enumerate(data.eval_batches()):
    if config.eval_steps and index >= config.eval_steps:
      break
    sums, carry = eval_fn(params, parallel.global_batch(local_batch, mesh), carry)
    totals = _add(totals, sums)
  return finalize_metrics(totals)


def _format_duration(seconds: float) -> str:
  seconds = int(seconds)
  return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class TrainingError(RuntimeError):
  """The run cannot go on (e.g. a non-finite loss); the message names the step."""


def _checkpoint_bytes(state) -> int:
  return sum(math.prod(leaf.shape) * leaf.dtype.itemsize for leaf in jax.tree.leaves(state))


def train_and_evaluate(config: Config, workdir: str) -> dict:
  """Trains (resuming from `workdir` when it holds a checkpoint), evaluates, returns the summary.

  A run stopped by SIGTERM or Ctrl-C saves a checkpoint at the step it reached and returns
  `{"step": ..., "preempted": True}` without evaluating; the same call resumes it.
  """
  # Relative paths (workdir, data, TFDS dir) are resolved once, here: Orbax needs absolute ones.
  workdir, config = absolute(workdir), config.with_absolute_paths()
  validate(config, jax.device_count())
  check_writable(workdir)
  logging.info("Workdir: %s", workdir)
  is_lead = jax.process_index() == 0
  check_run_config(config, workdir)
  data = prepare_data(config, workdir)
  mesh = parallel.make_mesh()

  model = build_model(config, len(data.vocab), data.num_classes)
  optimizer = make_optimizer_for(config)
  objective = OBJECTIVES[config.task]
  train_step, eval_step = bind_steps(
      model=model, optimizer=optimizer, objective=objective, inject_nan_at_step=config.inject_nan_at_step,
      axis_name=parallel.DATA_AXIS if config.parallelism == "shard_map" else None)

  init_state = initial_state_fn(config, model, optimizer)
  rng = jax.random.PRNGKey(config.seed)
  abstract_state = jax.eval_shape(init_state, rng)
  require_free_space(workdir, free_bytes(workdir), _checkpoint_bytes(abstract_state))
  state = jax.jit(init_state, out_shardings=parallel.shardings_of(parallel.state_specs(abstract_state), mesh))(rng)
  train_fn = parallel.compile_train_step(train_step, abstract_state, mesh, config.parallelism)
  eval_fn = jax.jit(eval_step)
  eval_carry = None
  if config.task == "lm":
    # Made by a jitted function so that every process builds its part of one global array.
    eval_carry = jax.jit(lambda: zero_carry(config.model, config.num_layers, config.batch_size,
                                            config.hidden_size), out_shardings=parallel.carry_sharding(mesh))()

  train_batches = data.train_batches()
  checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=config.keep_checkpoints,
                              async_save=config.async_checkpointing)
  restored, start_step = checkpointer.restore_readable(
      state, train_batches, restore_step=config.restore_step,
      set_aside_dir=os.path.join(workdir, "set_aside_checkpoints"))
  if restored is not None:
    state = restored
    logging.info("Resumed from the checkpoint at step %d in %s", start_step, workdir)
  metrics_log = MetricsLog(os.path.join(workdir, "metrics.jsonl"), start_step, enabled=is_lead)

  step, pending, window_start, last_train = start_step, None, time.perf_counter(), None
  window_shapes = set()  # global batch shapes the train step saw since the last log
  run_start, run_start_step = window_start, start_step
  preemption = PreemptionWatch()
  preempted = False
  try:
    while step < config.num_steps:
      batch = parallel.global_batch(next(train_batches), mesh)
      window_shapes.add(tuple(batch["inputs"].shape))
      state, metrics = train_fn(state, batch)
      step += 1
      checkpointer.check_save()  # a save that failed in the background stops the run here
      pending = _add(pending, metrics)
      preempted = preemption.should_stop(step)
      log_now = step % config.log_every == 0 or step == config.num_steps or preempted
      save_now = step % config.checkpoint_every == 0 or step == config.num_steps or preempted
      if log_now or (save_now and config.on_nonfinite == "stop"):
        # Skipped steps are reported once per log window; a step that must stop the run is
        # also caught before any save, so a checkpoint never follows it.
        _check_finite(pending, config.on_nonfinite, checkpointer)
      if log_now:
        now = time.perf_counter()
        last_train = _log_train(metrics_log, step, pending, window_shapes, now - window_start,
                                (now - run_start) / (step - run_start_step) * (config.num_steps - step),
                                config.num_steps)
        pending, window_start, window_shapes = None, now, set()
      if (config.eval_every and step % config.eval_every == 0 and step < config.num_steps
          and not preempted):
        if data.eval_batches is not None:
          _log_eval(metrics_log, step, evaluate(eval_fn, state.params, data, config, mesh, eval_carry))
        window_start = time.perf_counter()  # Evaluation time is not training throughput.
      if save_now:
        checkpointer.save(state, train_batches)
      if preempted:
        break
  finally:
    preemption.close()
    checkpointer.wait_until_finished()  # Never exit with a save half done.
    checkpointer.close()

  if preempted:
    logging.warning("Stopped at step %d; checkpoint saved. Run the same command to resume.", step)
    return {"step": step, "preempted": True}
  eval_metrics = {}
  if data.eval_batches is not None:
    eval_metrics = evaluate(eval_fn, state.params, data, config, mesh, eval_carry)
    _log_eval(metrics_log, step, eval_metrics)
  summary = {
      "step": step,
      "train_loss": last_train["loss"] if last_train else metrics_log.last_train_loss(),
      "eval": eval_metrics,
      "param_fingerprint": param_fingerprint(state.params),
      **metrics_log.batching_summary(),
      "truncated_examples": data.truncated_examples,
  }
  if is_lead:
    write_json(os.path.join(workdir, "summary.json"), summary)
  return summary


def _check_finite(pending, on_nonfinite: str, checkpointer: Checkpointer) -> None:
  nonfinite, first = jax.device_get((pending["nonfinite"], pending["first_nonfinite_step_min"]))
  if not nonfinite:
    return
  if on_nonfinite == "skip":
    logging.warning("Skipped %d update(s) with a non-finite loss or gradient (the first at step %d).",
                    int(nonfinite), int(first))
    return
  latest = checkpointer.latest_step()
  raise TrainingError(f"step {int(first)}: the loss or gradients are not finite; stopped. The last"
                      f" checkpoint ({'step ' + str(latest) if latest else 'none yet'}) is intact;"
                      " lower --learning_rate or --grad_clip, or pass --on_nonfinite=skip")


def _log_train(metrics_log, step, sums, batch_shapes, seconds, eta_seconds, num_steps) -> dict:
  sums = jax.device_get(sums)
  real, fed = float(sums["real_tokens"]), float(sums["fed_tokens"])
  row = {"step": step, "split": "train", **finalize_metrics(sums),
         "tokens_per_sec": real / max(seconds, 1e-9),
         "padding_efficiency": real / max(fed, 1.0),
         "grad_norm": float(sums["grad_norm_sum"]) / max(float(sums["steps"]), 1.0),
         "real_tokens": int(real), "fed_tokens": int(fed),
         "batch_shapes": sorted(list(shape) for shape in batch_shapes)}
  metrics_log.write(row)
  accuracy = f"  acc {row['accuracy']:.3f}" if "accuracy" in row else ""
  logging.info("step %d/%d  loss %.4f%s  %.0f tok/s  eta %s", step, num_steps, row["loss"],
               accuracy, row["tokens_per_sec"], _format_duration(eta_seconds))
  return row


def _log_eval(metrics_log, step, metrics) -> None:
  metrics_log.write({"step": step, "split": "eval", **metrics})
  logging.info("eval at step %d: %s", step, "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
