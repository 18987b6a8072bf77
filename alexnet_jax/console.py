"""What a user of the command-line tools sees: our own log lines, one clear error.

The entry points (main, features, evaluate, predict) call `setup` once at start-up. By
default the console shows every line this project logs and only the errors of the
libraries under it (JAX, orbax, TensorFlow), without their tracebacks: a 300-step run
logged 123 lines of orbax INFO among 153. `--library_logs` shows everything.
`run(fn)` reports a failure as one line first (the error and what to do), then the detail.
"""

import logging
import os
import sys
import traceback

from absl import logging as absl_logging

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _is_own(path):
  return path.startswith(_REPO + os.sep) and f'{os.sep}site-packages{os.sep}' not in path


class _OwnLogs(logging.Filter):
  """Passes our records, and the libraries' errors without their tracebacks."""

  def filter(self, record):
    if _is_own(record.pathname):
      return True
    if record.levelno < logging.ERROR:
      return False
    record.exc_info, record.exc_text, record.stack_info = None, None, None
    return True


def _quiet_unraisable(default):
  """orbax's worker threads print 'Event loop is closed' tracebacks after a failed read or
  write (the failure itself is raised and reported); drop those, keep the rest."""

  def hook(args):
    if isinstance(args.exc_value, RuntimeError) and 'Event loop is closed' in str(
        args.exc_value):
      return
    default(args)

  return hook


def setup(library_logs=False):
  """Quiet library logs (unless `library_logs`). Call from an entry point's main."""
  if library_logs:
    return
  absl_logging.get_absl_handler().addFilter(_OwnLogs())
  sys.unraisablehook = _quiet_unraisable(sys.unraisablehook)


def run(fn, *args, **kwargs):
  """fn(*args, **kwargs); a failure is logged as one line, then its traceback, exit 1."""
  try:
    return fn(*args, **kwargs)
  except Exception as e:  # pylint: disable=broad-except  # Reported, not recovered.
    detail = ''.join(traceback.format_exception(e))
    sys.stderr.flush()
    print(f'\nERROR: {type(e).__name__}: {e}\n\nDetail:\n{detail}', file=sys.stderr,
          flush=True)
    sys.exit(1)
