"""Trains AlexNet: `python -m alexnet_jax.main --config=configs/alexnet.py --workdir=DIR`.

Config fields are overridden on the command line (`--config.batch_size=256`); a preset
follows the file name (`--config=configs/alexnet.py:original_code`). Rerunning with the
same --workdir resumes from its latest checkpoint. Several hosts: one process per host,
connected by JAX's distributed runtime (docs/training.md, "Several machines").
"""

import os

from alexnet_jax import console

with console.quiet_imports(__name__ == '__main__'):  # Before TensorFlow's C++ loads.
  from absl import app
  from absl import flags
  from absl import logging
  import jax
  from ml_collections import config_flags

  from alexnet_jax import input_pipeline
  from alexnet_jax import synthetic
  from alexnet_jax import train

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Training configuration file.',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for checkpoints and metrics.')
flags.DEFINE_integer('heartbeat_timeout', 100, 'Several processes: seconds without a '
                     "heartbeat after which JAX's coordinator declares a process dead and "
                     'ends the others (JAX\'s default, 100). Shorter notices a silent peer '
                     'sooner; too short ends a run whose process merely stalls.')
flags.mark_flags_as_required(['config', 'workdir'])
console.define_flags()


def maybe_initialize_distributed(config, heartbeat_timeout=100):
  """Starts JAX's distributed runtime when the config or the environment asks for it.

  With config.distributed, jax.distributed.initialize() finds the cluster itself (SLURM,
  Open MPI, TPU pods); JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID set
  it up anywhere else. heartbeat_timeout: seconds after which the coordinator declares a
  silent process dead (docs/training.md, "Several machines").
  """
  if config.distributed or 'JAX_COORDINATOR_ADDRESS' in os.environ:
    env = os.environ
    jax.distributed.initialize(
        coordinator_address=env.get('JAX_COORDINATOR_ADDRESS'),
        num_processes=int(env['JAX_NUM_PROCESSES']) if 'JAX_NUM_PROCESSES' in env else None,
        process_id=int(env['JAX_PROCESS_ID']) if 'JAX_PROCESS_ID' in env else None,
        heartbeat_timeout_seconds=heartbeat_timeout)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  maybe_initialize_distributed(FLAGS.config, FLAGS.heartbeat_timeout)
  logging.info('JAX process %d of %d; %d local / %d global devices: %s',
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count(), jax.devices())
  if FLAGS.config.data.dataset != synthetic.DATASET:  # Its format imports TensorFlow: quietly.
    with console.quiet_imports(True):
      input_pipeline.source(FLAGS.config.data)
  train.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == '__main__':
  app.run(console.app_main(main))
