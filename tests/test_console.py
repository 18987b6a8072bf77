"""What the command-line tools show: progress, and the libraries' C++ lines dropped.

The commands themselves are run as subprocesses in test_main.py (main) and test_convert.py
(evaluate, predict); these pin the pieces they share.
"""

import io
import os
import re
import sys

from absl import logging

from alexnet_jax import console

TF_STARTUP = (  # As TensorFlow 2.21 printed them on loading, oneDNN on.
    'WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n'
    'I0000 00:00:1796422255.236058    5885 port.cc:153] oneDNN custom operations are on. You '
    'may see slightly different numerical results due to floating-point round-off errors.\n'
    'I0000 00:00:1796422255.285431    5885 cpu_feature_guard.cc:227] This TensorFlow binary '
    'is optimized to use available CPU instructions in performance-critical operations.\n'
    'To enable the following instructions: AVX2 FMA, in other operations, rebuild '
    'TensorFlow with the appropriate compiler flags.\n'
    '2024-01-11 05:40:05.061907: W tensorflow/core/util/port.cc:113] Older format.\n')
KEPT = (
    'E0000 00:00:1796422951.678402   13208 jpeg_mem.cc:331] Premature end of JPEG data.\n'
    'I1204 22:10:09.741567 139782625581952 cpu_settings.py:62] A Python line of ours.\n'
    'Traceback (most recent call last): anything else\n')


def test_quiet_cxx_logs_drops_the_libraries_info_and_warnings_only(capfd):
  """Written to file descriptor 2 as the C++ libraries write: dropped; errors and every
  other line pass, in order."""
  with console.quiet_cxx_logs():
    os.write(2, (TF_STARTUP + KEPT).encode())
  assert capfd.readouterr().err == KEPT
  with console.quiet_cxx_logs(enabled=False):
    os.write(2, TF_STARTUP.encode())
  assert capfd.readouterr().err == TF_STARTUP


def test_library_logs_is_read_from_the_command_line():
  on = console.library_logs_requested
  assert on(['prog', '--library_logs']) and on(['prog', '--x=1', '--library_logs=true'])
  assert not on(['prog']) and not on(['prog', '--library_logs', '--nolibrary_logs'])
  assert not on(['prog', '--', '--library_logs'])  # After --: arguments, not flags.


def test_progress_in_a_log_is_lines_with_count_total_and_time_left(monkeypatch):
  lines = []
  monkeypatch.setattr(logging, 'info', lambda fmt, *args: lines.append(fmt % args))
  progress = console.Progress(200, 'evaluate', unit='images', every=60)
  for _ in range(4):
    progress.update(50)
  progress.close()
  # The first batch, then (within a minute) only the end.
  assert [l.split(',')[0] for l in lines] == ['evaluate: 50/200 images',
                                             'evaluate: 200/200 images']
  assert all(re.fullmatch(r'[^,]+, \d+ min \d\d s left', l) for l in lines), lines
  lines.clear()
  progress = console.Progress(10, 'train', start=4, every=None)
  progress.update()
  progress.log('step 5/10: loss 2.3', loss='2.3')
  assert len(lines) == 1 and re.fullmatch(r'step 5/10: loss 2.3, \d+ min \d\d s left',
                                          lines[0])


def test_progress_on_a_terminal_is_a_bar(monkeypatch):
  class Terminal(io.StringIO):

    def isatty(self):
      return True

  def no_log_lines(*args):
    raise AssertionError(f'a log line on a terminal: {args}')

  terminal = Terminal()
  monkeypatch.setattr(sys, 'stderr', terminal)
  monkeypatch.setattr(logging, 'info', no_log_lines)
  progress = console.Progress(200, 'evaluate', unit='images')
  progress.update(50)
  progress.close()
  shown = terminal.getvalue()
  assert '\r' in shown and 'evaluate:  25%' in shown and '50/200' in shown, shown
