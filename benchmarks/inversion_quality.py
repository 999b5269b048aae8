"""Inversion time-to-quality: PMI (per-layer + 160 full-model steps) vs full-model inversion from
noise (same loss, 2,000 steps, and the same run stopped at PMI's wall time) vs the ABD generator,
for one trained teacher and one set of targets.

    python -m benchmarks.inversion_quality [--targets 250] [--full-steps 2000] [--out DIR]

Teacher: the Fashion-MNIST CPU-budget ResNet-14 (widths 8/16/32) trained on all 10 classes for
`--teacher-epochs` epochs (cached in `--out`), or `--data cifar` for a briefly trained ResNet-32 on
generated CIFAR-shaped data (`--variant pmi`: PMI's ResNet-32 flavour). Targets: per-class
Gaussians of the teacher's features with CFS (PMI's own targets). For each method, after
compilation: wall time, feature MSE to the targets, BN-KL (kl_pmi summed over every BatchNorm)
and the real-test accuracy of a fresh student distilled (KD, T = 2) only on that method's images. Prints a table, writes `inversion_quality.json` and
`inversion_quality.png` (loss vs wall time) to `--out`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks.common import device_description
from dfcl_jax.inversion import feature_model as fm
from dfcl_jax.inversion import losses
from dfcl_jax.inversion.generator import GeneratorConfig, GeneratorTrainer
from dfcl_jax.inversion.pmi import PMIConfig, PMIInverter
from dfcl_jax.models.blocks import apply_with_bn_moments
from dfcl_jax.models.generator import Generator
from dfcl_jax.train.loop import ContinualRun, build_experiment
from experiments import base, fashion_mnist


def teacher_config(a):
    if a.data == "cifar":
        c = base.get_config()
        c.data.stand_in = "generated"
        c.data.num_tasks = 1
        c.data.train_per_class = 50
        c.data.num_classes = 100
    else:
        c = fashion_mnist.get_config("method=joint,tasks=1")
        c.data.train_per_class = a.train_per_class
    if a.variant:
        c.model.variant = a.variant
    c.train.epochs = a.teacher_epochs
    c.train.lr_milestones = ()
    c.runtime.progress = False
    return c


def train_teacher(a):
    """(experiment, teacher variables): a 1-task joint run, cached in `--out`."""
    run = ContinualRun(build_experiment(teacher_config(a), os.path.join(a.out, "teacher")))
    run.run()
    t = run.run_state.train
    return run, {"params": {k: v for k, v in t.params.items() if k != "learner"},
                 "batch_stats": t.batch_stats}


def quality(model, variables, images, z):
    """Feature MSE to the targets and BN-KL of a set of images (eval mode)."""
    f, moments = apply_with_bn_moments(model, variables, images, method=model.features)
    mse = None if z is None else float(losses.feature_matching(f, z))
    return mse, float(losses.bn_kl_pmi(moments))


def distill_student(run, teacher, images, a, seed=0):
    """Accuracy on the real test set of a fresh student trained by KD on `images` only."""
    model = run.exp.model
    init = model.init(jax.random.key(seed + 100), images[:1], False)
    tx = optax.adam(a.student_lr)
    params, stats = init["params"], init["batch_stats"]
    opt = tx.init(params)
    t_logits = model.apply(teacher, images)

    @jax.jit
    def step(params, stats, opt, ix):
        def loss(p):
            out, st = model.apply({"params": p, "batch_stats": stats}, images[ix], True,
                                  mutable=["batch_stats"])
            q = jax.nn.softmax(t_logits[ix] / 2.0)
            return -jnp.mean(jnp.sum(q * jax.nn.log_softmax(out / 2.0), -1)), st["batch_stats"]

        (v, st), g = jax.value_and_grad(loss, has_aux=True)(params)
        u, opt = tx.update(g, opt, params)
        return optax.apply_updates(params, u), st, opt, v

    rng = np.random.default_rng(seed)
    for _ in range(a.student_steps):
        params, stats, opt, _ = step(params, stats, opt,
                                     rng.integers(0, len(images), min(a.student_batch, len(images))))
    exp = run.exp
    correct = 0
    evaluate = jax.jit(lambda v, x: jnp.argmax(model.apply(v, x), -1))
    for i in range(0, len(exp.test_labels), 1000):
        x = exp.augmentation.normalize(exp.data.test_images[i:i + 1000])
        correct += int(np.sum(np.asarray(evaluate({"params": params, "batch_stats": stats}, x))
                              == exp.test_labels[i:i + 1000]))
    return correct / len(exp.test_labels)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data", default="fashion_mnist", choices=["fashion_mnist", "cifar"])
    p.add_argument("--variant", default=None, choices=["abd", "pmi"],
                   help="CIFAR ResNet variant of the teacher (default: the config's, abd)")
    p.add_argument("--targets", type=int, default=250)
    p.add_argument("--full-steps", type=int, default=2000)
    p.add_argument("--generator-steps", type=int, default=1000)
    p.add_argument("--teacher-epochs", type=int, default=2)
    p.add_argument("--train-per-class", type=int, default=3000)
    p.add_argument("--student-steps", type=int, default=400)
    p.add_argument("--student-batch", type=int, default=64)
    p.add_argument("--student-lr", type=float, default=1e-3)
    p.add_argument("--unroll", type=int, default=1, help="1: unrolled chunks (CPU), 0: rolled (GPU)")
    p.add_argument("--chunk", type=int, default=10)
    p.add_argument("--out", default="benchmarks/results/inversion_quality")
    a = p.parse_args(argv)
    os.makedirs(a.out, exist_ok=True)
    run, teacher = train_teacher(a)
    model, exp = run.exp.model, run.exp
    shape = exp.data.image_shape
    num_classes = exp.data.num_classes
    out = {"benchmark": "inversion_quality", "device": device_description(), "args": vars(a),
           "teacher_test_accuracy": run.seen_acc[0]}

    # Targets: PMI's class Gaussians + CFS from the teacher's features of real training images.
    idx = exp.train_pool
    feats = run.features(np.asarray(exp.augmentation.normalize(exp.data.train_images[idx])))
    labels = exp.train_labels[idx]
    fmc = fm.FeatureModelConfig(encoder_epochs=20)
    classes = np.arange(num_classes)
    mean, std = fm.class_statistics(feats, labels, classes)
    enc, _ = fm.train_encoders(jax.random.key(0), feats, labels, classes, feats.shape[1], fmc)
    y = np.arange(a.targets) % num_classes
    z = fm.sample_targets(jax.random.key(1), y, mean, std, enc, fmc)
    results, curves = {}, {}

    # (a) PMI: per-layer phase + 160 full-model steps.
    cfg = PMIConfig(micro_batch=a.targets, chunk=a.chunk, unroll=bool(a.unroll))
    inv = PMIInverter(model, cfg)
    compile_s = inv.warmup(teacher, z, shape)
    t0 = time.perf_counter()
    res = inv.invert(teacher, z, shape, jax.random.key(2), progress=False)
    jax.block_until_ready(res.images)
    wall = time.perf_counter() - t0
    full_t = inv.full_loop()[1].last_timing
    per_layer_s = wall - full_t[-1, 1]
    results["pmi"] = {"wall_s": wall, "compile_s": compile_s, "per_layer_s": per_layer_s,
                      "steps": f"{len(model.blocks)} blocks x {cfg.block_steps} + {cfg.full_steps}"}
    results["pmi"]["feature_mse"], results["pmi"]["bn_kl"] = quality(model, teacher, res.images, z)
    results["pmi"]["student_accuracy"] = distill_student(run, teacher, res.images, a)
    curves["pmi"] = (per_layer_s + np.interp(np.arange(1, cfg.full_steps + 1), full_t[:, 0],
                                             full_t[:, 1]), _mse_curve(inv, res, cfg.full_steps))

    # (b) Full-model inversion from noise, same loss, `--full-steps` steps.
    cfg_b = dataclasses.replace(cfg, full_steps=a.full_steps)
    inv_b = PMIInverter(model, cfg_b)
    x0 = jax.random.normal(jax.random.key(3), (a.targets, *shape), jnp.float32)
    t0 = time.perf_counter()
    inv_b._solve(inv_b.full_loop(), teacher, jnp.copy(x0), z, cfg.chunk, 2, "", False)  # compile
    compile_b = time.perf_counter() - t0
    t0 = time.perf_counter()
    xb, hist_b, _ = inv_b.full_model_refinement(teacher, x0, z, progress=True)
    jax.block_until_ready(xb)
    wall_b = time.perf_counter() - t0
    results["full_model"] = {"wall_s": wall_b, "compile_s": compile_b, "steps": a.full_steps}
    results["full_model"]["feature_mse"], results["full_model"]["bn_kl"] = quality(model, teacher, xb, z)
    results["full_model"]["student_accuracy"] = distill_student(run, teacher, xb, a)
    tb = inv_b.full_loop()[1].last_timing
    curves["full_model"] = (np.interp(np.arange(1, a.full_steps + 1), tb[:, 0], tb[:, 1]),
                            np.asarray(inv_b.full_loop()[1].last_history["mse"]))
    # When does (b) first reach PMI's feature MSE?
    reach = np.flatnonzero(curves["full_model"][1] <= results["pmi"]["feature_mse"])
    results["full_model"]["seconds_to_pmi_mse"] = (float(curves["full_model"][0][reach[0]])
                                                   if len(reach) else None)
    # Where each phase starts: the feature MSE of PMI's per-layer image and of the noise.
    results["pmi"]["start_feature_mse"] = float(inv.full_loop()[1].last_history["mse"][0])
    results["full_model"]["start_feature_mse"] = float(curves["full_model"][1][0])

    # (b') The same full-model run stopped at PMI's wall time (equal-time comparison): its first
    # steps are those of (b) (the step schedule does not depend on the step count).
    n_eq = max(int(np.sum(curves["full_model"][0] <= results["pmi"]["wall_s"])), 1)
    xe, _, _ = inv_b.full_model_refinement(teacher, x0, z, progress=False, steps=n_eq)
    results["full_model_equal_time"] = {"wall_s": float(curves["full_model"][0][n_eq - 1]),
                                        "compile_s": None, "steps": n_eq}  # (b)'s loop
    r = results["full_model_equal_time"]
    r["feature_mse"], r["bn_kl"] = quality(model, teacher, xe, z)
    r["student_accuracy"] = distill_student(run, teacher, xe, a)

    # (c) The ABD generator (FMNIST CPU budget: width 32, batch 64), `--generator-steps` steps.
    g = GeneratorConfig(steps=a.generator_steps, batch_size=64, chunk=a.chunk, unroll=bool(a.unroll))
    gen = Generator(image_size=shape[0], channels=shape[2], z_dim=1000, width=32)
    trainer = GeneratorTrainer(gen, model, g)
    state = trainer.init(jax.random.key(4))
    t0 = time.perf_counter()
    state, _ = trainer.train(state, teacher, num_classes, jax.random.key(5), steps=a.chunk,
                             progress=False)
    compile_c = time.perf_counter() - t0
    t0 = time.perf_counter()
    state, hist_c = trainer.train(state, teacher, num_classes, jax.random.key(6), progress=True)
    wall_c = time.perf_counter() - t0
    xc = trainer.sample(state, jax.random.key(7), a.targets)
    results["abd_generator"] = {"wall_s": wall_c, "compile_s": compile_c, "steps": a.generator_steps,
                                "wall_s_per_10k_steps": wall_c * 10_000 / a.generator_steps,
                                "feature_mse": None}
    results["abd_generator"]["bn_kl"] = quality(model, teacher, xc, None)[1]
    results["abd_generator"]["student_accuracy"] = distill_student(run, teacher, xc, a)
    tc = trainer.loop.last_timing
    curves["abd_generator"] = (np.interp(np.arange(1, a.generator_steps + 1), tc[:, 0], tc[:, 1]),
                               np.asarray(hist_c["loss"]))

    pmi, full, gen_r = results["pmi"], results["full_model"], results["abd_generator"]
    out["results"] = results
    out["pmi_over_full_model_wall"] = pmi["wall_s"] / full["wall_s"]
    out["pmi_over_generator_10k_wall"] = pmi["wall_s"] / gen_r["wall_s_per_10k_steps"]
    out["pmi_matches_full_model"] = {
        "feature_mse": pmi["feature_mse"] <= full["feature_mse"],
        "student_accuracy": pmi["student_accuracy"] >= full["student_accuracy"]}
    eq = results["full_model_equal_time"]
    out["pmi_beats_full_model_at_equal_time"] = {
        "feature_mse": pmi["feature_mse"] <= eq["feature_mse"],
        "student_accuracy": pmi["student_accuracy"] >= eq["student_accuracy"]}
    with open(os.path.join(a.out, "inversion_quality.json"), "w") as f:
        json.dump(out, f, indent=1, default=float)
    plot(os.path.join(a.out, "inversion_quality.png"), curves, pmi["per_layer_s"])
    print(table(out))


def _mse_curve(inv, res, steps):
    return np.asarray(inv.full_loop()[1].last_history["mse"])[-steps:]


def table(out) -> str:
    rows = ["| method | steps | wall (s) | compile (s) | feature MSE | BN-KL | student acc. (%) |",
            "|---|---|---|---|---|---|---|"]
    for name, r in out["results"].items():
        mse = "-" if r["feature_mse"] is None else f"{r['feature_mse']:.4f}"
        comp = "-" if r["compile_s"] is None else f"{r['compile_s']:.1f}"
        rows.append(f"| {name} | {r['steps']} | {r['wall_s']:.1f} | {comp} | {mse} | "
                    f"{r['bn_kl']:.3f} | {100 * r['student_accuracy']:.2f} |")
    r = out["results"]
    rows.append(f"\nFeature MSE at the start of the full-model phase: PMI's per-layer image "
                f"{r['pmi']['start_feature_mse']:.3f}, noise {r['full_model']['start_feature_mse']:.3f}")
    rows.append(f"PMI / full-model wall time: {out['pmi_over_full_model_wall']:.3f}; "
                f"PMI / ABD generator (10,000 steps, extrapolated): "
                f"{out['pmi_over_generator_10k_wall']:.4f}; device {out['device']}")
    return "\n".join(rows)


def plot(path, curves, per_layer_s):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4))
    ax, ax2 = fig.subplots(1, 2)
    for name in ("pmi", "full_model"):
        t, v = curves[name]
        ax.plot(t, v, label=name)
    ax.axvspan(0, per_layer_s, color="grey", alpha=0.2, label="PMI per-layer phase")
    ax.axvline(curves["pmi"][0][-1], color="C0", ls=":", label="PMI done (equal-time point)")
    ax.set_xlabel("wall time after compilation (s)")
    ax.set_ylabel("feature MSE to the targets")
    ax.set_yscale("log")
    ax.legend()
    t, v = curves["abd_generator"]
    ax2.plot(t, v, color="C2")
    ax2.set_xlabel("wall time after compilation (s)")
    ax2.set_ylabel("ABD generator loss")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
