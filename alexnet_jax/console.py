"""What a user of the command-line tools sees: our own log lines, one clear error.

The entry points (main, features, evaluate, predict, convert, prepare) import the libraries
inside `quiet_imports`, run their main through `app_main` (which applies
alexnet_jax.cpu_settings first) and define `--library_logs` and (all but prepare)
`--cpu_settings` with `define_flags`. The console shows every line this project logs and
only the errors of JAX, orbax and TensorFlow, without tracebacks, as their INFO lines
would drown ours; `--library_logs` shows everything. `run(fn)` reports a failure as one
line (the error and what to do), then the detail; an error marked `skip_cleanup` (a dead
peer process) ends the process at once. `quiet_imports` drops the C++ start-up lines
TensorFlow prints while it loads, which TF_CPP_MIN_LOG_LEVEL no longer silences;
`Progress` shows a long job's step/total and time left.
"""

import contextlib
import logging
import os
import re
import sys
import threading
import time
import traceback

from absl import app
from absl import flags
from absl import logging as absl_logging
import tqdm

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
    if getattr(e, 'skip_cleanup', False):  # An exit that must not wait (preemption.PeerLost).
      sys.stdout.flush()
      os._exit(1)
    sys.exit(1)


def define_flags(cpu_settings=True):
  """--library_logs, and --cpu_settings for the tools that run the network."""
  flags.DEFINE_bool('library_logs', False, 'Also show the INFO and WARNING lines of JAX, '
                    'orbax and TensorFlow (by default only their errors), and their C++ '
                    'start-up lines.')
  if cpu_settings:
    flags.DEFINE_bool('cpu_settings', True, 'On a CPU backend, apply the settings measured '
                      'to speed up training there (alexnet_jax/cpu_settings.py).')


def app_main(main):
  """An entry point's main(argv) for absl's app.run: quiet library logs, the CPU settings
  where --cpu_settings is defined (before any JAX computation), one clear error."""

  def run_main(argv):
    setup(flags.FLAGS.library_logs)
    if 'cpu_settings' in flags.FLAGS:
      cpu_settings.apply(flags.FLAGS.cpu_settings)
    return run(main, argv)

  return run_main


# What quiet_cxx_logs drops: absl's notice, INFO and WARNING lines in absl's format
# (I0000 00:00:1796.. 5885 port.cc:153] ...) or TensorFlow's older one (2024-01-11
# 05:40:05.06: I tensorflow/.../x.cc:182] ...), and the second line of the CPU-feature
# notice. Errors (E, F) and anything else pass.
_DROPPED = re.compile(
    r'WARNING: All log messages before absl::InitializeLog\(\)'
    r'|[IW]\d{4} [\d:.]+ +\d+ \S+\.(cc|h):\d+\] '
    r'|\d{4}-\d\d-\d\d [\d:.]+: [IW] \S+\.(cc|h):\d+\] '
    r'|To enable the following instructions: ')


def library_logs_requested(argv):
  """Whether the command line `argv` turns --library_logs on (read before flags parse)."""
  on = None
  for arg in argv[1:]:
    if arg == '--':
      break
    if arg in ('--library_logs', '--library_logs=true', '--library_logs=True',
               '--library_logs=1'):
      on = True
    elif arg in ('--nolibrary_logs', '--library_logs=false', '--library_logs=False',
                 '--library_logs=0'):
      on = False
  return bool(on)


def quiet_imports(is_main):
  """`quiet_cxx_logs` for an entry point's imports: `with
  console.quiet_imports(__name__ == '__main__'):`, so a module imported by another changes
  nothing; nothing is dropped with --library_logs on the command line (read from sys.argv:
  the flags are not parsed yet)."""
  return quiet_cxx_logs(is_main and not library_logs_requested(sys.argv))


@contextlib.contextmanager
def quiet_cxx_logs(enabled=True):
  """Drops the INFO and WARNING lines the libraries' C++ writes to stderr while the block
  runs (TensorFlow's start-up lines, module docstring; its notes on an op that failed);
  their errors and all other output pass as they come."""
  if not enabled:
    yield
    return
  sys.stderr.flush()
  saved = os.dup(2)
  read, write = os.pipe()
  os.dup2(write, 2)
  os.close(write)
  pipe, out = os.fdopen(read, 'rb'), os.fdopen(os.dup(saved), 'wb', buffering=0)

  def forward():
    with pipe, out:
      for line in pipe:
        if not _DROPPED.match(line.decode(errors='replace')):
          out.write(line)

  thread = threading.Thread(target=forward, daemon=True)
  thread.start()
  try:
    yield
  finally:
    sys.stderr.flush()
    os.dup2(saved, 2)  # Closes the pipe's last writer: the thread reads to its end.
    os.close(saved)
    thread.join()


LOG_EVERY_S = 60  # Progress in a log: a line at most this often (seconds).


class Progress:
  """Step/total and the time left of a long job.

  On a terminal (stderr), a tqdm bar. Elsewhere (a batch job's log), INFO lines: one per
  call of `log` (the caller's own line, then the time left), and with `every` (seconds) an
  automatic `desc: n/total unit, T left` at the first update, then at most every `every`
  seconds, and at the end (every=None: only `log`'s lines). `enabled=False` shows nothing.
  """

  def __init__(self, total, desc, *, start=0, unit='steps', every=LOG_EVERY_S,
               enabled=True):
    self.total, self.n = total, start
    self._desc, self._unit, self._every, self._enabled = desc, unit, every, enabled
    self._t0, self._n0 = time.perf_counter(), start
    self._last = None  # When the last automatic line was logged.
    self._bar = None
    if enabled and sys.stderr.isatty():
      self._bar = tqdm.tqdm(total=total, initial=start, dynamic_ncols=True, desc=desc,
                            unit=unit)

  def update(self, n=1):
    self.n += n
    if self._bar is not None:
      self._bar.update(n)
    elif self._enabled and self._every is not None:
      now = time.perf_counter()
      if self._last is None or now - self._last >= self._every or self.n >= self.total:
        self._last = now
        absl_logging.info('%s: %d/%d %s, %s left', self._desc, self.n, self.total,
                          self._unit, self.time_left())

  def log(self, line, **postfix):
    """In a log, `line` and the time left; on a terminal, `postfix` beside the bar."""
    if self._bar is not None:
      self._bar.set_postfix(**postfix)
    elif self._enabled:
      absl_logging.info('%s, %s left', line, self.time_left())

  def time_left(self):
    """'M min SS s' (or 'H h MM min') at the rate since the start."""
    rate = (self.n - self._n0) / max(time.perf_counter() - self._t0, 1e-9)
    seconds = int(max(self.total - self.n, 0) / max(rate, 1e-9))
    if seconds >= 3600:
      return f'{seconds // 3600} h {seconds % 3600 // 60:02d} min'
    return f'{seconds // 60} min {seconds % 60:02d} s'

  def close(self):
    if self._bar is not None:
      self._bar.close()
