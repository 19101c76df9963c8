"""The training loop: data, model and steps wired together, with evaluation, checkpoints and
reports. `train_and_evaluate(config, workdir)` is the whole job."""

import contextlib
import dataclasses
import functools
import math
import os
from collections.abc import Callable

import jax
import numpy as np
from absl import logging

from training.bookkeeping.checkpoints import Checkpointer
from training.bookkeeping.class_report import for_every_row, format_report, scalar_metrics
from training.bookkeeping.metrics_log import MetricsLog, param_fingerprint, write_json
from training.bookkeeping.reports import ProgressBar, TrainReporter, add_sums
from training.bookkeeping.run_config import record_run
from training.bookkeeping.workdir import WorkdirLock, free_bytes, require_free_space
from training.config import CLASS_F1_PREFIX, Config, ConfigError
from training.loop import parallel
from training.loop.data import RunData, prepare_data
from training.loop.final_config import resolve_config
from training.loop.objectives import FAST_PATHS, OBJECTIVES, combine_sums, finalize_metrics, no_sums
from training.loop.preemption import PreemptionWatch
from training.loop.pretrained import (
  copy_vocabulary,
  initial_backward_params,
  initial_params,
)
from training.loop.selection import ModelSelection
from training.loop.step_groups import BatchGroups, steps_in_next_call
from training.loop.steps import bind_steps
from training.model.build import build_model
from training.model.kernels.time_loop import ONEDNN, TimeLoop, choose_time_loop
from training.model.models import zero_carry
from training.state import (
  TrainState,
  eval_params,
  initial_state_fn,
  make_optimizer_for,
  schedule_for,
  with_params,
)


@dataclasses.dataclass
class Steps:
  abstract_state: TrainState  # shapes and dtypes of the train state, before any is allocated
  initial_state: Callable[[], TrainState]  # the state from `--seed`, sharded over the mesh
  # (state, global batch, window's metric sums) -> (state, the sums with this step's), compiled
  # with shardings; a window starts from `no_sums(a local batch)`.
  train_fn: Callable
  # The same for several consecutive batches of one shape, stacked [steps, ...], in one call.
  train_steps_fn: Callable
  no_sums: Callable[[dict], dict]
  eval_fn: Callable  # (params, global batch, carry) -> (metric sums, carry)
  mesh: jax.sharding.Mesh
  time_loop: TimeLoop  # what every recurrent layer runs

  def train(
    self, state: TrainState, local_batches: list[dict], window_sums: dict
  ) -> tuple[TrainState, dict]:
    """One step per batch of `local_batches` (this process's rows; all of one shape), in one call."""
    if len(local_batches) == 1:
      return self.train_fn(
        state, parallel.train_step_batch(local_batches[0], self.mesh), window_sums
      )
    return self.train_steps_fn(
      state, parallel.stacked_train_batches(local_batches, self.mesh), window_sums
    )


def build_steps(config: Config, vocab_size: int, num_classes: int, mesh, token_bytes=None) -> Steps:
  """The model's train and eval steps on `mesh`, and its initial state (the trainer's, and the
  benchmarks' so that they measure exactly what the trainer runs). `token_bytes` (a language
  model's `Vocabulary.byte_lengths`) adds bits per byte to its metrics."""
  time_loop = choose_time_loop(config, mesh.devices.size)
  model = build_model(config, vocab_size, num_classes, time_loop.name)
  optimizer = make_optimizer_for(config)
  objective = OBJECTIVES[config.task]
  if config.task == "lm" and token_bytes is not None:
    objective = functools.partial(objective, token_bytes=np.asarray(token_bytes, np.float32))
  train_step, eval_step = bind_steps(
    model=model,
    optimizer=optimizer,
    objective=objective,
    inject_nan_at_step=config.inject_nan_at_step,
    axis_name=parallel.DATA_AXIS if config.parallelism == "shard_map" else None,
    lm_loss_weight=config.lm_loss_weight,
    target_lm_steps=config.target_lm_steps,
    # The reference (autodiff) layer has one time loop only.
    fast_path=FAST_PATHS[config.task] if config.recurrent_backward == "fused" else None,
    adversarial_epsilon=config.adversarial_epsilon,
  )
  # Jitted so that it is traced once, for its shapes here and for the sharded call below.
  init_state = jax.jit(initial_state_fn(config, model, optimizer))
  rng = jax.random.PRNGKey(config.seed)
  abstract_state = jax.eval_shape(init_state, rng)
  shardings = parallel.shardings_of(parallel.state_specs(abstract_state), mesh)
  train_fn, train_steps_fn, sums_shapes = parallel.compile_train_step(
    train_step, abstract_state, mesh, config.parallelism, combine_sums
  )
  return Steps(
    abstract_state,
    lambda: jax.jit(init_state, out_shardings=shardings)(rng),
    train_fn,
    train_steps_fn,
    _no_sums_fn(sums_shapes, mesh),
    jax.jit(eval_step),
    mesh,
    time_loop,
  )


def recurrent_layers(params: dict) -> list[str]:
  """The names of a model's recurrent layers ("encoder/layer_0", "encoder/backward_layer_0", ...)."""
  return [f"encoder/{name}" for name in params["encoder"] if "layer_" in name]


def time_loop_record(time_loop: TimeLoop, params: dict, onednn_calls_before: dict | None) -> dict:
  """What `summary.json` says of the time loop: each recurrent layer's, why not oneDNN's where
  it was not, and how often this process ran oneDNN's kernel during the run (the evidence that
  it did; zeros when the scan ran)."""
  record = {
    "layers": dict.fromkeys(recurrent_layers(params), time_loop.name),
    "why_not_onednn": time_loop.why_not_onednn,
  }
  if onednn_calls_before is not None:
    from training.model.kernels import onednn

    record["onednn_calls"] = {
      kind: count - onednn_calls_before[kind] for kind, count in onednn.calls().items()
    }
  return record


def onednn_calls_now(time_loop: TimeLoop) -> dict | None:
  """The kernel's call counts in this process so far, where the run uses it (else None)."""
  if time_loop.name != ONEDNN:
    return None
  from training.model.kernels import onednn

  return onednn.calls()


def _no_sums_fn(sums_shapes, mesh) -> Callable[[dict], dict]:
  """local batch -> the sums of no step, replicated over `mesh`: a log window's start. Their
  shapes come from tracing the step once, on the first batch's global shapes (they are the same
  for every batch)."""
  made = []

  def no_sums_for(local_batch):
    if not made:
      shapes = sums_shapes(local_batch)
      made.append(jax.jit(lambda: no_sums(shapes), out_shardings=parallel.replicated(mesh)))
    return made[0]()

  return no_sums_for


def evaluate(
  eval_fn,
  params,
  batches: Callable,
  config: Config,
  mesh,
  initial_carry,
  split: str = "eval",
  class_names=None,
) -> dict:
  """Metrics over one pass of `batches()` (the dev split: at most `eval_steps` batches; the test
  split: all of it); per-token evaluation carries the state across windows from
  `initial_carry` (zeros). A classifier's (`class_names`) include the per-class report."""
  carry = initial_carry
  totals = None
  limit = config.eval_steps if split == "eval" else 0
  bar = ProgressBar(limit or None, 0, split, jax.process_index() == 0, unit="batch")
  for index, local_batch in enumerate(batches()):
    if limit and index >= limit:
      break
    sums, carry = eval_fn(params, parallel.global_batch(local_batch, mesh), carry)
    totals = add_sums(totals, sums)
    bar.update()
  bar.close()
  return finalize_metrics(totals, class_names)


SET_ASIDE_DIR = "set_aside_checkpoints"


class TrainingError(RuntimeError):
  """The run cannot go on (e.g. a non-finite loss); the message names the step."""


def _checkpoint_bytes(state) -> int:
  return sum(math.prod(leaf.shape) * leaf.dtype.itemsize for leaf in jax.tree.leaves(state))


def train_and_evaluate(config: Config, workdir: str) -> dict:
  """Trains (resuming from `workdir` when it holds a checkpoint), evaluates, returns the summary.

  A run stopped by SIGTERM or Ctrl-C saves a checkpoint at the step it reached and returns
  `{"step": ..., "preempted": True}` without evaluating; the same call resumes it. A workdir that
  another run is using is refused (`WorkdirLock`).
  """
  processes, devices = jax.process_count(), jax.device_count()
  config, workdir = resolve_config(config, workdir, devices)
  logging.info("Workdir: %s", workdir)
  with WorkdirLock(workdir, enabled=jax.process_index() == 0):
    return _train_and_evaluate(config, workdir, processes, devices)


def _train_and_evaluate(config: Config, workdir: str, processes: int, devices: int) -> dict:
  is_lead = jax.process_index() == 0
  if is_lead:
    before = record_run(config, workdir, processes, devices)
    if before and before != {"processes": processes, "devices": devices}:
      logging.info(
        "Resuming a run trained by %d process(es) and %d devices on %d process(es) and %d devices",
        before["processes"],
        before["devices"],
        processes,
        devices,
      )
  if config.init_from:
    copy_vocabulary(config.init_from, workdir)
  data = prepare_data(config, workdir)
  _require_selected_class(config, data.class_names)
  mesh = parallel.make_mesh()

  steps = build_steps(
    config, len(data.vocab), data.num_classes, mesh, token_bytes=data.vocab.byte_lengths()
  )
  logging.info(
    "Time loop of %s: %s",
    ", ".join(recurrent_layers(steps.abstract_state.params)),
    steps.time_loop.describe(),
  )
  onednn_calls_before = onednn_calls_now(steps.time_loop)
  require_free_space(workdir, free_bytes(workdir), _checkpoint_bytes(steps.abstract_state))
  checkpointer = Checkpointer(
    os.path.join(workdir, "checkpoints"),
    max_to_keep=config.keep_checkpoints,
    async_save=config.async_checkpointing,
  )
  state, start_step = _starting_state(config, workdir, steps, checkpointer)
  evaluator = Evaluator(steps.eval_fn, data, config, mesh)
  # Global batch `step` comes next, on any topology.
  train_batches = BatchGroups(data.train_batches(start_step))
  metrics_log = MetricsLog(
    os.path.join(workdir, "metrics.jsonl"), start_step, enabled=is_lead, tensorboard_dir=workdir
  )
  reporter = TrainReporter(
    metrics_log,
    schedule_for(config),
    start_step,
    config.num_steps,
    is_lead,
    check=lambda sums: _check_finite(sums, config.on_nonfinite, checkpointer),
  )
  selection = ModelSelection(
    workdir,
    metric=config.selection_metric(),
    eval_every=config.eval_every,
    patience=config.patience,
    resume_step=start_step,
    set_aside_dir=os.path.join(workdir, SET_ASIDE_DIR),
    enabled=data.eval_batches is not None,
  )

  step, evaluated_at, eval_metrics = start_step, None, {}
  # Several processes on CPUs (gloo collectives) deadlocked with tens of steps dispatched ahead
  # (a 2 x 2 job of a 20,000-word LM hung for good before its first log line at --log_every=50):
  # there, each step waits for the last. Accelerators keep dispatching ahead.
  steps_in_flight_limited = jax.process_count() > 1 and jax.default_backend() == "cpu"
  preemption = PreemptionWatch()
  preempted, calls = False, 0
  stopped_early = selection.patience_exhausted(step)  # a run that stopped early stays stopped
  try:
    while step < config.num_steps and not stopped_early:
      batches = train_batches.take(
        steps_in_next_call(step, config.steps_per_call, lambda s: _loop_acts_at(s, config))
      )
      state, window_sums = steps.train(
        state, batches, reporter.window_sums(lambda: steps.no_sums(batches[0]))
      )
      step, calls = step + len(batches), calls + 1
      if steps_in_flight_limited:
        jax.block_until_ready(window_sums)
      checkpointer.check_save()  # a save that failed in the background stops the run here
      reporter.add(window_sums, parallel.global_shape(batches[0]["inputs"].shape))
      # The window closed a step ago is written now that this step is queued behind it. Skipped
      # steps are reported once per window; a step that must stop the run stops it here.
      reporter.write_closed_window()
      preempted = preemption.should_stop(calls)
      log_now = _logs_at(step, config) or preempted
      save_now = _saves_at(step, config) or preempted
      eval_now = _evaluates_at(step, config) and not preempted
      if log_now:
        reporter.close_window(step)
      if save_now or eval_now:
        # Rows come before evaluations, and a step that must stop the run is caught before any
        # save, so a checkpoint never follows it.
        reporter.write_closed_window()
        if save_now and config.on_nonfinite == "stop":
          reporter.check_open_window()
      if eval_now:
        if data.eval_batches is not None:
          eval_metrics, evaluated_at = (
            _evaluate_and_select(evaluator, state, step, reporter, selection),
            step,
          )
          stopped_early = selection.patience_exhausted(step)
        reporter.restart_clock()
      if save_now or stopped_early:
        checkpointer.save(state)
      if preempted:
        break
  except BaseException:
    with contextlib.suppress(Exception):  # the error being raised matters more than a last row
      reporter.write_closed_window()
    reporter.close()  # keep what was reported (TensorBoard buffers its events)
    selection.close()
    raise
  finally:
    preemption.close()
    checkpointer.wait_until_finished()  # Never exit with a save half done.
    checkpointer.close()

  if preempted:
    reporter.close()
    selection.close()
    logging.warning("Stopped at step %d; checkpoint saved. Run the same command to resume.", step)
    return {"step": step, "preempted": True}
  if stopped_early:
    logging.info(
      "Stopped early at step %d: %d evaluations without a better %s than step %d's",
      step,
      config.patience,
      selection.metric,
      selection.best["step"],
    )
  if evaluated_at != step:  # (an early stop has just evaluated this step)
    eval_metrics = _evaluate_and_select(evaluator, state, step, reporter, selection)
  test_metrics = _evaluate_test(evaluator, state, step, selection)
  if test_metrics is not None:
    chosen_step = selection.best["step"] if selection.best else step
    metrics_log.write(
      {
        "step": step,
        "split": "test",
        "parameters_of_step": chosen_step,
        **for_every_row(test_metrics),
      }
    )
  if is_lead:
    _log_class_reports(selection.summary(), test_metrics)
  reporter.close()
  selection.close()
  summary = {
    "step": step,
    "train_loss": reporter.last_train["loss"]
    if reporter.last_train
    else metrics_log.last_train_loss(),
    "eval": eval_metrics,
    "best": selection.summary(),
    "test": test_metrics,
    "stopped_early": stopped_early,
    "param_fingerprint": param_fingerprint(state.params),
    "time_loop": time_loop_record(steps.time_loop, state.params, onednn_calls_before),
    **metrics_log.batching_summary(),
    "truncated_examples": data.truncated_examples,
  }
  if is_lead:
    write_json(os.path.join(workdir, "summary.json"), summary)
  return summary


def _require_selected_class(config: Config, class_names) -> None:
  """`--select_metric=f1:CLASS` names one of the run's classes."""
  metric = config.selection_metric()
  if metric.startswith(CLASS_F1_PREFIX) and metric[len(CLASS_F1_PREFIX) :] not in (
    class_names or ()
  ):
    raise ConfigError(
      f"--select_metric={metric}: no class {metric[len(CLASS_F1_PREFIX) :]!r}; the run's"
      f" classes are {', '.join(class_names or ())}"
    )


def _loop_acts_at(step: int, config: Config) -> bool:
  """Whether the loop does more than train after `step` (logs, saves or evaluates; the last step
  logs and saves): a call of several steps (`--steps_per_call`) ends at such a step."""
  return _logs_at(step, config) or _saves_at(step, config) or _evaluates_at(step, config)


def _logs_at(step: int, config: Config) -> bool:
  return step % config.log_every == 0 or step == config.num_steps


def _saves_at(step: int, config: Config) -> bool:
  return step % config.checkpoint_every == 0 or step == config.num_steps


def _evaluates_at(step: int, config: Config) -> bool:
  """Whether the loop evaluates on the dev split after `step`: every `--eval_every` steps, but
  not after the last (the run evaluates it after the loop) nor in the per-token steps of
  `--target_lm_steps` (the classifier's head has not been trained yet)."""
  return (
    bool(config.eval_every)
    and step % config.eval_every == 0
    and config.target_lm_steps < step < config.num_steps
  )


def _starting_state(
  config: Config, workdir: str, steps: Steps, checkpointer: Checkpointer
) -> tuple[TrainState, int]:
  """(state, step): the latest readable checkpoint's, else a new run's (from `--seed`, or with a
  language model's encoder under `--init_from`, and a backward one's under `--init_backward_from`)."""
  state = steps.initial_state()
  restored, start_step = checkpointer.restore_readable(
    state, restore_step=config.restore_step, set_aside_dir=os.path.join(workdir, SET_ASIDE_DIR)
  )
  if restored is not None:
    logging.info("Resumed from the checkpoint at step %d in %s", start_step, workdir)
    return restored, start_step
  if config.init_from:
    params = initial_params(config.init_from, state.params)
    if config.init_backward_from:
      params = initial_backward_params(config.init_backward_from, params)
    state = with_params(state, params)
  return state, 0


class Evaluator:
  """Evaluations of given parameters on the dev split and on the test split."""

  def __init__(self, eval_fn, data: RunData, config: Config, mesh):
    self._eval_fn, self._data, self._config, self._mesh = eval_fn, data, config, mesh
    self._carry = None
    if config.task == "lm":
      # Made by a jitted function so that every process builds its part of one global array.
      self._carry = jax.jit(
        lambda: zero_carry(config.model, config.num_layers, config.batch_size, config.hidden_size),
        out_shardings=parallel.carry_sharding(mesh),
      )()

  def dev(self, params) -> dict | None:
    if self._data.eval_batches is None:
      return None
    return evaluate(
      self._eval_fn,
      params,
      self._data.eval_batches,
      self._config,
      self._mesh,
      self._carry,
      class_names=self._data.class_names,
    )

  @property
  def has_test(self) -> bool:
    return self._data.test_batches is not None

  def test(self, params) -> dict:
    return evaluate(
      self._eval_fn,
      params,
      self._data.test_batches,
      self._config,
      self._mesh,
      self._carry,
      "test",
      self._data.class_names,
    )


def _evaluate_and_select(
  evaluator: Evaluator, state, step: int, reporter: TrainReporter, selection: ModelSelection
) -> dict:
  metrics = evaluator.dev(eval_params(state))
  if metrics is None:
    return {}
  reporter.log_eval(step, metrics)
  selection.observe(step, metrics, state)
  return metrics


def _evaluate_test(
  evaluator: Evaluator, state, step: int, selection: ModelSelection
) -> dict | None:
  """The test split, read once, with the parameters the dev split chose (the final ones when
  there is no dev split)."""
  if not evaluator.has_test:
    return None
  chosen_step = selection.best["step"] if selection.best else step
  params = eval_params(selection.best_state(state) if selection.best else state)
  metrics = evaluator.test(params)
  logging.info(
    "test (parameters of step %d): %s",
    chosen_step,
    "  ".join(f"{k} {v:.4f}" for k, v in scalar_metrics(metrics).items()),
  )
  return metrics


def _log_class_reports(best: dict | None, test: dict | None) -> None:
  """The classifier's reports as tables, at the end of the run: the dev evaluation that chose the
  parameters, and the test split read with them."""
  if best and "per_class" in best["eval"]:
    logging.info(
      "%s", format_report(best["eval"], f"dev, step {best['step']} (best):", "summary.json")
    )
  if test and "per_class" in test:
    logging.info("%s", format_report(test, "test:", "summary.json"))


def _check_finite(sums, on_nonfinite: str, checkpointer: Checkpointer) -> None:
  """Warns of skipped updates, or stops the run, for a log window's metric sums (on the host)."""
  nonfinite, first = sums["nonfinite"], sums["first_nonfinite_step_min"]
  if not nonfinite:
    return
  if on_nonfinite == "skip":
    logging.warning(
      "Skipped %d update(s) with a non-finite loss or gradient (the first at step %d).",
      int(nonfinite),
      int(first),
    )
    return
  latest = checkpointer.latest_step()
  raise TrainingError(
    f"step {int(first)}: the loss or gradients are not finite; stopped. The last"
    f" checkpoint ({'step ' + str(latest) if latest else 'none yet'}) is intact;"
    " lower --learning_rate or --grad_clip, or pass --on_nonfinite=skip"
  )
