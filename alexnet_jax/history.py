"""The run's metrics history: metrics.jsonl (one JSON object a line) and TensorBoard.

A resumed run first cuts the file back to the step it resumes from (`resume`), so that
the history holds each step once.
"""

import json
import os
import re
import time

from absl import logging
from tensorboard.compat.proto import event_pb2
from tensorboard.plugins.scalar import summary_v2 as tensorboard_scalar
from tensorboard.summary.writer import event_file_writer

FILE = 'metrics.jsonl'


def read(path):
  """The records of a metrics.jsonl ([(line, dict)]) and its cut-off last line (bytes, or
  None): a last line without its newline that does not parse, as a kill or a full disk
  during a write leaves it.

  Any other line that is not UTF-8, not JSON or not an object with an integer 'step' is
  a ValueError naming the file and the line: the resume rewrites the file and would lose it.
  """
  if not os.path.exists(path):
    return [], None
  with open(path, 'rb') as f:
    lines = f.read().split(b'\n')
  last = lines.pop()  # b'' after a final newline.
  records = []

  def parse(raw):
    """(line, record) of one line; ValueError saying what is wrong with it."""
    try:
      text = raw.decode('utf-8')
    except UnicodeDecodeError as e:
      raise ValueError(f'is not UTF-8 text ({e})') from None
    try:
      record = json.loads(text)
    except ValueError as e:
      raise ValueError(f'is not JSON ({e}: {text[:80]!r})') from None
    if not isinstance(record, dict) or not isinstance(record.get('step'), int):
      raise ValueError(f'is not a JSON object with an integer "step" ({text[:80]!r})')
    return text + '\n', record

  for number, raw in enumerate(lines, 1):
    try:
      records.append(parse(raw))
    except ValueError as e:
      raise ValueError(
          f'{path}, line {number} {e}. The file is this run\'s metrics history (one JSON '
          'object a line), which a resume rewrites: fix or delete that line, or move the '
          'file aside to start a new history, then rerun.') from None
  cut = None
  if last:
    try:
      records.append(parse(last))
    except ValueError:
      cut = last
  return records, cut


def resume(path, step, evaluation_due):
  """Makes metrics.jsonl the history up to `step`, where a run resumes; says what it drops.

  Lines past `step` are dropped (the run redoes those steps; an INFO line says so); a
  cut-off last line too, with a WARNING naming its step. Returns whether the evaluation
  of `step` must be redone: `evaluation_due` (the checkpoint says it was done) but no
  line records it, e.g. the line that was cut off.
  """
  records, cut = read(path)
  keep = [line for line, record in records if record['step'] <= step]
  later = sorted({record['step'] for _, record in records if record['step'] > step})
  redo = evaluation_due and not any(
      r['step'] == step and 'eval_top1_error' in r for _, r in records)
  if cut is not None:
    found = re.match(rb'\{"step": (\d+)', cut)
    cut_step = int(found.group(1)) if found else None
    if cut_step is not None and cut_step > step:
      fate = f'step {cut_step} is past the checkpoint (step {step}) and is redone'
    elif redo:
      fate = f'the evaluation of step {step} is redone'
    else:
      fate = (f'what it held of step {cut_step} is lost' if cut_step is not None
              else 'what it held is lost')
    logging.warning('%s: dropped its last line, cut off (%d bytes: %r); %s.', path,
                    len(cut), cut[:60], fate)
  elif redo:
    logging.warning('%s has no evaluation of step %d, which the checkpoint records as '
                    'done; redoing it.', path, step)
  if later:
    logging.info('%s: dropped the lines of steps %d-%d, past the checkpoint (step %d); '
                 'they are redone.', path, later[0], later[-1], step)
  if os.path.exists(path):
    with open(path, 'rb') as f:
      unchanged = f.read() == ''.join(keep).encode()
    if not unchanged:  # Also a last line without its newline, which the writer would extend.
      with open(path + '.tmp', 'w') as f:
        f.writelines(keep)
      os.replace(path + '.tmp', path)
  return redo


class Writer:
  """Writes scalars to metrics.jsonl and TensorBoard (the tensorboard package's event-file
  writer, which needs no TensorFlow); only where `enabled` (the main process).

  Not clu.metric_writers (flax examples' choice): clu has no JSON-lines writer, and
  metrics.jsonl is what the experiments, the tests and a user's own scripts read without
  TensorFlow.
  """

  def __init__(self, workdir, enabled=True):
    self.enabled = enabled
    if enabled:
      self._jsonl = open(os.path.join(workdir, FILE), 'a')
      self._tb = event_file_writer.EventFileWriter(os.path.join(workdir, 'tensorboard'))

  def write(self, step, scalars):
    if not self.enabled:
      return
    scalars = {k: float(v) for k, v in scalars.items()}
    self._jsonl.write(json.dumps({'step': int(step), **scalars}) + '\n')
    self._jsonl.flush()
    for k, v in scalars.items():
      self._tb.add_event(event_pb2.Event(wall_time=time.time(), step=int(step),
                                         summary=tensorboard_scalar.scalar_pb(k, v)))
    self._tb.flush()

  def close(self):
    if self.enabled:
      self._jsonl.close()
      self._tb.close()
