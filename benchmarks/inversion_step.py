"""Inversion step speed with a ResNet-32 teacher: the DeepInversion image-optimisation step and the
ABD generator step.

    python -m benchmarks.inversion_step [--batch 128] [--steps 10] [--rolled] [--only di|abd]

Times jitted chunks of `--steps` Adam steps after compilation (DeepInversion: BN statistics + CE +
TV, gradients w.r.t. the images; ABD: generator forward, teacher forward, the four ABD losses,
gradients w.r.t. the generator) and reports ms per step and images/s as JSON.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import device_description, emit
from dfcl_jax.inversion import DeepInversionConfig
from dfcl_jax.inversion.api import as_teacher_fn
from dfcl_jax.inversion.deepinversion import make_deepinversion_loop
from dfcl_jax.models.resnet import cifar_resnet


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--only", default="", choices=["", "di", "abd"])
    p.add_argument("--rolled", action="store_true",
                   help="also time the rolled scan (an XLA while loop), for comparison")
    a = p.parse_args(argv)
    out = {"benchmark": "inversion_step", "device": device_description()}
    if a.only in ("", "di"):
        out["deepinversion"] = time_deepinversion(a, unroll=True)
        if a.rolled:
            out["deepinversion_rolled_scan"] = time_deepinversion(a, unroll=False)
    if a.only in ("", "abd"):
        out["abd_generator"] = time_abd_generator(a)
    emit(out)


def time_chunk(chunk, carry, args, steps: int, repeats: int):
    t0 = time.perf_counter()
    carry, out = chunk(carry, jnp.int32(0), *args)
    jax.block_until_ready(out)
    compile_s = time.perf_counter() - t0
    per_step = []
    for r in range(repeats):
        t = time.perf_counter()
        carry, out = chunk(carry, jnp.int32((r + 1) * steps), *args)
        jax.block_until_ready(out)
        per_step.append(1000 * (time.perf_counter() - t) / steps)
    return compile_s, per_step


def time_abd_generator(a) -> dict:
    from dfcl_jax.inversion.generator import GeneratorConfig, GeneratorTrainer
    from dfcl_jax.models.generator import Generator

    model = cifar_resnet(100)
    teacher = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    trainer = GeneratorTrainer(Generator(), model,
                               GeneratorConfig(batch_size=a.batch, chunk=a.steps))
    state = trainer.init(jax.random.key(1))
    carry = (state["params"], state["batch_stats"], state["opt_state"])
    compile_s, per_step = time_chunk(trainer.loop.compiled(a.steps), carry,
                                     (teacher, jnp.int32(100), jax.random.key(2)), a.steps,
                                     a.repeats)
    ms = float(np.median(per_step))
    return {"batch": a.batch, "teacher": "cifar_resnet32", "generator": "abd_32px_width128",
            "unrolled": True, "compile_plus_first_chunk_s": round(compile_s, 2),
            "median_ms_per_step": round(ms, 1), "min_ms_per_step": round(float(min(per_step)), 1),
            "images_per_s": round(a.batch / ms * 1000, 1), "steps_per_chunk": a.steps,
            "repeats": a.repeats}


def time_deepinversion(a, unroll: bool) -> dict:

    model = cifar_resnet(100)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    teacher = as_teacher_fn(model, variables)
    cfg = DeepInversionConfig(steps=a.steps, chunk=a.steps, unroll=unroll)
    tx, loop = make_deepinversion_loop(teacher, cfg)
    chunk = loop.compiled(a.steps)
    x = jax.random.normal(jax.random.key(1), (a.batch, 32, 32, 3))
    labels = jnp.arange(a.batch) % 100
    args = (labels, jnp.int32(100), jax.random.key(2))
    carry = (x, tx.init(x), jnp.copy(x), jnp.asarray(jnp.inf))
    compile_s, per_step = time_chunk(chunk, carry, args, a.steps, a.repeats)
    ms = float(np.median(per_step))
    return {"batch": a.batch, "teacher": "cifar_resnet32", "unrolled": unroll,
            "compile_plus_first_chunk_s": round(compile_s, 2), "median_ms_per_step": round(ms, 1),
            "min_ms_per_step": round(float(min(per_step)), 1),
            "images_per_s": round(a.batch / ms * 1000, 1), "steps_per_chunk": a.steps,
            "repeats": a.repeats}


if __name__ == "__main__":
    main()
