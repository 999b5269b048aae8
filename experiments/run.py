"""Entry point: `python -m experiments.run --config=experiments/<cfg>.py[:args] --workdir=DIR`.

Override any field the ml_collections way: `--config.train.epochs=10`. Several processes (hosts)
run one job with `--multihost` (addresses from the cluster: TPU pods, SLURM, Open MPI; or given
with `--coordinator_address`, `--num_processes`, `--process_id`). SIGTERM saves a checkpoint and
exits with code 143; the same command resumes.
"""

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.")
_MULTIHOST = flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize() first "
                                "(TPU pods, SLURM, Open MPI, or the three flags below).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "host:port of process 0 (with --multihost)")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "processes in the job (--multihost)")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "this process's index (--multihost)")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    import logging as py_logging

    import jax

    from dfcl_jax import preemption
    from dfcl_jax.train.loop import train_and_evaluate

    if _MULTIHOST.value:
        # Cross-process collectives on CPU devices go through gloo (GPU/TPU use their own).
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    logging.set_verbosity(logging.WARNING)  # orbax and absl are chatty at INFO
    py_logging.getLogger("dfcl_jax").setLevel(py_logging.INFO)

    logging.warning("JAX devices: %s (process %d of %d)", jax.devices(), jax.process_index(),
                    jax.process_count())
    from dfcl_jax.data.sources import DataError
    from dfcl_jax.train.checkpoint import CheckpointError
    from dfcl_jax.train.validate import ConfigError

    try:
        train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    except (ConfigError, DataError, CheckpointError) as e:
        raise SystemExit(f"error: {e}") from None
    except preemption.Preempted:
        print(f"preempted: checkpoint saved in {_WORKDIR.value}; rerun the same command to "
              "resume", flush=True)
        raise SystemExit(preemption.EXIT_CODE) from None
    if jax.process_index() == 0:
        with open(f"{_WORKDIR.value}/summary.md") as f:
            print(f.read())


if __name__ == "__main__":
    app.run(main)
