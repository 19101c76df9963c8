"""Checkpoint saves that fail: reported once, in one line, at the next check, never as a
traceback that scrolls past while training goes on; earlier checkpoints untouched."""

import asyncio
import gc
import logging
import os
import time

import jax.numpy as jnp
import pytest

from tests.test_faults import snapshot
from training.abandoned_reads import silence_abandoned_reads
from training.checkpoints import CheckpointError, Checkpointer
from training.train_state import TrainState


def tiny_state(step: int) -> TrainState:
  return TrainState(step=jnp.int32(step), params={"w": jnp.arange(4.0) * step}, opt_state={},
                    rng=jnp.zeros(2, jnp.uint32), carry=None)


def save_and_wait(checkpointer: Checkpointer, step: int) -> None:
  checkpointer.save(tiny_state(step))
  checkpointer.wait_until_finished()


def test_a_save_that_fails_in_the_background_stops_with_one_line_and_keeps_earlier_ones(
    tmp_path, monkeypatch, capfd, caplog):
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
  with pytest.raises(CheckpointError, match=r"checkpoints/5 could not be saved: .*earlier checkpoints \(none\)"):
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


def test_a_read_that_orbax_abandoned_is_not_reported_and_other_errors_are(caplog):
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
