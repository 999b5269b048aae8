"""Shared fixtures: tiny configs over generated IDX stand-ins, and the real Fashion-MNIST files."""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# One on-disk XLA cache for the session (and the runs it starts in subprocesses): many tests
# compile the same tiny programs. It starts empty, so every run of the suite compiles afresh once.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="dfcl_jax_test_xla_"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")

import pytest  # noqa: E402

from dfcl_jax.data.stand_in import write_idx_dataset  # noqa: E402
from experiments import fashion_mnist  # noqa: E402

FASHION_DIR = "/usr/share/datasets/fashion-mnist"


@pytest.fixture(scope="session")
def idx_dir(tmp_path_factory):
    """A generated 10-class MNIST-format dataset (gzipped IDX files, 28x28)."""
    return write_idx_dataset(str(tmp_path_factory.mktemp("idx")), num_classes=10,
                             train_per_class=64, test_per_class=20)


@pytest.fixture(scope="session")
def trained_teacher(idx_dir, tmp_path_factory):
    """(model, variables) of a tiny ResNet trained on 5 stand-in classes (6 epochs: with 3 it
    still predicted one class on this machine's XLA:CPU, 20 % test accuracy)."""
    from dfcl_jax.train.loop import ContinualRun, build_experiment

    cfg = tiny_config(idx_dir, tasks=2, epochs=6)
    run = ContinualRun(build_experiment(cfg, str(tmp_path_factory.mktemp("teacher"))))
    run.T = 1
    run.R, run.seen_acc = [[None]], [None]
    accuracy = run.run()["final_accuracy"]
    assert accuracy > 0.6, f"the teacher the inversion tests rely on is untrained ({accuracy})"
    t = run.run_state.train
    return run.exp.model, {"params": t.params, "batch_stats": t.batch_stats}


def tiny_config(data_dir: str, method: str = "finetune", tasks: int = 2, epochs: int = 2,
                **overrides):
    """The Fashion-MNIST config shrunk to a tiny ResNet on `data_dir`, a few dozen steps."""
    c = fashion_mnist.get_config(f"method={method},tasks={tasks}")
    c.data.data_dir = data_dir
    c.data.train_per_class = 0
    c.model.depth = 8
    c.model.widths = (4, 8, 16)
    c.train.epochs = epochs
    c.train.batch_size = 32
    c.train.eval_batch_size = 64
    c.train.lr_milestones = ()
    c.checkpoint.every_epochs = 1
    c.runtime.progress = False
    c.runtime.log_every_steps = 4
    for key, value in overrides.items():
        node = c
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return c


requires_fashion_mnist = pytest.mark.skipif(
    not os.path.exists(os.path.join(FASHION_DIR, "train-images-idx3-ubyte.gz")),
    reason="apt-get install -y dataset-fashion-mnist")
