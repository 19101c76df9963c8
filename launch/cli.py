"""What every command-line entry point shares: quiet library logs and `--help` on its own flags."""

import contextlib
import logging as python_logging
import sys

from absl import app, flags, logging

# Libraries whose INFO lines (Orbax logs every save step by step) would bury the progress lines;
# their warnings and errors still show.
_QUIET_LIBRARIES = (
  "/orbax/",
  "/grain/",
  "/jax/",
  "/jaxlib/",
  "/tensorflow_datasets/",
  "/etils/",
  "/matplotlib/",
)


def _quiet_library_info(record) -> bool:
  return record.levelno >= python_logging.WARNING or not any(
    lib in record.pathname for lib in _QUIET_LIBRARIES
  )


def quiet_libraries() -> None:
  logging.get_absl_logger().addFilter(_quiet_library_info)
  python_logging.getLogger("jax._src.xla_bridge").setLevel(python_logging.WARNING)  # "no TPU found"


def run(main, module_name: str) -> None:
  """`app.run(main)` for the command defined in `module_name`.

  Installed as a console script (`rnn-train`, ...), the command's module is not the program's
  main module, so absl's `--help` would list none of its flags: make them the program's own.
  """
  defined = flags.FLAGS.flags_by_module_dict().get(module_name, [])
  for flag in defined:
    flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
  if module_name in sys.modules:  # `--help` starts with the command's own description
    sys.modules["__main__"].__doc__ = sys.modules[module_name].__doc__
  app.run(main)


@contextlib.contextmanager
def one_line_errors(*expected: type[Exception], status: int = 2):
  """Turns the `expected` errors (bad flags, bad data: their messages name the culprit) into
  `error: MESSAGE` on stderr and exit `status`, with no traceback."""
  try:
    yield
  except expected as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(status)


def no_arguments(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
