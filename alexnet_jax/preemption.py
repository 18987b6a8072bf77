"""Preemption: a SIGTERM ends a run at a point every process agrees on, after a
checkpoint; a peer process that is gone ends the others with a message that says so.
"""

import re
import signal

import jax
from jax.experimental import multihost_utils

from alexnet_jax import checkpointing

# What a collective says when the process at the other end is gone (XLA:CPU's Gloo, gRPC).
_PEER_GONE = re.compile(r'Gloo \S+ failed|Connection reset by peer|Connection refused|'
                        r'Broken pipe|Socket closed')


class PeerLost(RuntimeError):
  """Another process of a multi-process run is gone; this one must stop too.

  skip_cleanup: JAX's distributed shutdown at exit would wait for the dead peer at its
  shutdown barrier until the coordinator's heartbeat timeout, then abort the process
  (console.run exits at once instead).
  """
  skip_cleanup = True


def peer_lost(error, step, manager):
  """PeerLost for `error`, a collective of a multi-process run failing at `step` because
  a peer is gone; None for any other error."""
  if jax.process_count() < 2 or not _PEER_GONE.search(str(error)):
    return None
  me, n = jax.process_index(), jax.process_count()
  peer = f'process {1 - me}' if n == 2 else 'another process (its own log says which)'
  latest = checkpointing.latest_complete(manager)
  kept = (f'The last checkpoint, step {latest} in {manager.directory}, is intact'
          if latest is not None else f'No checkpoint was saved yet in {manager.directory}')
  return PeerLost(
      f'A peer process is gone: {peer} of {n} stopped answering at step {step} '
      f'({checkpointing.first_line(error)}); process {me} stops too. {kept}: start every '
      'process again with the same --workdir to resume.')


class Preemption:
  """Says when to stop for a SIGTERM, at a point every process agrees on.

  One process: a SIGTERM handler sets a flag. Several: JAX's preemption service (started by
  jax.distributed.initialize) catches SIGTERM on any process, and
  `multihost_utils.reached_preemption_sync_point` turns True on every process at the same
  call. So `reached()` must be called at the same points by every process: after every
  training step and every evaluation batch. (orbax's `reached_preemption` is that same
  call, and says False on one process, where no preemption service runs: hence the flag.)
  """

  def __init__(self):
    self._calls = 0
    self._flag = False
    self._multi = jax.process_count() > 1
    self._previous = None if self._multi else signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    self._flag = True

  def reached(self):
    self._calls += 1
    if self._multi:
      return multihost_utils.reached_preemption_sync_point(self._calls)
    return self._flag

  def close(self):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
