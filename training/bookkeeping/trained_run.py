"""A finished (or stopped) run read back from its workdir: its config, vocabulary, labels, model
and parameters, for the tools and for a classifier started from a language model.

`load_run(workdir)` reads what the trainer wrote (`run_config.json`, `vocab.json`, `labels.json`,
`checkpoints/`, `best_checkpoint/`) and rebuilds the model exactly as trained, on this machine's
devices whatever the topology that trained it. It needs the model, the checkpoint and the
vocabulary, not the training loop.
"""

import dataclasses
import json
import os

import jax

from pipeline import paths
from pipeline.errors import DataError
from pipeline.labels import Labels
from pipeline.paths import absolute
from pipeline.prepared import LABELS_FILE, VOCAB_FILE
from pipeline.tokenizers import Vocabulary
from training.bookkeeping.checkpoints import BEST_DIR, Checkpointer, CheckpointError
from training.bookkeeping.run_config import RUN_CONFIG_FILE
from training.config import Config, config_from_fields
from training.model.build import build_model
from training.state import eval_params, initial_state_fn, make_optimizer_for


@dataclasses.dataclass
class TrainedRun:
  workdir: str
  config: Config
  vocab: Vocabulary
  labels: Labels | None  # classifiers only
  model: object  # the flax module
  params: dict
  step: int


def load_config(workdir: str) -> Config:
  path = os.path.join(workdir, RUN_CONFIG_FILE)
  try:
    saved = json.loads(paths.read_text(path))["full_config"]
  except (OSError, ValueError, KeyError) as e:
    raise DataError(
      f"--workdir={workdir}: no trained run there ({path}: {e.strerror if isinstance(e, OSError) else e})"
    ) from None
  return config_from_fields(saved)


def load_run(workdir: str, step: int = 0) -> TrainedRun:
  """The run in `workdir` at checkpoint `step`; 0: the best one (`best_checkpoint/`, chosen on
  the dev split) when the run kept one, else the latest."""
  workdir = absolute(workdir)
  config = load_config(workdir)
  vocab = Vocabulary.load(os.path.join(workdir, VOCAB_FILE))
  labels = Labels.load(os.path.join(workdir, LABELS_FILE)) if config.task == "classify" else None
  model = build_model(config, len(vocab), labels.num_classes if labels else 0)
  latest = Checkpointer(
    os.path.join(workdir, "checkpoints"), max_to_keep=config.keep_checkpoints, async_save=False
  )
  checkpointers = [latest]
  if paths.is_dir(
    os.path.join(workdir, BEST_DIR)
  ):  # (opening it would create it in a run without one)
    checkpointers.append(
      Checkpointer(os.path.join(workdir, BEST_DIR), max_to_keep=1, async_save=False)
    )
  try:
    steps = {s: c for c in checkpointers for s in c.all_steps()}  # a step in both: the best's
    best = checkpointers[1].all_steps() if len(checkpointers) > 1 else []
    if not steps:
      raise CheckpointError(f"--workdir={workdir}: no checkpoint yet in {latest.directory}")
    step = step or (max(best) if best else max(steps))
    if step not in steps:
      raise CheckpointError(
        f"--step={step}: no checkpoint at that step in {workdir}"
        f" (there are: {sorted(steps)}{f'; the best is {max(best)}' if best else ''})"
      )
    # The template fixes shapes; one device holds everything, whatever layout trained the model.
    init_state = initial_state_fn(config, model, make_optimizer_for(config))
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    template = jax.eval_shape(init_state, jax.random.PRNGKey(0))
    template = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), template
    )
    state = steps[step].restore_state(step, template)
  finally:
    for checkpointer in checkpointers:
      checkpointer.close()
  # The average, if kept
  return TrainedRun(workdir, config, vocab, labels, model, eval_params(state), step)
