"""Noticing a preemption (SIGTERM) or an interrupt (Ctrl-C) and agreeing on a step to stop at.

On one process a signal handler sets a flag that the loop reads after each step. On many
processes, `jax.distributed` runs a preemption sync service (it handles SIGTERM itself): when
any process is told to stop, all of them reach `reached_preemption_sync_point` after the same
call of the train step, so they save the same checkpoint together.
"""

import signal
import threading

import jax
from absl import logging
from jax.experimental import multihost_utils


class PreemptionWatch:
  """`should_stop(call)` turns True after the call of the train step (the `call`-th of this run,
  counting from 1) where every process should save and exit."""

  def __init__(self):
    self._requested = threading.Event()
    self._previous = {}
    self._multiprocess = jax.process_count() > 1
    if not self._multiprocess and threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._previous[sig] = signal.signal(sig, self._on_signal)

  def _on_signal(self, signum, frame):
    del frame
    if self._requested.is_set() and signum == signal.SIGINT:
      raise KeyboardInterrupt  # A second Ctrl-C: the user really wants out, now.
    logging.warning(
      "Received %s: saving a checkpoint at the end of this step, then exiting.",
      signal.Signals(signum).name,
    )
    self._requested.set()

  def should_stop(self, call: int) -> bool:
    if self._multiprocess:
      # Calls, not steps: the service agrees on the call after the furthest process's and
      # answers True only when given exactly that number, which a run of several steps per
      # call (`--steps_per_call`) would step over if it were given steps.
      try:
        return multihost_utils.reached_preemption_sync_point(call)
      except RuntimeError:  # The preemption service is off (jax_enable_preemption_service).
        return False
    return self._requested.is_set()

  def close(self) -> None:
    """Puts the previous signal handlers back."""
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous.clear()
