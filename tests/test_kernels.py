"""oneDNN's fused LSTM (`training.model.kernels.onednn`) against the portable layer it replaces: the same
outputs, final state and gradients on full, right-padded and packed batches, in a layer, in a
classifier and in a whole training run; and which time loop each configuration gets.

The kernel tests fail where the kernel is promised (Linux x86-64, a CPU backend, a C++
compiler: tests/promises.py) and does not run, and skip elsewhere with the reason."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.promises import needs_onednn, onednn_promise
from training.config import Config, ConfigError
from training.loop.trainer import train_and_evaluate
from training.model.kernels import onednn
from training.model.kernels.time_loop import MIN_STEP_WORK, recurrent_kernel
from training.model.models import ModelConfig, RecurrentLayer, SequenceClassifier
from training.model.recurrence import scan_layer

pytestmark = pytest.mark.newest_jax  # also run on Python 3.13's jax (.ci/run)

T, B, D, H = 9, 3, 5, 4


def close(a, b, tol=2e-5):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=tol, atol=tol)


def random_lstm(seed=0):
  keys = jax.random.split(jax.random.PRNGKey(seed), 6)
  return (
    jax.random.normal(keys[0], (T, B, D)),
    0.5 * jax.random.normal(keys[1], (D, 4 * H)),
    0.5 * jax.random.normal(keys[2], (H, 4 * H)),
    0.5 * jax.random.normal(keys[3], (4 * H,)),
    jax.random.normal(keys[4], (B, H)),
    jax.random.normal(keys[5], (B, H)),
  )


def scan_lstm(x, w_x, w_h, b, h0, c0):
  """The portable layer's time loop, with the input projection the layer hoists before it."""
  x_gates = tuple(
    jnp.einsum("tbd,dh->tbh", x, w) + bias
    for w, bias in zip(jnp.split(w_x, 4, axis=-1), jnp.split(b, 4))
  )
  outputs, final = scan_layer(
    "lstm", 1, False, {"W_h": w_h}, x_gates, None, None, jnp.stack([h0, c0])
  )
  return outputs, final[0], final[1]


def weighted_sum(fn):
  """A loss that weighs every output, and both final states, differently."""

  def loss(*args):
    outputs, h, c = fn(*args)
    return (
      (jnp.sin(jnp.arange(outputs.size)).reshape(outputs.shape) * outputs).sum()
      + (jnp.cos(jnp.arange(h.size)).reshape(h.shape) * h).sum()
      + (c**2).sum()
    )

  return loss


@needs_onednn
def test_kernel_outputs_states_and_every_gradient_equal_the_scans():
  args = random_lstm()
  close(jax.jit(onednn.lstm)(*args), scan_lstm(*args))
  grads = jax.jit(jax.grad(weighted_sum(onednn.lstm), argnums=range(6)))(*args)
  close(grads, jax.grad(weighted_sum(scan_lstm), argnums=range(6))(*args))
  # The same call again (a cached primitive) gives the same bits.
  again = jax.jit(jax.grad(weighted_sum(onednn.lstm), argnums=range(6)))(*args)
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(again)))


@needs_onednn
@pytest.mark.parametrize("rows_split", [True, False])
@pytest.mark.parametrize("threads", ["1", "2", "3", "5"])
def test_every_split_of_the_batch_across_threads_gives_the_scans_results(
  monkeypatch, threads, rows_split
):
  """Small weights: a call splits the batch's rows into one group per thread (here 3 rows:
  groups of 3, 2 + 1, 1 + 1 + 1, and more threads than rows); each group's strided rows,
  workspace slice and summed weight gradients give what the scan gives. Large weights: one
  group, with an OpenMP team of every thread."""
  monkeypatch.setenv("RNN_KERNEL_THREADS", threads)
  if not rows_split:
    monkeypatch.setattr(onednn, "SPLIT_MAX_WEIGHT_BYTES", 0)
  assert onednn.split(B, H) == ((min(B, int(threads)), 1) if rows_split else (1, int(threads)))
  args = random_lstm(seed=2)
  kernel = lambda *a: onednn.lstm(*a)  # a new function: traced (and split) afresh
  close(jax.jit(kernel)(*args), scan_lstm(*args))
  close(
    jax.jit(jax.grad(weighted_sum(kernel), argnums=range(6)))(*args),
    jax.grad(weighted_sum(scan_lstm), argnums=range(6))(*args),
  )


def test_a_bad_thread_count_is_refused_by_name(monkeypatch):
  monkeypatch.setenv("RNN_KERNEL_THREADS", "two")
  with pytest.raises(ValueError, match="RNN_KERNEL_THREADS='two'"):
    onednn.threads()


@needs_onednn
def test_kernel_gradient_matches_finite_differences():
  args = random_lstm(seed=1)
  loss = weighted_sum(onednn.lstm)
  grads = jax.grad(loss, argnums=(1, 2))(*args)
  rng = np.random.default_rng(0)
  for index, grad in zip((1, 2), grads):
    direction = rng.standard_normal(args[index].shape).astype(np.float32)
    eps = 1e-2
    plus = list(args)
    minus = list(args)
    plus[index] = args[index] + eps * direction
    minus[index] = args[index] - eps * direction
    numeric = (loss(*plus) - loss(*minus)) / (2 * eps)
    np.testing.assert_allclose(float(jnp.vdot(grad, direction)), float(numeric), rtol=2e-3)


MASKS = {
  "full": (jnp.ones((T, B), bool), None),
  "first-step resets": (jnp.ones((T, B), bool), jnp.zeros((T, B), bool).at[0, 1].set(True)),
  "right-padded": (jnp.arange(T)[:, None] < jnp.array([T, 4, 0])[None, :], None),
  "packed": (
    jnp.arange(T)[:, None] < jnp.array([T, 7, 5])[None, :],
    jnp.zeros((T, B), bool).at[3, 0].set(True).at[2, 1].set(True),
  ),
}


def layer_loss(kernel, final_carry_used, mask, resets):
  layer = RecurrentLayer(
    "lstm", H, time_major=True, kernel=kernel, final_carry_used=final_carry_used
  )

  def loss(params, inputs, carry):
    outputs, final = layer.apply({"params": params}, inputs, mask, carry, resets)
    total = (jnp.sin(jnp.arange(outputs.size)).reshape(outputs.shape) * outputs).sum()
    return total + (final.sum() if final_carry_used else 0.0), (outputs, final)

  return loss


@needs_onednn
@pytest.mark.parametrize("final_carry_used", [True, False])
@pytest.mark.parametrize("case", list(MASKS))
def test_layer_with_the_kernel_computes_what_the_scan_computes(case, final_carry_used):
  """Where the kernel applies it gives the scan's results; where it does not (padding when the
  final carry is read, resets inside a row) the layer runs the scan itself."""
  mask, resets = MASKS[case]
  inputs = jax.random.normal(jax.random.PRNGKey(0), (T, B, D))
  carry = jax.random.normal(jax.random.PRNGKey(1), (2, B, H))
  params = RecurrentLayer("lstm", H, time_major=True).init(
    jax.random.PRNGKey(2), inputs, mask, carry
  )["params"]
  results = {}
  for kernel in ("onednn", "scan"):
    loss = layer_loss(kernel, final_carry_used, mask, resets)
    (_, (outputs, final)), grads = jax.jit(
      jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)
    )(params, inputs, carry)
    results[kernel] = (outputs, final if final_carry_used else None, grads)
  close(results["onednn"], results["scan"])
  if not final_carry_used and case == "right-padded":
    # The kernel's own path ran (its final carry differs from the masked scan's for padded rows).
    _, final_kernel = RecurrentLayer(
      "lstm", H, time_major=True, kernel="onednn", final_carry_used=False
    ).apply({"params": params}, inputs, mask, carry, resets)
    _, final_scan = RecurrentLayer("lstm", H, time_major=True, path="general").apply(
      {"params": params}, inputs, mask, carry, resets
    )
    assert not np.allclose(final_kernel[:, 1:], final_scan[:, 1:])


@needs_onednn
def test_classifier_on_bucketed_and_packed_batches_matches_the_scan():
  rng = np.random.default_rng(0)
  lengths = np.array([12, 5, 9, 1])
  tokens = np.where(np.arange(12)[None, :] < lengths[:, None], rng.integers(3, 30, (4, 12)), 0)
  mask = tokens > 0
  unpacked = (
    jnp.asarray(tokens),
    jnp.asarray(mask),
    jnp.asarray(mask.astype(np.int32)),
    jnp.asarray(lengths[:, None] - 1),
  )
  segment_ids = np.where(mask, 1 + (np.arange(12)[None, :] >= 6), 0).astype(np.int32)
  ends = np.array([[5, 11], [4, -1], [5, 8], [0, -1]])
  packed = (jnp.asarray(tokens), jnp.asarray(mask), jnp.asarray(segment_ids), jnp.asarray(ends))
  for pooling in ("last", "max"):
    models = {
      kernel: SequenceClassifier(
        ModelConfig(30, 8, 16, 2, "lstm", num_classes=2, pooling=pooling, kernel=kernel)
      )
      for kernel in ("onednn", "scan")
    }
    params = models["scan"].init(jax.random.PRNGKey(0), *unpacked, train=False)["params"]
    for batch in (unpacked, packed):
      grads = {
        kernel: jax.jit(
          jax.grad(lambda p, m=model: m.apply({"params": p}, *batch, train=False).sum())
        )(params)
        for kernel, model in models.items()
      }
      outputs = {
        kernel: model.apply({"params": params}, *batch, train=False)
        for kernel, model in models.items()
      }
      close(outputs["onednn"], outputs["scan"])
      close(grads["onednn"], grads["scan"])


SMALL = Config(
  model="lstm",
  hidden_size=16,
  embed_size=8,
  head_widths=(8,),
  batch_size=8,
  seq_len=16,
  dropout=0.1,
  num_steps=30,
  log_every=5,
  eval_every=10,
  eval_steps=2,
  checkpoint_every=10,
)


@needs_onednn
@pytest.mark.parametrize("task", ["lm", "classify"])
def test_training_with_the_kernel_follows_the_scan_and_resumes_exactly(tmp_path, task):
  config = dataclasses.replace(SMALL, task=task, recurrent_kernel="onednn")
  kernel = train_and_evaluate(config, str(tmp_path / "kernel"))
  scan = train_and_evaluate(
    dataclasses.replace(config, recurrent_kernel="scan"), str(tmp_path / "scan")
  )
  # The run says which loop it ran, and the kernel's own call counts show it did: each training
  # forward call with its backward call, evaluations with inference calls.
  assert kernel["time_loop"]["layers"] == {"encoder/layer_0": "onednn"}
  calls = kernel["time_loop"]["onednn_calls"]
  assert calls["forward_training"] > 0 and calls["backward"] == calls["forward_training"], calls
  assert calls["forward_inference"] > 0, calls
  assert scan["time_loop"] == {"layers": {"encoder/layer_0": "scan"}, "why_not_onednn": None}
  assert kernel["train_loss"] == pytest.approx(scan["train_loss"], rel=1e-3)
  assert kernel["eval"]["loss"] == pytest.approx(scan["eval"]["loss"], rel=1e-3)
  train_and_evaluate(dataclasses.replace(config, num_steps=20), str(tmp_path / "resumed"))
  resumed = train_and_evaluate(config, str(tmp_path / "resumed"))
  assert resumed["param_fingerprint"] == kernel["param_fingerprint"]


def test_each_configuration_gets_the_time_loop_that_applies():
  big = Config(model="lstm", hidden_size=512, batch_size=64)
  assert recurrent_kernel(dataclasses.replace(big, recurrent_kernel="scan"), 1) == "scan"
  for reason in (
    dict(model="gru"),
    dict(model="rnn"),
    dict(remat=True),
    dict(recurrent_backward="autodiff"),
  ):
    assert recurrent_kernel(dataclasses.replace(big, **reason), 1) == "scan"
    with pytest.raises(ConfigError, match="--recurrent_kernel=onednn: not available"):
      recurrent_kernel(dataclasses.replace(big, recurrent_kernel="onednn", **reason), 1)
  # Under plain jax.jit XLA could not split the call across devices; under shard_map each
  # device runs it on its own rows.
  assert recurrent_kernel(big, 4) == "scan"
  with pytest.raises(ConfigError, match="4 devices under --parallelism=jit"):
    recurrent_kernel(dataclasses.replace(big, recurrent_kernel="onednn"), 4)
  expected = "onednn" if onednn.available() else "scan"
  assert recurrent_kernel(big, 1) == expected
  assert recurrent_kernel(dataclasses.replace(big, parallelism="shard_map"), 4) == expected
  # Small steps stay on the scan under "auto"; asked for, the kernel runs them anyway.
  small = dataclasses.replace(big, hidden_size=64, batch_size=16)
  assert 16 * 4 * 64**2 < MIN_STEP_WORK <= 32 * 4 * 128**2
  assert recurrent_kernel(small, 1) == "scan"
  if onednn.available():
    assert recurrent_kernel(dataclasses.replace(small, recurrent_kernel="onednn"), 1) == "onednn"


@needs_onednn
def test_auto_leaves_a_small_model_to_the_scan_and_says_why(tmp_path):
  summary = train_and_evaluate(dataclasses.replace(SMALL, num_steps=4, eval_every=0), str(tmp_path))
  assert summary["time_loop"] == {
    "layers": {"encoder/layer_0": "scan"},
    "why_not_onednn": "8 rows x 16 units per step is small (the scan is faster)",
  }


def test_the_kernel_is_available_where_it_is_promised():
  """Fails, not skips, where the package promises the kernel (tests/promises.py)."""
  promise = onednn_promise()
  if promise is None:
    pytest.skip(
      "oneDNN's LSTM is not promised here (not Linux x86-64 on a CPU backend with a C++ compiler)"
    )
  assert onednn.available(), f"{promise}: {onednn.why_unavailable()}"


def test_a_non_cpu_backend_gets_the_scan_and_onednn_is_refused_with_the_reason(monkeypatch):
  big = Config(model="lstm", hidden_size=512, batch_size=64)
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  assert not onednn.available()
  assert recurrent_kernel(big, 1) == "scan"
  with pytest.raises(
    ConfigError, match="--recurrent_kernel=onednn: not available here: the backend is gpu, not cpu"
  ):
    recurrent_kernel(dataclasses.replace(big, recurrent_kernel="onednn"), 1)
