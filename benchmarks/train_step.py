"""ResNet-32 train step (batch 128, 32x32x3, 100 classes) and eval step: ms/step and images/s.

    python -m benchmarks.train_step [--batch 128] [--steps 20] [--method finetune]

Prints JSON. Times are medians after compilation and warm-up, blocking on every step.
"""

from __future__ import annotations

import argparse

import jax
import numpy as np

from benchmarks.common import device_description, emit, flops_of, time_steps
from dfcl_jax.data.augment import Augmentation
from dfcl_jax.methods import TaskInfo, get_method, method_config
from dfcl_jax.models.resnet import cifar_resnet
from dfcl_jax.train import mesh as mesh_lib
from dfcl_jax.train.state import init_run_state
from dfcl_jax.train.steps import make_eval_step, make_train_step
from experiments.base import get_config


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--method", default="finetune")
    a = p.parse_args(argv)

    cfg = get_config()
    mesh = mesh_lib.make_mesh()
    model = cifar_resnet(100)
    method = get_method(method_config(a.method))
    aug = Augmentation(tuple(cfg.data.mean), tuple(cfg.data.std))
    run = mesh_lib.put_replicated(mesh, init_run_state(model, cfg.train, jax.random.key(0),
                                                       np.zeros((1, 32, 32, 3), np.float32)))
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (a.batch, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(50, 60, a.batch).astype(np.int32)
    images, labels = mesh_lib.put_batch(mesh, images, labels)
    task = TaskInfo.make(50, 60)
    key = jax.random.key(1)

    train = make_train_step(model, method, aug, mesh)
    flops = flops_of(train, run, images, labels, task, key)
    train_stats, run = time_steps(lambda s, *x: train(s, *x), run, (images, labels, task, key), a.steps)

    evaluate = make_eval_step(model, aug, mesh)
    variables = {"params": run.train.params, "batch_stats": run.train.batch_stats}
    eval_stats, _ = time_steps(lambda v, *x: (v, evaluate(v, *x)), variables,
                            (images, labels, np.int32(60)), a.steps, carry_state=False)
    eval_flops = flops_of(evaluate, variables, images, labels, np.int32(60))
    out = {"benchmark": "train_step", "device": device_description(), "batch": a.batch,
           "method": a.method, "model": "cifar_resnet32"}
    for name, stats, f in (("train", train_stats, flops), ("eval", eval_stats, eval_flops)):
        stats["images_per_s"] = round(a.batch / (stats["median_ms"] / 1000), 1)
        if f:
            stats["gflop_per_step"] = round(f / 1e9, 2)
            stats["gflop_per_s"] = round(f / 1e6 / stats["median_ms"], 1)
        out[name] = stats
    emit(out)


if __name__ == "__main__":
    main()
