"""Checkpoint saves that fail: reported once, in one line, at the next check, never as a
traceback that scrolls past while training goes on; earlier checkpoints untouched."""

import asyncio
import gc
import logging
import os
import subprocess
import sys
import threading
import time
import warnings

import jax.numpy as jnp
import pytest

from tests.test_faults import snapshot
from training.bookkeeping.abandoned_reads import silence_abandoned_reads
from training.bookkeeping.checkpoints import Checkpointer, CheckpointError
from training.state import TrainState

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_state(step: int) -> TrainState:
  return TrainState(
    step=jnp.int32(step),
    params={"w": jnp.arange(4.0) * step},
    opt_state={},
    rng=jnp.zeros(2, jnp.uint32),
    carry=None,
  )


def save_and_wait(checkpointer: Checkpointer, step: int) -> None:
  checkpointer.save(tiny_state(step))
  checkpointer.wait_until_finished()


def test_a_save_that_fails_in_the_background_stops_with_one_line_and_keeps_earlier_ones(
  tmp_path, monkeypatch, capfd, caplog
):
  directory = tmp_path / "checkpoints"
  good = Checkpointer(str(directory), max_to_keep=3, async_save=True)
  save_and_wait(good, 10)
  good.close()
  before = snapshot(directory / "10")

  # The failure of issue 8: Orbax accepts a relative directory, then every array write fails in
  # its background threads ("Checkpoint path should be absolute") while the caller goes on.
  monkeypatch.chdir(tmp_path)
  failing = Checkpointer("checkpoints", max_to_keep=3, async_save=True)
  assert failing.all_steps() == [10]
  failing.save(tiny_state(20))  # returns: the failure happens later
  with caplog.at_level(logging.INFO), pytest.raises(CheckpointError) as error:
    failing.wait_until_finished()
  failing.close()

  message = str(error.value)
  assert "\n" not in message
  assert message.startswith(f"checkpoint {os.path.join('checkpoints', '20')} could not be saved: ")
  assert "should be absolute" in message  # the cause, from Orbax's background thread
  assert "earlier checkpoints (10) are intact" in message
  assert snapshot(directory / "10") == before
  assert not (directory / "20").exists()
  printed = capfd.readouterr()
  assert "Traceback" not in printed.out + printed.err
  assert not any(record.exc_info for record in caplog.records if "/orbax/" in record.pathname)


def test_check_save_reports_a_background_failure_once_the_save_has_ended(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  checkpointer = Checkpointer("checkpoints", max_to_keep=3, async_save=True)
  checkpointer.save(tiny_state(5))
  with pytest.raises(
    CheckpointError, match=r"checkpoints/5 could not be saved: .*earlier checkpoints \(none\)"
  ):
    deadline = time.time() + 60
    while time.time() < deadline:  # what the train loop does after every step
      checkpointer.check_save()
      time.sleep(0.01)
  checkpointer.check_save()  # reported once
  checkpointer.wait_until_finished()  # and not again at the end
  checkpointer.close()


def test_a_good_save_passes_every_check(tmp_path):
  checkpointer = Checkpointer(str(tmp_path / "checkpoints"), max_to_keep=3, async_save=True)
  for step in (1, 2):
    checkpointer.save(tiny_state(step))
    checkpointer.check_save()
  checkpointer.wait_until_finished()
  checkpointer.check_save()
  assert checkpointer.all_steps() == [1, 2]
  checkpointer.close()


def _never_retrieved(loop, error: BaseException) -> None:
  """What asyncio does with a future whose exception nobody read: logs it when it is collected."""
  future = loop.create_future()
  future.set_exception(error)
  del future
  gc.collect()


@pytest.fixture
def process_hooks():
  """Puts back the process-wide hooks and filters that `silence_abandoned_reads` installs, so
  that no other test of this process runs under them."""
  hooks = (sys.excepthook, sys.unraisablehook, threading.excepthook)
  asyncio_filters = list(logging.getLogger("asyncio").filters)
  warning_filters = list(warnings.filters)
  yield
  sys.excepthook, sys.unraisablehook, threading.excepthook = hooks
  logging.getLogger("asyncio").filters[:] = asyncio_filters
  warnings.filters[:] = warning_filters


def test_a_read_that_orbax_abandoned_is_not_reported_and_other_errors_are(caplog, process_hooks):
  from orbax.checkpoint._src.serialization import serialization

  silence_abandoned_reads()
  try:
    serialization.estimate_write_memory_footprint(None)  # raises inside Orbax's serialization
  except Exception as e:
    abandoned = e
  loop = asyncio.new_event_loop()
  try:
    with caplog.at_level(logging.ERROR, logger="asyncio"):
      _never_retrieved(loop, abandoned)
      _never_retrieved(loop, ValueError("a failure of our own"))
  finally:
    loop.close()
  reported = [record for record in caplog.records if record.name == "asyncio"]
  assert len(reported) == 1 and "exception was never retrieved" in reported[0].getMessage()
  assert reported[0].exc_info[1].args == ("a failure of our own",)


ALL_CHANNELS = r"""
import asyncio, gc, sys, threading, warnings

from training.bookkeeping.abandoned_reads import silence_abandoned_reads

def report_each_way(make_error, origin):
  # 1. an uncaught exception (sys.excepthook)
  error = make_error()
  sys.excepthook(type(error), error, None)
  # 2. an exception Python cannot raise (sys.unraisablehook): one raised while an object is
  # collected, named as Orbax's reader is for the abandoned read
  class Collected:
    def __del__(self):
      raise make_error()
  Collected.__qualname__ = origin or "Ours"
  Collected.__del__.__qualname__ = f"{origin or 'Ours'}.__del__"
  Collected()
  gc.collect()
  # 3. an exception in a thread (threading.excepthook)
  def fail():
    raise make_error()
  thread = threading.Thread(target=fail)
  thread.start()
  thread.join()
  # 4. a future's exception nobody read (the asyncio logger)
  loop = asyncio.new_event_loop()
  future = loop.create_future()
  error = make_error()
  if origin is not None:
    error.__traceback__ = None
    error.args = (f"{error.args[0]} in orbax/checkpoint/_src/serialization",)
  future.set_exception(error)
  del future
  gc.collect()
  loop.close()
  # 5. a coroutine never awaited (a warning)
  name = "_read_array_index_and_device_put" if origin is not None else "our_own_coroutine"
  warnings.warn(f"coroutine '{name}' was never awaited", RuntimeWarning)

silence_abandoned_reads()
print("--- abandoned reads", file=sys.stderr, flush=True)
report_each_way(lambda: RuntimeError("Event loop is closed"), "async_deserialize")
print("--- our own failures", file=sys.stderr, flush=True)
report_each_way(lambda: ValueError("a failure of our own"), None)
"""


def test_each_of_the_five_ways_an_abandoned_read_is_reported_is_dropped_and_nothing_else():
  """In a process of its own: the hooks are process-wide."""
  result = subprocess.run(
    [sys.executable, "-W", "always", "-c", ALL_CHANNELS],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert result.returncode == 0, result.stderr
  abandoned, ours = result.stderr.split("--- abandoned reads")[1].split("--- our own failures")
  assert abandoned.strip() == "", abandoned
  assert ours.count("a failure of our own") >= 4, ours  # excepthook, unraisable, thread, asyncio
  assert "Exception in thread" in ours and "Exception ignored in" in ours
  assert "exception was never retrieved" in ours
  assert "coroutine 'our_own_coroutine' was never awaited" in ours
