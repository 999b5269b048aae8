"""Run by test_sharding.py in a subprocess with 4 fake CPU devices (XLA_FLAGS set before jax)."""

import os
import sys

os.environ["XLA_FLAGS"] = ("--xla_force_host_platform_device_count=4 "
                           "--xla_cpu_collective_call_terminate_timeout_seconds=8")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from dfcl_jax.methods import TaskInfo  # noqa: E402
from dfcl_jax.train import mesh as mesh_lib  # noqa: E402
from dfcl_jax.train.state import init_run_state, make_optimizer  # noqa: E402
from dfcl_jax.train.steps import make_eval_step, make_train_step  # noqa: E402
from tests.conftest import tiny_config  # noqa: E402


def one_step(exp_fn, num_devices, method):
    from dfcl_jax.train.loop import build_experiment

    cfg = tiny_config(sys.argv[1], method=method, **{"runtime.num_devices": num_devices})
    exp = build_experiment(cfg, sys.argv[2])
    tx = make_optimizer(cfg.train)
    run = init_run_state(exp.model, tx, jax.random.key(0),
                         np.zeros((1, *exp.data.image_shape), np.float32))
    run = mesh_lib.put_replicated(exp.mesh, run)
    step = make_train_step(exp.model, exp.method, exp.augmentation, exp.mesh)
    ix = exp.training_indices(0)[:32]
    images, labels = mesh_lib.put_batch(exp.mesh, exp.data.train_images[ix], exp.train_labels[ix])
    assert len(images.sharding.device_set) == num_devices
    run, metrics = step(run, images, labels, TaskInfo.make(0, 5), jax.random.key(1))
    jax.block_until_ready(metrics)
    run, metrics = step(run, images, labels, TaskInfo.make(0, 5), jax.random.key(2))
    jax.block_until_ready(metrics)
    ev = make_eval_step(exp.model, exp.augmentation, exp.mesh)
    variables = {"params": run.train.params, "batch_stats": run.train.batch_stats}
    correct = np.asarray(ev(variables, images, labels, np.int32(5)))
    return (float(metrics["loss"]), jax.device_get(run.train.params),
            jax.device_get(run.train.batch_stats), correct)


if __name__ == "__main__":
    assert jax.device_count() == 4, jax.devices()
    for method in ("finetune", "lwf_mc"):
        l1, p1, s1, c1 = one_step(None, 1, method)
        l4, p4, s4, c4 = one_step(None, 4, method)
        print(f"{method}: loss 1 device {l1:.7f}, 4 devices {l4:.7f}")
        np.testing.assert_allclose(l1, l4, rtol=1e-5)
        for a, b in zip(jax.tree.leaves((p1, s1)), jax.tree.leaves((p4, s4))):
            np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)
        np.testing.assert_array_equal(c1, c4)
    print("SAME")
