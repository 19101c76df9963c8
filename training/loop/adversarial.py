"""Adversarial training on the embeddings (Miyato, Dai & Goodfellow 2017, "Adversarial Training
Methods for Semi-Supervised Text Classification"; `--adversarial_epsilon`).

Each step also trains on the same batch with every sequence's embeddings moved a small step in
the direction that raises its loss fastest: the gradient of the loss with respect to the
embeddings, rescaled per sequence. The update follows the sum of the clean loss and this
adversarial loss. Words cannot be perturbed, their embeddings can; the model learns to give
the same answer to sentences whose meaning is a little off in the worst direction, a
regulariser that the paper found to hold back the overfitting of fine-tuned LSTM classifiers.

The step's size, per sequence: `epsilon` times the L2 norm of that sequence's own embeddings
(over its tokens and units). The paper fixes the norm and normalises the embeddings instead, so
that a model cannot grow its embeddings until the perturbation no longer matters; a size
relative to the embeddings has the same effect without changing the model, and means the same
for any embedding width, sequence length or pretrained scale. A packed row's sequences are
perturbed each at its own size; padding is never perturbed.

The cost is a second forward and backward pass per step. The direction comes from the clean
pass's backward pass (the gradient with respect to the embeddings falls out of it through
`flax.linen.Module.perturb`, see `models.Encoder`), so two passes suffice.
"""

import jax
import jax.numpy as jnp

from training.model.models import EMBEDDING_PERTURBATIONS


def perturbed_tables(params) -> dict:
  """{name `Module.perturb` gives an embedding's output: its table} for each embedding table the
  model's encoder has."""
  return {
    name: table for table, name in EMBEDDING_PERTURBATIONS.items() if table in params["encoder"]
  }


def zero_perturbations(model, params, inputs) -> dict:
  """A zero perturbation [T, B, E] (time-major, as the encoder embeds) for each embedding the
  model's encoder reads, under the names `Module.perturb` gives them."""
  shape = (inputs.shape[1], inputs.shape[0], model.config.embed_size)
  return {"encoder": {name: jnp.zeros(shape, jnp.float32) for name in perturbed_tables(params)}}


def sequence_norms(x, groups):
  """x [T, B, E], groups [B, T] (1..S: which sequence of its row a position holds; 0: none) ->
  [T, B, 1]: at each position the L2 norm of its sequence's part of `x` (0 where none)."""
  length, batch = groups.shape[1], groups.shape[0]
  slots = length + 1  # a row holds at most one sequence per position, plus slot 0 for padding
  ids = groups.T + slots * jnp.arange(batch)[None, :]  # [T, B]: a slot per (row, sequence)
  squares = jax.ops.segment_sum(jnp.sum(x * x, axis=-1).reshape(-1), ids.reshape(-1), batch * slots)
  norms = jnp.sqrt(squares)[ids]
  return jnp.where(groups.T > 0, norms, 0.0)[..., None]


def perturbation(gradient, embeddings, groups, epsilon: float):
  """The adversarial perturbation of one embedding's output: `gradient` [T, B, E] rescaled per
  sequence to `epsilon` times the norm of that sequence's `embeddings` [T, B, E]."""
  # One scale for the whole array first: a gradient of 1e-20 would square to zero in float32.
  gradient = gradient / jnp.maximum(jnp.max(jnp.abs(gradient)), jnp.finfo(jnp.float32).tiny)
  direction = gradient / jnp.maximum(sequence_norms(gradient, groups), 1e-12)
  return epsilon * sequence_norms(embeddings, groups) * direction


def sequence_groups(batch) -> jax.Array:
  """[B, T]: which sequence each position holds (a classifier's segments; a language model's
  window is one sequence per row), 0 for padding."""
  if "segment_ids" in batch:
    return batch["segment_ids"]
  return batch["mask"].astype(jnp.int32)


def value_and_grad(loss_fn, params, model, batch, epsilon: float):
  """`jax.value_and_grad(loss_fn, has_aux=True)(params, model)`'s result for the clean loss plus
  the adversarial one. `loss_fn(params, model, perturbations)` -> (loss, (metric sums, carry)).

  Returns ((clean + adversarial loss, (clean sums with `adversarial_loss_sum`, clean carry)),
  gradients of that sum with respect to `params`)."""
  zeros = zero_perturbations(model, params, batch["inputs"])
  (loss, (sums, carry)), (grads, embedding_grads) = jax.value_and_grad(
    loss_fn, argnums=(0, 2), has_aux=True
  )(params, model, zeros)
  groups = sequence_groups(batch)
  worst = {
    "encoder": {
      name: perturbation(
        embedding_grads["encoder"][name], _embedded(params, table, batch["inputs"]), groups, epsilon
      )
      for name, table in perturbed_tables(params).items()
    }
  }
  # The perturbation is a constant of the second pass: it is an argument that pass does not
  # differentiate, so no gradient reaches the parameters through it.
  (adversarial_loss, (adversarial_sums, _)), adversarial_grads = jax.value_and_grad(
    loss_fn, has_aux=True
  )(params, model, worst)
  sums = dict(sums, adversarial_loss_sum=adversarial_sums["loss_sum"])
  return (loss + adversarial_loss, (sums, carry)), jax.tree.map(jnp.add, grads, adversarial_grads)


def _embedded(params, table: str, inputs):
  """The embedding table's output for `inputs` [B, T], time-major [T, B, E] (before dropout, where
  the perturbation is added). Only its per-sequence norms are used, which reading a sequence
  backwards in place (`--read_backward`) leaves as they are."""
  return jnp.take(params["encoder"][table]["embedding"], inputs.T, axis=0)
