"""Per token, then per sequence: a classifier that starts from a trained language model
(`--init_from=LM_WORKDIR`, as in Dai & Le 2015 and ULMFiT).

The classifier takes from the language model's run
- its architecture (`ADOPTED_FIELDS`: cell, layers, widths, tokenizer), so that the encoders match;
- its vocabulary (`vocab.json`, copied into the classifier's workdir on the first run);
- its parameters, on the first run only (a resumed run restores its own checkpoint): the
  `encoder` (embedding and forward layers) and, when the classifier keeps training per token
  (`--lm_loss_weight`, `--target_lm_steps`), the `lm_head`. What the LM does not have (the classifier's head, a
  bidirectional encoder's backward stack) starts from the seed as usual.

A bidirectional classifier's backward stack can start from a second language model, one that
read the same text backwards (`--read_backward`; `--init_backward_from=BACKWARD_LM_WORKDIR`): its
embedding and layers become the backward stack's own (`backward_embedding`), as ULMFiT and ELMo
pretrain both directions. The two must share the encoder's shapes and the vocabulary.

The language model's parameters are its best checkpoint on its dev split when it kept one,
else its latest (`inference.load_run`).
"""

import os

import jax
import numpy as np
from absl import logging

from pipeline import paths
from training.config import ConfigError
from training.loop.data import VOCAB_FILE

ADOPTED_FIELDS = (
  "model",
  "num_layers",
  "hidden_size",
  "embed_size",
  "tokenizer",
  "vocab_size",
  "tie_embeddings",
  "softmax_vocab_size",
)
SHARED_MODULES = ("encoder", "lm_head")
# What a backward language model must share with the forward one: the encoder's shapes and tokens.
ENCODER_FIELDS = ("model", "num_layers", "hidden_size", "embed_size", "tokenizer", "vocab_size")
# A backward LM's encoder, renamed to the bidirectional encoder's backward part.
BACKWARD_NAMES = (
  ("['encoder']['embed']", "['encoder']['backward_embed']"),
  ("['encoder']['layer_", "['encoder']['backward_layer_"),
)


def copy_vocabulary(init_from: str, workdir: str) -> None:
  """The language model's vocabulary becomes the run's (once: a resumed run keeps its own)."""
  target = os.path.join(workdir, VOCAB_FILE)
  if not paths.exists(target) and jax.process_index() == 0:
    paths.make_dirs(workdir)
    paths.write_bytes(target, paths.read_bytes(os.path.join(init_from, VOCAB_FILE)))


def initial_params(init_from: str, params):
  """`params` with every leaf under `SHARED_MODULES` that the language model has, with the same
  shape, taken from it (placed like the leaf it replaces)."""
  from training.bookkeeping.trained_run import load_run

  lm = load_run(init_from)
  offered = {
    jax.tree_util.keystr(path): leaf
    for path, leaf in jax.tree_util.tree_flatten_with_path(lm.params)[0]
    if path[0].key in SHARED_MODULES
  }
  return _take(params, offered, lm, "init_from")


def initial_backward_params(init_backward_from: str, params):
  """`params` with the backward stack and its embedding taken from the backward language model's
  encoder (`BACKWARD_NAMES`); the rest as they were."""
  from training.bookkeeping.trained_run import load_run

  lm = load_run(init_backward_from)
  offered = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(lm.params)[0]:
    name = jax.tree_util.keystr(path)
    for old, new in BACKWARD_NAMES:
      if name.startswith(old):
        offered[new + name[len(old) :]] = leaf
  return _take(params, offered, lm, "init_backward_from")


def _take(params, offered: dict, lm, flag: str):
  """`params` with each leaf that `offered` (the language model's leaves, by the names they take
  in this model) has, with the same shape, replaced by it (placed like the leaf it replaces)."""
  taken, kept = [], []

  def take(path, leaf):
    name = jax.tree_util.keystr(path)
    source = offered.get(name)
    if source is None or source.shape != leaf.shape:
      kept.append(name)
      return leaf
    taken.append(name)
    return jax.device_put(np.asarray(source, leaf.dtype), leaf.sharding)  # every process holds it

  params = jax.tree_util.tree_map_with_path(take, params)
  logging.info(
    "Initialised from the language model in %s (step %d, --%s): %d parameter arrays taken, %d kept"
    " as they were (%s)",
    lm.workdir,
    lm.step,
    flag,
    len(taken),
    len(kept),
    ", ".join(kept) or "none",
  )
  if not taken:
    raise ConfigError(f"--{flag}={lm.workdir}: no parameter of that run fits this model")
  return params
