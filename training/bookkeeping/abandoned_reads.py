"""Quieting the reports of reads that Orbax abandons when a restore fails.

A damaged checkpoint is reported in one line and the previous one is used (`checkpoints.py`);
without this, the reads still in flight would add pages of tracebacks to that line.
"""

import logging as logging_lib
import sys
import threading
import traceback
import warnings

# How Orbax's abandoned read coroutines and tasks show up in reports about them.
_ABANDONED_READ_MARKS = (
  "_read_array_index_and_device_put",
  "async_deserialize",
  "orbax/checkpoint/_src/serialization",
)


def _mentions_abandoned_read(text: str) -> bool:
  return any(mark in text for mark in _ABANDONED_READ_MARKS)


def _is_abandoned_read(exc_type, exc_value, origin=None) -> bool:
  return (
    exc_type is RuntimeError and str(exc_value) == "Event loop is closed"
  ) or _mentions_abandoned_read(repr(origin))


class _DropAbandonedReads(logging_lib.Filter):
  def filter(self, record) -> bool:
    # "Future exception was never retrieved" names only the error in its message (a TensorStore
    # read out of range); where it was raised, in Orbax's reader, is in the attached traceback.
    text = record.getMessage()
    if record.exc_info:
      text += "".join(traceback.format_exception(*record.exc_info))
    return not _mentions_abandoned_read(text)


def silence_abandoned_reads() -> None:
  """When a restore fails, Orbax abandons the reads still in flight. When they finish (in
  TensorStore's threads) or are garbage-collected, Python reports them four ways: "Event loop
  is closed" through the exception hooks, "Exception ignored in <coroutine ...>" through the
  unraisable hook, "Task (or Future) exception was never retrieved" through the `asyncio`
  logger, and "coroutine ... was never awaited" as a warning, some only at exit. The failure
  was already reported in one line, so drop exactly those reports (idempotent; every other
  error still prints)."""
  if getattr(sys.excepthook, "_drops_abandoned_reads", False):
    return
  excepthook, unraisablehook, thread_hook = sys.excepthook, sys.unraisablehook, threading.excepthook

  def quiet_excepthook(exc_type, exc_value, tb):
    if not _is_abandoned_read(exc_type, exc_value):
      excepthook(exc_type, exc_value, tb)

  def quiet_unraisablehook(unraisable):
    if not _is_abandoned_read(unraisable.exc_type, unraisable.exc_value, unraisable.object):
      unraisablehook(unraisable)

  def quiet_thread_hook(args):
    if not _is_abandoned_read(args.exc_type, args.exc_value):
      thread_hook(args)

  quiet_excepthook._drops_abandoned_reads = True
  sys.excepthook, sys.unraisablehook, threading.excepthook = (
    quiet_excepthook,
    quiet_unraisablehook,
    quiet_thread_hook,
  )
  logging_lib.getLogger("asyncio").addFilter(_DropAbandonedReads())
  warnings.filterwarnings(
    "ignore", message="coroutine '_read_array_index_and_device_put' was never awaited"
  )
