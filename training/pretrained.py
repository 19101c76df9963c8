"""Per token, then per sequence: a classifier that starts from a trained language model
(`--init_from=LM_WORKDIR`, as in Dai & Le 2015 and ULMFiT).

The classifier takes from the language model's run
- its architecture (`ADOPTED_FIELDS`: cell, layers, widths, tokenizer), so that the encoders match;
- its vocabulary (`vocab.json`, copied into the classifier's workdir on the first run);
- its parameters, on the first run only (a resumed run restores its own checkpoint): the
  `encoder` (embedding and forward layers) and, when the classifier keeps training per token
  (`--lm_loss_weight`, `--target_lm_steps`), the `lm_head`. What the LM does not have (the classifier's head, a
  bidirectional encoder's backward stack) starts from the seed as usual.

The language model's parameters are its best checkpoint on its dev split when it kept one,
else its latest (`inference.load_run`).
"""

import dataclasses
import os

import jax
import numpy as np
from absl import logging

from pipeline import paths
from training.config import Config, ConfigError
from training.data import VOCAB_FILE

ADOPTED_FIELDS = ("model", "num_layers", "hidden_size", "embed_size", "tokenizer", "vocab_size", "tie_embeddings",
                  "softmax_vocab_size")
SHARED_MODULES = ("encoder", "lm_head")


def adopt_architecture(config: Config) -> Config:
  """`config` with the language model's architecture (the flags for it are overridden)."""
  from training.inference import load_config  # (inference imports the trainer)

  lm = load_config(config.init_from)
  if lm.task != "lm":
    raise ConfigError(f"--init_from={config.init_from}: that run trained --task={lm.task}; a classifier"
                      " starts from a language model's run (--task=lm)")
  adopted = {name: getattr(lm, name) for name in ADOPTED_FIELDS}
  changed = {name: value for name, value in adopted.items() if getattr(config, name) != value}
  if changed:
    logging.info("From --init_from: %s", "  ".join(f"--{k}={v}" for k, v in changed.items()))
  return dataclasses.replace(config, **adopted)


def copy_vocabulary(init_from: str, workdir: str) -> None:
  """The language model's vocabulary becomes the run's (once: a resumed run keeps its own)."""
  target = os.path.join(workdir, VOCAB_FILE)
  if not paths.exists(target) and jax.process_index() == 0:
    paths.make_dirs(workdir)
    paths.write_bytes(target, paths.read_bytes(os.path.join(init_from, VOCAB_FILE)))


def initial_params(init_from: str, params):
  """`params` with every leaf under `SHARED_MODULES` that the language model has, with the same
  shape, taken from it (placed like the leaf it replaces)."""
  from training.inference import load_run

  lm = load_run(init_from)
  lm_leaves = {jax.tree_util.keystr(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(lm.params)[0]}
  taken, kept = [], []

  def take(path, leaf):
    name = jax.tree_util.keystr(path)
    source = lm_leaves.get(name)
    if path[0].key not in SHARED_MODULES or source is None or source.shape != leaf.shape:
      kept.append(name)
      return leaf
    taken.append(name)
    return jax.device_put(np.asarray(source, leaf.dtype), leaf.sharding)  # every process holds it

  params = jax.tree_util.tree_map_with_path(take, params)
  logging.info("Initialised from the language model in %s (step %d): %d parameter arrays taken, %d new"
               " (%s)", lm.workdir, lm.step, len(taken), len(kept), ", ".join(kept) or "none")
  if not taken:
    raise ConfigError(f"--init_from={init_from}: no parameter of that run fits this model")
  return params
