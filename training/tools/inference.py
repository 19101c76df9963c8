"""Inference with a trained run (`training.bookkeeping.trained_run.load_run`): `sample` from a
language model, `predict` and `class_probabilities` of a classifier. The commands `rnn-generate`,
`rnn-predict` and `rnn-ensemble` wrap them.
"""

import functools
from collections.abc import Iterable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from pipeline.sequence_batches import encode_all
from pipeline.tokenizers import EOS, Vocabulary
from training.bookkeeping.trained_run import TrainedRun
from training.model.models import zero_carry


def encode_batch(
  texts: list[str], vocab: Vocabulary, seq_len: int
) -> tuple[jax.Array, jax.Array, int]:
  """Token ids [N, W] and mask of `texts`, each truncated to `seq_len` tokens as in training
  (W: the longest, at most `seq_len`); also how many were truncated."""
  encoded = encode_all([{"text": text} for text in texts], vocab)  # as in training: empty -> <unk>
  truncated = sum(len(i) > seq_len for i in encoded)
  ids = [i[:seq_len] for i in encoded]
  width = max(len(i) for i in ids)
  tokens = jnp.array([list(i) + [0] * (width - len(i)) for i in ids], jnp.int32)
  mask = jnp.arange(width)[None, :] < jnp.array([len(i) for i in ids])[:, None]
  return tokens, mask, truncated


def sample(
  run: TrainedRun,
  prompt: str,
  length: int,
  *,
  temperature: float = 1.0,
  top_k: int = 0,
  seed: int = 0,
) -> str:
  """`length` tokens sampled after `prompt` from a trained language model; from a backward one
  (`--read_backward`), the tokens before `prompt`, in reading order.

  The prompt is read in one pass; then one step per new token from the carried state (a jitted
  `lax.scan` of single steps), never re-reading the prompt. `temperature=0` is greedy.
  """
  config, model = run.config, run.model
  backward = config.read_backward
  prompt_ids = run.vocab.encode(prompt)
  if backward:
    prompt_ids = prompt_ids[::-1]
  # A document starts after <eos> in training streams (a backward model's: its end), so the
  # prompt goes on from there.
  ids = jnp.concatenate([jnp.array([EOS], jnp.int32), jnp.asarray(prompt_ids)])[None]
  carry = zero_carry(config.model, config.num_layers, 1, config.hidden_size)
  apply = functools.partial(model.apply, {"params": run.params}, train=False)
  logits, carry = jax.jit(apply)(ids, jnp.ones(ids.shape, bool), carry)

  @functools.partial(jax.jit, static_argnums=0)
  def continue_from(steps, logits, carry, key):
    def step(state, key):
      logits, carry = state
      logits = logits.astype(jnp.float32)
      if top_k:
        kth = jax.lax.top_k(logits, min(top_k, logits.shape[-1]))[0][..., -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
      if temperature > 0:
        token = jax.random.categorical(key, logits / temperature)
      else:
        token = jnp.argmax(logits, axis=-1)
      next_logits, carry = apply(token[:, None], jnp.ones((1, 1), bool), carry)
      return (next_logits[:, 0], carry), token[0]

    return jax.lax.scan(step, (logits, carry), jax.random.split(key, steps))[1]

  tokens = [int(t) for t in continue_from(length, logits[:, -1], carry, jax.random.PRNGKey(seed))]
  return run.vocab.decode(tokens[::-1] if backward else tokens)


_WIDTH_MULTIPLE = 16


def class_probabilities(
  run: TrainedRun, texts: Iterable[str], batch_size: int = 64
) -> Iterator[np.ndarray]:
  """float32 [C] per text, in order: every class's probability under the run's classifier.

  Texts are tokenised with the run's vocabulary and truncated to its `seq_len`, as in training.
  """

  @jax.jit
  def probabilities(tokens, mask):
    lengths = mask.sum(axis=1)
    logits = run.model.apply(
      {"params": run.params},
      tokens,
      mask,
      mask.astype(jnp.int32),
      (lengths - 1)[:, None],
      train=False,
    )
    return jax.nn.softmax(logits[:, 0].astype(jnp.float32), axis=-1)

  batch, truncated = [], 0

  def flush():
    nonlocal truncated
    tokens, mask, cut = encode_batch(batch, run.vocab, run.config.seq_len)
    truncated += cut
    # Padded to a few shapes (rows to the batch size, width to a multiple of 16) so that a few
    # compiles serve every batch: each new shape costs a compile, a padded row or step nothing
    # that changes a real row's result (masked, as in training).
    rows, width = tokens.shape
    padding = ((0, batch_size - rows), (0, -width % _WIDTH_MULTIPLE))
    row_probabilities = probabilities(jnp.pad(tokens, padding), jnp.pad(mask, padding))
    yield from jax.device_get(row_probabilities[:rows])
    batch.clear()

  for text in texts:
    batch.append(text)
    if len(batch) == batch_size:
      yield from flush()
  if batch:
    yield from flush()
  if truncated:
    logging.warning(
      "%d sequences were longer than --seq_len=%d tokens and were truncated, as in training",
      truncated,
      run.config.seq_len,
    )


def predict(run: TrainedRun, texts: Iterable[str], batch_size: int = 64) -> Iterator[dict]:
  """One prediction per text, in order: label name and id, and every class's probability."""
  names = [run.labels.name(i) for i in range(run.labels.num_classes)]
  for row in class_probabilities(run, texts, batch_size):
    best = int(row.argmax())
    yield {
      "label": names[best],
      "label_id": best,
      "probabilities": {name: round(float(p), 6) for name, p in zip(names, row)},
    }
