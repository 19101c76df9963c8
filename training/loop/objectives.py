"""The two ways to train a recurrent net, as losses over one batch.

Each returns *sums* (not means) in a small dict: the loss summed over what it is averaged
over, and `weight`, that count. Sums add up across batches, devices and hosts; the mean is
taken once, at the end (`finalize_metrics`), so that a padded batch or device never weighs
as much as a full one.

- per token (`lm`): next-token cross-entropy at every real position, averaged over real
  tokens;
- per sequence (`classify`): cross-entropy of one label per sequence, averaged over real
  examples, with the number of correct predictions for accuracy and the confusion matrix of
  true against predicted classes (counts, so that they add up exactly across batches, devices
  and hosts; `class_report` derives precision, recall and F1 from it).
"""

import math

import jax
import jax.numpy as jnp
import optax

from pipeline.tokenizers import UNK
from training.bookkeeping.class_report import class_report
from training.model.models import fast_path_applies, segment_resets


def token_cross_entropy(logits, targets, mask, token_bytes=None) -> dict:
  """logits [B, T, V], targets [B, T] int, mask [B, T] bool -> sums over real tokens.

  A target outside the softmax (a token rarer than the V it predicts, `--softmax_vocab_size`)
  is to be predicted as `<unk>`, as if the vocabulary ended at V. With `token_bytes` [vocabulary]
  (the UTF-8 bytes of text each id stands for, `Vocabulary.byte_lengths`), also the bytes the
  real targets cover, `byte_sum`: bits per byte compare models whatever their tokenizer."""
  weights = mask.astype(jnp.float32)
  sums = {}
  if token_bytes is not None:
    sums["byte_sum"] = (jnp.asarray(token_bytes)[targets] * weights).sum()
  targets = jnp.where(targets < logits.shape[-1], targets, UNK)
  losses = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
  return {"loss_sum": (losses * weights).sum(), "weight": weights.sum(), **sums}


def sequence_cross_entropy(logits, labels, example_mask) -> dict:
  """logits [..., C], labels [...] int, example_mask [...] bool -> sums over real examples."""
  losses = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
  weights = example_mask.astype(jnp.float32)
  predicted = jnp.argmax(logits, axis=-1)
  correct = (predicted == labels).astype(jnp.float32)
  num_classes = logits.shape[-1]
  true_one_hot = jax.nn.one_hot(labels.reshape(-1), num_classes) * weights.reshape(-1, 1)
  predicted_one_hot = jax.nn.one_hot(predicted.reshape(-1), num_classes)
  return {
    "loss_sum": (losses * weights).sum(),
    "weight": weights.sum(),
    "correct_sum": (correct * weights).sum(),
    # [true class, predicted class] counts; exact in float32 up to 2^24 examples per cell (the
    # products are 0 or 1 and HIGHEST keeps an accelerator from rounding them through bfloat16).
    "confusion_sum": jnp.einsum(
      "nt,np->tp", true_one_hot, predicted_one_hot, precision=jax.lax.Precision.HIGHEST
    ),
  }


def model_variables(params, perturbations=None) -> dict:
  """What `model.apply` reads: the parameters, and perturbations of the embeddings' outputs
  where given (`models.EMBEDDING_PERTURBATIONS`; adversarial training)."""
  return (
    {"params": params}
    if perturbations is None
    else {"params": params, "perturbations": perturbations}
  )


def lm_loss(model, params, batch, carry, rngs, train: bool, perturbations=None, token_bytes=None):
  """Per-token objective. Returns (sums, carry after the window)."""
  # Rows that start a new stream (first window of an epoch, or no carrying) start from zeros.
  carry = jnp.where(batch["resets"][None, None, :, None], 0.0, carry)
  logits, carry = model.apply(
    model_variables(params, perturbations),
    batch["inputs"],
    batch["mask"],
    carry,
    train=train,
    rngs=rngs,
  )
  return token_cross_entropy(logits, batch["targets"], batch["mask"], token_bytes), carry


def classify_loss(model, params, batch, carry, rngs, train: bool, perturbations=None):
  """Per-sequence objective. Returns (sums, None): nothing is carried between batches.

  A classifier with a next-token head (`--lm_loss_weight`) also returns the per-token sums of
  the same text as `lm_loss_sum` and `lm_weight`; the train step adds them in with their weight.
  """
  del carry
  args = (batch["inputs"], batch["mask"], batch["segment_ids"], batch["segment_ends"])
  if not model.config.next_token_head:
    logits = model.apply(model_variables(params, perturbations), *args, train=train, rngs=rngs)
    return sequence_cross_entropy(logits, batch["labels"], batch["example_mask"]), None
  logits, token_logits = model.apply(
    model_variables(params, perturbations), *args, train=train, rngs=rngs, token_logits=True
  )
  sums = sequence_cross_entropy(logits, batch["labels"], batch["example_mask"])
  targets, has_target = next_tokens_within_segments(batch["inputs"], batch["segment_ids"])
  tokens = token_cross_entropy(token_logits, targets, has_target)
  return dict(sums, lm_loss_sum=tokens["loss_sum"], lm_weight=tokens["weight"]), None


def next_tokens_within_segments(inputs, segment_ids):
  """Each position's next token, and whether it has one in the same sequence (a packed row's
  next sequence is not a continuation; a sequence's last token has no target)."""
  targets = jnp.pad(inputs[:, 1:], ((0, 0), (0, 1)))
  following = jnp.pad(segment_ids[:, 1:], ((0, 0), (0, 1)))
  return targets, (segment_ids > 0) & (following == segment_ids)


OBJECTIVES = {"lm": lm_loss, "classify": classify_loss}


def lm_fast_path(batch):
  """Whether every recurrent layer may take its fast time loop on this batch
  (`models.RecurrentLayer.path`): a language model's layers see the batch's mask, no resets."""
  return fast_path_applies(batch["mask"].T, None, final_carry_used=True)


def classify_fast_path(batch):
  """The same for a classifier, whose layers also restart where a packed sequence begins."""
  resets = segment_resets(batch["segment_ids"], batch["mask"])
  return fast_path_applies(batch["mask"].T, resets.T, final_carry_used=False)


FAST_PATHS = {"lm": lm_fast_path, "classify": classify_fast_path}


def combine_sums(total: dict, new: dict) -> dict:
  """Two steps' (or windows') sums as one: added, but `*_min` entries keep their minimum."""
  return {
    name: (jnp.minimum if name.endswith("_min") else jnp.add)(total[name], new[name])
    for name in total
  }


def no_sums(abstract_sums: dict) -> dict:
  """Sums of no step at all, shaped like `abstract_sums`: zeros, and for `*_min` entries the
  dtype's largest value (what `combine_sums` leaves any step's own minimum under)."""

  def identity(name, leaf):
    if not name.endswith("_min"):
      return jnp.zeros(leaf.shape, leaf.dtype)
    info = jnp.iinfo if jnp.issubdtype(leaf.dtype, jnp.integer) else jnp.finfo
    return jnp.full(leaf.shape, info(leaf.dtype).max, leaf.dtype)

  return {name: identity(name, leaf) for name, leaf in abstract_sums.items()}


def finalize_metrics(sums: dict, class_names=None) -> dict:
  """Means from summed metrics: `loss` (nats), and `accuracy` where predictions were counted.
  With `class_names` (a classifier's evaluation), also its per-class precision, recall, F1 and
  support, their macro and weighted averages, and the confusion matrix (`class_report`)."""
  sums = jax.device_get(sums)
  weight = max(float(sums["weight"]), 1.0)
  metrics = {"loss": float(sums["loss_sum"]) / weight}
  if "correct_sum" in sums:
    metrics["accuracy"] = float(sums["correct_sum"]) / weight
  if (
    "adversarial_loss_sum" in sums
  ):  # the loss with the embeddings perturbed (--adversarial_epsilon)
    metrics["adversarial_loss"] = float(sums["adversarial_loss_sum"]) / weight
  if "lm_loss_sum" in sums:
    metrics["lm_loss"] = float(sums["lm_loss_sum"]) / max(float(sums["lm_weight"]), 1.0)
  if "byte_sum" in sums:  # the summed loss in bits over the UTF-8 bytes of the text covered
    metrics["bits_per_byte"] = (
      float(sums["loss_sum"]) / math.log(2) / max(float(sums["byte_sum"]), 1.0)
    )
  if class_names is not None and "confusion_sum" in sums:
    metrics.update(class_report(sums["confusion_sum"], class_names))
  return metrics
