"""The peer the speed benchmarks compare against: the project's model and train step written in
PyTorch (`nn.Embedding`, `nn.LSTM`, `nn.Linear` or the classifier's MLP head, Adam, gradient
clipping; per token: a loss at every position and the state carried across windows, as truncated
BPTT; per sequence: the last state through the head). PyTorch is an optional extra
(`pip install -e ".[bench]"`), never a dependency of the package.
"""

import dataclasses
import os
import sys
import time

import jax

from bench import own_process
from launch import huge_pages
from training.config import Config, config_from_fields


def import_torch():
  """PyTorch, or None (with how to install it) where it is missing."""
  try:
    import torch
  except ImportError:
    print(
      'PyTorch is not installed: `pip install -e ".[bench]"` (torch==2.13.0) to compare.',
      file=sys.stderr,
    )
    return None
  return torch


class TorchPeer:
  """The model, its optimizer and random batches of the given [batch, length] shapes."""

  def __init__(self, torch, config: Config, vocab_size: int, num_classes: int, shapes):
    self.torch, self.vocab_size = torch, vocab_size
    self.device = "cuda" if torch.cuda.is_available() and jax.default_backend() == "gpu" else "cpu"
    self.classify = config.task == "classify"
    torch.manual_seed(0)
    self.model = _model(torch, config, vocab_size, num_classes, self.classify).to(self.device)
    self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3)
    self.loss_fn = torch.nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(0)
    self.batches = []
    for batch_size, length in shapes:
      tokens = torch.randint(3, vocab_size, (batch_size, length + 1), generator=generator).to(
        self.device
      )
      labels = torch.randint(0, max(num_classes, 2), (batch_size,), generator=generator).to(
        self.device
      )
      self.batches.append((tokens, labels))
    self.state = None

  def loss(self, tokens, labels):
    """Forward pass and loss; keeps the carried state (detached) for the next window."""
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    logits, new_state = self.model(inputs, None if self.classify else self.state)
    if self.classify:
      return self.loss_fn(logits, labels)
    self.state = tuple(s.detach() for s in new_state)  # truncated BPTT: carried, not backpropagated
    return self.loss_fn(logits.reshape(-1, self.vocab_size), targets.reshape(-1))

  def backward(self, loss) -> None:
    self.optimizer.zero_grad(set_to_none=True)
    loss.backward()

  def update(self) -> None:
    self.torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)  # the project clips too
    self.optimizer.step()

  def step(self, tokens, labels) -> None:
    self.backward(self.loss(tokens, labels))
    self.update()

  def sync(self) -> None:
    if self.device == "cuda":
      self.torch.cuda.synchronize()


def _model(torch, config: Config, vocab_size: int, num_classes: int, classify: bool):
  class Model(torch.nn.Module):
    def __init__(self):
      super().__init__()
      self.embed = torch.nn.Embedding(vocab_size, config.embed_size)
      self.lstm = torch.nn.LSTM(
        config.embed_size, config.hidden_size, config.num_layers, batch_first=True
      )
      if classify:
        widths = [config.hidden_size, *config.head_widths]
        layers = []
        for a, b in zip(widths, widths[1:]):
          layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
        self.head = torch.nn.Sequential(*layers, torch.nn.Linear(widths[-1], num_classes))
      else:
        self.head = torch.nn.Linear(config.hidden_size, vocab_size)

    def forward(self, tokens, state):
      outputs, state = self.lstm(self.embed(tokens), state)
      return self.head(outputs[:, -1] if classify else outputs), state

  return Model()


def measure(config: Config, vocab_size: int, num_classes: int, shapes, steps: int) -> dict:
  """Tokens per second of the peer's train step on `shapes` (cycled), after 3 warm-up steps."""
  torch = import_torch()
  if torch is None:
    return {}
  peer = TorchPeer(torch, config, vocab_size, num_classes, shapes)
  for tokens, labels in peer.batches[:3]:
    peer.step(tokens, labels)
  peer.sync()
  fed = 0
  start = time.perf_counter()
  for index in range(steps):
    tokens, labels = peer.batches[index % len(peer.batches)]
    peer.step(tokens, labels)
    fed += tokens.shape[0] * (tokens.shape[1] - 1)
  peer.sync()
  return {
    "tokens_per_sec": fed / (time.perf_counter() - start),
    "device": peer.device,
    "version": torch.__version__,
    "threads": torch.get_num_threads(),
  }


def measure_in_own_process(
  config: Config,
  vocab_size: int,
  num_classes: int,
  shapes,
  steps: int,
  use_huge_pages: bool = False,
) -> dict | None:
  """`measure` in a process of its own: in the benchmark's process, JAX's thread pools and
  PyTorch's OpenMP team compete for the same cores (PyTorch's 1 x 128 model ran 3.6x slower
  there than alone). PyTorch runs with malloc as its users get it: without the glibc tunable
  that the benchmark's process inherits from the project's restart (`launch.huge_pages`),
  unless `use_huge_pages` (PyTorch gains from it too; its users can set it)."""
  request = {
    "config": dataclasses.asdict(config),
    "vocab_size": vocab_size,
    "num_classes": num_classes,
    "shapes": [list(shape) for shape in shapes],
    "steps": steps,
  }
  env = huge_pages.without_tunable(os.environ)
  if use_huge_pages:
    env = huge_pages.with_tunable(env)
  # Its stderr passed on: e.g. how to install PyTorch. No PyTorch: an empty answer.
  return (
    own_process.call("bench.torch_peer", request, "the PyTorch peer", env=env, echo_stderr=True)
    or None
  )


def _measure(request: dict) -> dict:
  return measure(
    config_from_fields(request["config"]),
    request["vocab_size"],
    request["num_classes"],
    [tuple(shape) for shape in request["shapes"]],
    request["steps"],
  )


if __name__ == "__main__":
  own_process.serve(_measure)  # the peer's own process (`measure_in_own_process`)
