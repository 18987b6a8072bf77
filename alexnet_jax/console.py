"""What a user of the command-line tools sees: our own log lines, one clear error.

The entry points (main, features, evaluate, predict, convert) run their main through
`app_main` and define `--library_logs` and `--cpu_settings` with `define_flags`;
`app_main` applies alexnet_jax.cpu_settings before main runs. By
default the console shows every line this project logs and only the errors of the
libraries under it (JAX, orbax, TensorFlow), without their tracebacks: a 300-step run
logged 123 lines of orbax INFO among 153. `--library_logs` shows everything.
`run(fn)` reports a failure as one line first (the error and what to do), then the detail;
an error marked `skip_cleanup` (a dead peer process) then ends the process at once.
"""

import logging
import os
import sys
import traceback

from absl import app
from absl import flags
from absl import logging as absl_logging

from alexnet_jax import cpu_settings

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
  """After a failed checkpoint read or write, orbax's worker threads and pending coroutines
  print what they could not deliver ('Event loop is closed', 'Exception ignored in
  <coroutine ...>'), dozens of tracebacks of a failure already raised and reported. Drop
  those; pass anything else to Python's hook."""

  def hook(args):
    files = [f.filename for f in traceback.extract_tb(args.exc_traceback)]
    if ('Event loop is closed' in str(args.exc_value)
        or any(f'{os.sep}orbax{os.sep}' in f for f in files)):
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
  except app.UsageError:
    raise  # absl prints the usage.
  except Exception as e:  # pylint: disable=broad-except  # Reported, not recovered.
    detail = ''.join(traceback.format_exception(e))
    sys.stderr.flush()
    print(f'\nERROR: {type(e).__name__}: {e}\n\nDetail:\n{detail}', file=sys.stderr,
          flush=True)
    if getattr(e, 'skip_cleanup', False):  # An exit that must not wait (train.PeerLost).
      sys.stdout.flush()
      os._exit(1)
    sys.exit(1)


def define_flags():
  flags.DEFINE_bool('library_logs', False, 'Also show the INFO and WARNING lines of JAX, '
                    'orbax and TensorFlow (by default only their errors).')
  flags.DEFINE_bool('cpu_settings', True, 'On a CPU backend, apply the settings measured '
                    'to speed up training there (alexnet_jax/cpu_settings.py).')


def app_main(main):
  """An entry point's main(argv) for absl's app.run: quiet library logs, the CPU settings
  (before any JAX computation), one clear error."""

  def run_main(argv):
    setup(flags.FLAGS.library_logs)
    cpu_settings.apply(flags.FLAGS.cpu_settings)
    return run(main, argv)

  return run_main
