"""The benchmarks of `python -m benchmarks.run`: each builds a compiled, ready-to-time `Case`.

Models are the CIFAR ResNet-32 (100 classes) at 32x32x3 unless stated; inputs are random. Chunked
inversion loops are timed per jitted chunk (`--chunk` unrolled steps, as the library runs them)
and reported per step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import Case, compile_timed, flops_of_compiled, xla_memory_mb
from dfcl_jax.data.augment import Augmentation
from dfcl_jax.methods import TaskInfo, get_method, method_config
from dfcl_jax.models.resnet import cifar_resnet
from dfcl_jax.train import mesh as mesh_lib
from dfcl_jax.train.state import init_run_state
from dfcl_jax.train.steps import make_eval_step, make_train_step
from experiments.base import get_config

NUM_CLASSES = 100
IMAGE = (32, 32, 3)
# PyTorch 2.13 CPU, same operations, 2 threads, batch 128, median ms per step (issue 7).
REFERENCE_MS = {"train": 482.0, "deepinversion": 851.0, "abd_generator": 1591.0,
                "abd_student": 3529.0}
REFERENCE_BATCH = 128


def _model(impl):
    return cifar_resnet(NUM_CLASSES, conv_impl=impl)


def _uint8_batch(mesh, batch: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (batch, *IMAGE), dtype=np.uint8)
    labels = rng.integers(50, 60, batch).astype(np.int32)
    return mesh_lib.put_batch(mesh, images, labels)


def _augmentation(cfg):
    return Augmentation(tuple(cfg.data.mean), tuple(cfg.data.std))


def _state_case(name, compiled, state, args, images, check_key=None, **kw) -> Case:
    """A case whose first argument is donated state, threaded from call to call."""
    box = {"state": state}
    for _ in range(2):  # the second loss follows one update (gradients all-reduced when sharded)
        box["state"], metrics = compiled(box["state"], *args)
        check = float(jax.device_get(metrics[check_key])) if check_key else None

    def call():
        box["state"], metrics = compiled(box["state"], *args)
        return metrics

    return Case(name, call, images, flops_per_step=flops_of_compiled(compiled),
                xla_mb=xla_memory_mb(compiled), check=check, compiled=compiled, **kw)


def train(a, mesh, impl) -> Case:
    """ResNet-32 train step (fine-tune CE): augmentation, forward, backward, SGD momentum."""
    cfg, model = get_config(), _model(impl)
    method = get_method(method_config("finetune"))
    run = mesh_lib.put_replicated(mesh, init_run_state(model, cfg.train, jax.random.key(0),
                                                       np.zeros((1, *IMAGE), np.float32)))
    images, labels = _uint8_batch(mesh, a.batch)
    args = (images, labels, TaskInfo.make(50, 60), jax.random.key(1))
    step = make_train_step(model, method, _augmentation(cfg), mesh)
    compiled, secs = compile_timed(step, run, *args)
    return _state_case("train", compiled, run, args, a.batch, "loss", compile_s=secs)


def eval_step(a, mesh, impl) -> Case:
    """ResNet-32 eval step: normalise, forward, masked argmax."""
    cfg, model = get_config(), _model(impl)
    variables = mesh_lib.put_replicated(mesh, model.init(jax.random.key(0),
                                                         jnp.zeros((1, *IMAGE)), False))
    images, labels = _uint8_batch(mesh, a.batch)
    step = make_eval_step(model, _augmentation(cfg), mesh)
    args = (variables, images, labels, np.int32(60))
    compiled, secs = compile_timed(step, *args)
    return Case("eval", lambda: compiled(*args), a.batch, compile_s=secs,
                flops_per_step=flops_of_compiled(compiled), xla_mb=xla_memory_mb(compiled),
                compiled=compiled)


def _chunk_case(name, loop, carry, args, a, images, secs_extra=0.0, **kw) -> Case:
    """A case timing one jitted chunk of `a.chunk` loop steps (carry donated)."""
    chunk = loop.compiled(a.chunk)
    start = jnp.int32(0)
    compiled, secs = compile_timed(chunk, carry, start, *args)
    box = {"carry": carry, "start": 0}
    box["carry"], metrics = compiled(box["carry"], start, *args)
    check = float(np.asarray(jax.device_get(metrics["loss"]))[-1])

    def call():
        box["start"] += a.chunk
        box["carry"], m = compiled(box["carry"], jnp.int32(box["start"]), *args)
        return m

    flops = flops_of_compiled(compiled)
    return Case(name, call, images, steps_per_call=a.chunk, compile_s=secs + secs_extra,
                flops_per_step=flops / a.chunk if flops else None,
                xla_mb=xla_memory_mb(compiled), check=check, compiled=compiled, **kw)


def deepinversion(a, mesh, impl) -> Case:
    """DeepInversion image step: ResNet-32 teacher, BN statistics + CE + TV, Adam on the images."""
    from dfcl_jax.inversion import DeepInversionConfig
    from dfcl_jax.inversion.api import as_teacher_fn
    from dfcl_jax.inversion.deepinversion import make_deepinversion_loop

    model = _model(impl)
    variables = model.init(jax.random.key(0), jnp.zeros((1, *IMAGE)))
    tx, loop = make_deepinversion_loop(as_teacher_fn(model, variables),
                                       DeepInversionConfig(steps=a.chunk, chunk=a.chunk))
    x = jax.random.normal(jax.random.key(1), (a.batch, *IMAGE))
    carry = (x, tx.init(x), jnp.copy(x), jnp.asarray(jnp.inf))
    args = (jnp.arange(a.batch) % NUM_CLASSES, jnp.int32(NUM_CLASSES), jax.random.key(2))
    return _chunk_case("deepinversion", loop, carry, args, a, a.batch)


def abd_generator(a, mesh, impl) -> Case:
    """ABD generator step: generator forward, teacher forward, four ABD losses, backward, Adam."""
    from dfcl_jax.inversion.generator import GeneratorConfig, GeneratorTrainer
    from dfcl_jax.models.generator import Generator

    model = _model(impl)
    teacher = model.init(jax.random.key(0), jnp.zeros((1, *IMAGE)))
    trainer = GeneratorTrainer(Generator(conv_impl=impl), model,
                               GeneratorConfig(batch_size=a.batch, chunk=a.chunk))
    state = trainer.init(jax.random.key(1))
    carry = (state["params"], state["batch_stats"], state["opt_state"])
    return _chunk_case("abd_generator", trainer.loop, carry,
                       (teacher, jnp.int32(NUM_CLASSES), jax.random.key(2)), a, a.batch)


def abd_student(a, mesh, impl) -> Case:
    """ABD student step: `batch` real + `batch` generator images, teacher forwards, ABD losses."""
    cfg, model = get_config(), _model(impl)
    method = get_method(method_config("abd"))
    method.bind(NUM_CLASSES, 10, mesh)
    run = mesh_lib.put_replicated(mesh, init_run_state(model, cfg.train, jax.random.key(0),
                                                       np.zeros((1, *IMAGE), np.float32), method))
    images, labels = _uint8_batch(mesh, a.batch)
    args = (images, labels, TaskInfo.make(50, 60), jax.random.key(1))
    step = make_train_step(model, method, _augmentation(cfg), mesh)
    compiled, secs = compile_timed(step, run, *args)
    return _state_case("abd_student", compiled, run, args, 2 * a.batch, "loss", compile_s=secs,
                       info={"real_per_step": a.batch, "synthetic_per_step": a.batch})


def _pmi(a, mesh, impl, **cfg_kw):
    from dfcl_jax.inversion.pmi import PMIConfig, PMIInverter

    model = _model(impl)
    variables = mesh_lib.put_replicated(mesh, model.init(jax.random.key(0),
                                                         jnp.zeros((1, *IMAGE))))
    cfg = PMIConfig(micro_batch=a.targets, chunk=a.chunk, **cfg_kw)
    inv = PMIInverter(model, cfg, mesh)
    z = inv._place(jax.random.uniform(jax.random.key(3), (a.targets, 64)), a.targets)
    return inv, variables, z


def pmi_block(a, mesh, impl) -> Case:
    """PMI one-block solve step (block `--pmi-block`): block forward + BN-KL + MSE, Adam on x."""
    inv, variables, _ = _pmi(a, mesh, impl)
    i = a.pmi_block
    shapes = inv.input_shapes(variables, IMAGE, a.targets)
    out_shape = shapes[i + 1] if i + 1 < inv.L else (a.targets, 64)
    target = inv._place(jax.random.normal(jax.random.key(4), out_shape), a.targets)
    x0 = jax.random.normal(jax.random.key(5), shapes[i])
    tx, loop = inv.block_loop(i)
    carry = inv.initial_carry(tx, x0, 3)
    return _chunk_case("pmi_block", loop, carry, (variables, target, jnp.zeros(())), a, a.targets,
                       info={"block": i, "block_input": list(shapes[i])})


def _phase_flops(inv, variables, z, a) -> tuple[float | None, float]:
    """FLOPs of the per-layer phase and of one full-model step, from the compiled chunks."""
    shapes = inv.input_shapes(variables, IMAGE, a.targets)
    total, chunk = 0.0, min(a.chunk, inv.cfg.block_steps)
    for i in range(inv.L):
        out_shape = shapes[i + 1] if i + 1 < inv.L else z.shape
        tx, loop = inv.block_loop(i)
        carry = inv.initial_carry(tx, jnp.zeros(shapes[i]), 3)
        target = inv._place(jnp.zeros(out_shape), a.targets)
        f = flops_of_compiled(loop.compiled(chunk).lower(carry, jnp.int32(0), variables, target,
                                                         jnp.zeros(())).compile())
        if f is None:
            return None, 0.0
        total += f / chunk * inv.cfg.block_steps
    tx, loop = inv.full_loop()
    carry = inv.initial_carry(tx, jnp.zeros((a.targets, *IMAGE)), 2)
    f = flops_of_compiled(loop.compiled(min(a.chunk, inv.cfg.full_steps)).lower(
        carry, jnp.int32(0), variables, z, jnp.zeros(())).compile())
    return total, (f / min(a.chunk, inv.cfg.full_steps)) if f else 0.0


def pmi_per_layer(a, mesh, impl) -> Case:
    """PMI per-layer phase for `--targets` targets: every block, `--pmi-block-steps` steps each."""
    inv, variables, z = _pmi(a, mesh, impl, block_steps=a.pmi_block_steps,
                             full_steps=a.pmi_full_steps)
    secs = inv.warmup(variables, z, IMAGE)
    per_layer, _ = _phase_flops(inv, variables, z, a)
    steps = inv.L * a.pmi_block_steps
    key = {"i": 0}

    def call():
        key["i"] += 1
        x, _, _ = inv.per_layer_inversion(variables, z, IMAGE, jax.random.key(key["i"]), False)
        return x

    return Case("pmi_per_layer", call, a.targets, steps_per_call=steps, compile_s=secs,
                flops_per_step=per_layer / steps if per_layer else None,
                info={"blocks": inv.L, "steps_per_block": a.pmi_block_steps,
                      "compile_covers": "every block solve and the full-model solve"})


def pmi_full(a, mesh, impl) -> Case:
    """PMI full-model phase for `--targets` targets: `--pmi-full-steps` Adam steps on the images."""
    inv, variables, z = _pmi(a, mesh, impl, block_steps=a.pmi_block_steps,
                             full_steps=a.pmi_full_steps)
    tx, loop = inv.full_loop()
    carry = inv.initial_carry(tx, jnp.zeros((a.targets, *IMAGE)), 2)
    compiled, secs = compile_timed(loop.compiled(min(a.chunk, a.pmi_full_steps)), carry,
                                   jnp.int32(0), variables, z, jnp.zeros(()))
    chunk_flops = flops_of_compiled(compiled)
    x0 = inv._place(jax.random.normal(jax.random.key(6), (a.targets, *IMAGE)), a.targets)

    def call():  # the public refinement copies its start (the solve donates it)
        x, _, _ = inv.full_model_refinement(variables, x0, z, False)
        return x

    return Case("pmi_full", call, a.targets, steps_per_call=a.pmi_full_steps, compile_s=secs,
                flops_per_step=chunk_flops / min(a.chunk, a.pmi_full_steps) if chunk_flops else None,
                xla_mb=xla_memory_mb(compiled), info={"steps_per_phase": a.pmi_full_steps})


def _features(a):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(a.classes), a.per_class).astype(np.int32)
    centres = rng.normal(size=(a.classes, 64)).astype(np.float32)
    feats = np.maximum(centres[labels] + rng.normal(size=(len(labels), 64)).astype(np.float32), 0)
    return feats, labels


def cfs(a, mesh, impl) -> Case:
    """CFS target selection: `--per-class` targets for each of `--classes` classes (d = 64)."""
    from dfcl_jax.inversion import feature_model as fm

    cfg = fm.FeatureModelConfig()
    feats, labels = _features(a)
    classes = np.arange(a.classes)
    mean, std = fm.class_statistics(feats, labels, classes)
    enc = fm.init_encoders(jax.random.key(0), a.classes, 64)
    fn = jax.jit(lambda k, y, m, s, e: fm.sample_targets(k, y, m, s, e, cfg, classes=classes,
                                                         max_count=a.per_class))
    args = (jax.random.key(1), jnp.asarray(labels), mean, std, enc)
    compiled, secs = compile_timed(fn, *args)
    return Case("cfs", lambda: compiled(*args), len(labels), compile_s=secs,
                flops_per_step=flops_of_compiled(compiled), xla_mb=xla_memory_mb(compiled),
                info={"classes": a.classes, "targets_per_class": a.per_class, "unit": "targets"})


def feature_model(a, mesh, impl) -> Case:
    """Feature-model fitting: class statistics + one contrastive encoder per class (vmapped)."""
    from dfcl_jax.inversion import feature_model as fm

    cfg = fm.FeatureModelConfig(encoder_epochs=a.encoder_epochs)
    feats, labels = _features(a)
    classes = np.arange(a.classes)
    stats = jax.jit(fm.class_statistics)
    t_stats, secs_stats = compile_timed(stats, feats, labels, classes)
    x = jnp.asarray(feats.reshape(a.classes, a.per_class, 64))
    counts = jnp.full((a.classes,), a.per_class, jnp.int32)
    batch = min(cfg.encoder_batch, a.per_class)
    t_enc, secs_enc = compile_timed(fm._train_padded, jax.random.key(0), x, counts, cfg, batch)
    flops = [flops_of_compiled(t_stats), flops_of_compiled(t_enc)]

    def call():
        mean, std = stats(feats, labels, classes)
        enc, _ = fm.train_encoders(jax.random.key(1), feats, labels, classes, 64, cfg)
        return mean, std, enc

    return Case("feature_model", call, len(labels), compile_s=secs_stats + secs_enc,
                flops_per_step=sum(flops) if all(flops) else None, xla_mb=xla_memory_mb(t_enc),
                info={"classes": a.classes, "features_per_class": a.per_class,
                      "encoder_epochs": a.encoder_epochs, "unit": "features"})


BENCHMARKS = {"train": train, "eval": eval_step, "deepinversion": deepinversion,
              "abd_generator": abd_generator, "abd_student": abd_student, "pmi_block": pmi_block,
              "pmi_per_layer": pmi_per_layer, "pmi_full": pmi_full, "cfs": cfs,
              "feature_model": feature_model}
# Long phases: timed `--phase-repeats` times instead of `--steps` steps.
PHASES = ("pmi_per_layer", "pmi_full", "feature_model")
# Benchmarks that take the model's convolutions (and so `--conv-impl`).
CONV = ("train", "eval", "deepinversion", "abd_generator", "abd_student", "pmi_block",
        "pmi_per_layer", "pmi_full")
