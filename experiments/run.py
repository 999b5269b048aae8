"""Entry point: `python -m experiments.run --config=experiments/<cfg>.py[:args] --workdir=DIR`.

Override any field the ml_collections way: `--config.train.epochs=10`.
"""

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.")
_MULTIHOST = flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize() first "
                                "(TPU pods, SLURM, or JAX_COORDINATOR_ADDRESS set).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    import logging as py_logging

    import jax

    from dfcl_jax.train.loop import train_and_evaluate

    if _MULTIHOST.value:
        jax.distributed.initialize()
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
    with open(f"{_WORKDIR.value}/summary.md") as f:
        print(f.read())


if __name__ == "__main__":
    app.run(main)
