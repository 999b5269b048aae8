"""The PyTorch reference of `benchmarks.run --vs-torch` computes what our steps compute.

Tiny shapes (ResNet-8 of widths 4/8/16 on 16x16 images, batch 8; a 16x16 generator), the same
weights copied from Flax into torch, the same draws (jitter shifts, latents) fed to both sides.
Tolerances: float32 throughout; the first step's loss terms and gradients agree to rtol 1e-4
(atol 1e-5 for terms near 0); the loss after one optimiser update to rtol 1e-3 (Adam's first
step is about lr * sign(g), so a gradient's last bits can move a pixel or weight by 2 lr where
g is ~0, which changes the loss only in second order). Skipped where torch is not installed
(the `bench` extra). Weights and inputs are drawn with numpy: on XLA:CPU (jax 0.10,
partitionable threefry) each multi-dimensional `jax.random.normal` shape compiles for seconds.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from benchmarks import torch_reference as tr  # noqa: E402
from dfcl_jax.data.augment import Augmentation  # noqa: E402
from dfcl_jax.models.resnet import cifar_resnet  # noqa: E402

CLASSES, N_SEEN, DEPTH, WIDTHS, HW, B = 10, 7, 8, (4, 8, 16), 16, 8
RTOL, ATOL, RTOL_UPDATE = 1e-4, 1e-5, 1e-3


def _nchw(x):
    return torch.from_numpy(np.asarray(x, np.float32).transpose(0, 3, 1, 2).copy())


def _close(got, want, rtol=RTOL, atol=ATOL, what=""):
    np.testing.assert_allclose(np.asarray(got, np.float64), np.asarray(want, np.float64),
                               rtol=rtol, atol=atol, err_msg=what)


def _fill(shapes, seed):
    """Variables of the shapes of `shapes` (a Flax init's eval_shape), drawn with numpy: conv and
    dense kernels He-normal, BN affines and running statistics away from their identity values."""
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name, shape = str(getattr(path[-1], "key", path[-1])), leaf.shape
        if name == "kernel":
            a = rng.normal(0, np.sqrt(2.0 / np.prod(shape[:-1])), shape)
        elif name == "scale":
            a = rng.uniform(0.5, 1.5, shape)
        elif name == "var":
            a = rng.uniform(0.5, 2.0, shape)
        elif name in ("bias", "mean"):
            a = rng.normal(0, 0.2, shape)
        else:
            raise ValueError(name)
        return a.astype(np.float32)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def _normal(seed, shape):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _tiny_model():
    model = cifar_resnet(CLASSES, depth=DEPTH, widths=WIDTHS)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, HW, HW, 3)))
    return model, shapes


def _tiny_resnet():
    return tr.ResNet(CLASSES, DEPTH, WIDTHS)


def _run_state(model, variables, train_cfg, extras=None):
    """`init_run_state` with given variables (teacher = a copy)."""
    from dfcl_jax.train.state import RunState, TrainState, make_optimizer

    params, stats = dict(variables["params"]), variables["batch_stats"]
    tx = make_optimizer(train_cfg, params, model)
    # One compiled program, not one per optimiser-state leaf shape.
    train = jax.jit(lambda p, s: TrainState.create(apply_fn=model.apply, params=p, tx=tx,
                                                   batch_stats=s))(params, stats)
    teacher = jax.tree.map(np.copy, {"params": params, "batch_stats": stats})
    return RunState(train=train, teacher=teacher, extras=extras or {})


@pytest.fixture(scope="module")
def teacher():
    """A tiny CIFAR ResNet with non-trivial BN affines and running statistics, on both sides."""
    torch.set_num_threads(1)
    model, shapes = _tiny_model()
    v = _fill(shapes, 0)
    return model, v, tr.load_resnet(_tiny_resnet(), v)


def test_train_step_losses_match():
    from dfcl_jax.methods import TaskInfo, get_method, method_config
    from dfcl_jax.train import mesh as mesh_lib
    from dfcl_jax.train.steps import make_train_step
    from experiments.base import get_config

    cfg, mesh = get_config(), mesh_lib.make_mesh(1)
    model, shapes = _tiny_model()
    aug = Augmentation(tuple(cfg.data.mean), tuple(cfg.data.std), crop_padding=0, hflip=False,
                       brightness=0.0, contrast=0.0)  # random draws: see the augmentation test
    weights = _fill(shapes, 1)
    run = _run_state(model, weights, cfg.train)
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (B, HW, HW, 3), dtype=np.uint8)
    labels = rng.integers(0, N_SEEN, B).astype(np.int32)
    step = make_train_step(model, get_method(method_config("finetune")), aug, mesh)
    ours = []
    for i in range(3):
        run, metrics = step(run, images, labels, TaskInfo.make(0, N_SEEN), jax.random.key(i))
        ours.append(float(metrics["loss"]))
    ref = tr.TrainStep(tr.load_resnet(_tiny_resnet(), weights), torch.from_numpy(images),
                       torch.from_numpy(labels), N_SEEN, tr.Augmentation.like(aug), cfg.train)
    theirs = [float(ref.step()["loss"]) for _ in range(3)]
    _close(theirs[0], ours[0], what="first-step CE")
    # SGD with momentum and weight decay, BN in train mode: the losses after 1 and 2 updates.
    _close(theirs[1:], ours[1:], rtol=RTOL_UPDATE, what="CE after SGD updates")


def test_augmentation_matches_with_the_same_draws():
    """Crop, flip, brightness and contrast as ours (the draws taken from our keys)."""
    aug = Augmentation((0.5, 0.4, 0.3), (0.2, 0.25, 0.3))
    images = np.random.default_rng(2).integers(0, 256, (B, HW, HW, 3), dtype=np.uint8)

    @jax.jit
    def ours_and_draws(images, key):  # the draws as `Augmentation.__call__` makes them
        k_crop, k_flip, k_b, k_c = jax.random.split(key, 4)
        return aug(images, key), {
            "offsets": jax.random.randint(k_crop, (B, 2), 0, 9),
            "flip": jax.random.bernoulli(k_flip, 0.5, (B, 1, 1, 1)),
            "brightness": jax.random.uniform(k_b, (B, 1, 1, 1), minval=1 - 63 / 255,
                                             maxval=1 + 63 / 255),
            "contrast": jax.random.uniform(k_c, (B, 1, 1, 1), minval=0.2, maxval=1.8)}

    ours, draws = jax.device_get(ours_and_draws(images, jax.random.key(3)))
    draws = {k: torch.from_numpy(np.array(d).reshape(B, -1).squeeze(1) if k != "offsets" else
                                 np.array(d)) for k, d in draws.items()}
    theirs = tr.Augmentation.like(aug)(torch.from_numpy(images), draws).numpy()
    _close(theirs.transpose(0, 2, 3, 1), ours, rtol=1e-5, atol=1e-5, what="augmented batch")


def test_deepinversion_step_matches(teacher):
    import optax

    from dfcl_jax.inversion import DeepInversionConfig
    from dfcl_jax.inversion.api import as_teacher_fn
    from dfcl_jax.inversion.deepinversion import deepinversion_loss, make_deepinversion_loop

    model, v, t_model = teacher
    cfg = DeepInversionConfig(chunk=1, unroll=True)
    teacher_fn = as_teacher_fn(model, v)
    x0 = _normal(1, (B, HW, HW, 3))
    labels, n_seen, rng = jnp.arange(B) % N_SEEN, jnp.int32(N_SEEN), jax.random.key(2)
    grad_fn = jax.jit(jax.value_and_grad(
        lambda x, r: deepinversion_loss(teacher_fn, cfg, x, labels, n_seen, r), has_aux=True))
    (loss, terms), grad = grad_fn(x0, jax.random.fold_in(rng, 0))  # as the loop's step 0
    tx, _ = make_deepinversion_loop(teacher_fn, cfg)  # its Adam, applied as its step does
    x1 = jax.jit(lambda g, s, x: optax.apply_updates(x, tx.update(g, s, x)[0]))(
        grad, tx.init(jnp.asarray(x0)), x0)
    (loss1, _), _ = grad_fn(x1, jax.random.fold_in(rng, 1))

    def shifts(i):  # the roll our step draws (jitter_and_flip)
        k_roll, _ = jax.random.split(jax.random.fold_in(rng, i))
        return tuple(int(s) for s in jax.random.randint(k_roll, (2,), -cfg.jitter, cfg.jitter + 1))

    ref = tr.DeepInversionStep(t_model, _nchw(x0), torch.from_numpy(np.array(labels)), N_SEEN, cfg)
    first = ref.step(shifts(0))
    for k in ("ce", "bn", "tv", "l2"):
        _close(first[k], terms[k], what=f"first-step {k}")
    _close(first["loss"], loss, what="first-step total")
    g, grad = ref.x.grad.numpy().transpose(0, 2, 3, 1), np.asarray(grad)
    _close(g, grad, atol=RTOL * np.abs(grad).max(), what="pixel gradient")
    # Adam's first step, x0 - lr * g / (|g| + eps), where |g| is not ~0 (there its sign is noise)
    clear = np.abs(grad) > 1e-3 * np.abs(grad).max()
    x1_ref = ref.x.detach().numpy().transpose(0, 2, 3, 1)
    _close(x1_ref[clear], np.asarray(x1)[clear], what="pixels after one Adam step")
    second = ref.step(shifts(1))
    _close(second["loss"], loss1, rtol=RTOL_UPDATE, what="loss after one Adam step")


def test_abd_generator_step_matches(teacher):
    from dfcl_jax.inversion.generator import GeneratorConfig, GeneratorTrainer
    from dfcl_jax.models.generator import Generator

    model, v, t_model = teacher
    gen = Generator(image_size=HW, z_dim=32, width=16)
    cfg = GeneratorConfig(batch_size=B, chunk=1, unroll=True)
    trainer = GeneratorTrainer(gen, model, cfg)
    gen_vars = _fill(jax.eval_shape(gen.init, jax.random.key(0), jnp.zeros((2, gen.z_dim))), 2)
    rng, n_seen = jax.random.key(2), jnp.int32(N_SEEN)
    # z of step i, as the loop draws it (a flat draw reshaped is the same numbers, cheaper to compile)
    zs = [np.array(jax.random.normal(jax.random.fold_in(rng, i), (B * gen.z_dim,))).reshape(
        B, gen.z_dim) for i in range(2)]
    opt_state = jax.jit(trainer.tx.init)(gen_vars["params"])
    carry, ours = (gen_vars["params"], gen_vars["batch_stats"], opt_state), []
    for i in range(2):
        carry, m = trainer.loop.compiled(1)(carry, jnp.int32(i), v, n_seen, rng)
        ours.append({k: float(m[k][0]) for k in m})

    t_gen = tr.load_generator(tr.Generator(HW, 3, gen.z_dim, gen.width, gen.bn_eps_quirk), gen_vars)
    ref = tr.GeneratorStep(t_gen, t_model, N_SEEN, cfg)
    first = ref.step(torch.from_numpy(zs[0]))
    for k in ("content", "diversity", "bn", "smoothness", "loss"):
        _close(first[k], ours[0][k], what=f"first-step {k}")
    second = ref.step(torch.from_numpy(zs[1]))
    _close(second["loss"], ours[1]["loss"], rtol=RTOL_UPDATE, what="loss after Adam")


def test_pmi_block_and_full_losses_match(teacher):
    from dfcl_jax.inversion.pmi import PMIConfig, PMIInverter, full_model_schedule

    model, v, t_model = teacher
    cfg = PMIConfig(micro_batch=B, chunk=1, unroll=True)
    inv = PMIInverter(model, cfg)
    shapes = inv.input_shapes(v, (HW, HW, 3), B)
    for i in (1, inv.L - 1):  # a middle block (with its input prior) and the last (pooled)
        out = shapes[i + 1] if i + 1 < inv.L else (B, WIDTHS[-1])
        x, target = _normal(10 + i, shapes[i]), _normal(20 + i, out)
        weights = (jnp.float32(1.0), jnp.float32(2.0), jnp.float32(1.0))  # a boosted BN weight
        _, (base, terms) = jax.jit(lambda x, t, w, i=i: inv.block_loss(v, i, x, t, w))(
            x, target, weights)
        ref = tr.PMIBlockStep(t_model, i, _nchw(x), _nchw(target) if target.ndim == 4 else
                              torch.from_numpy(np.asarray(target)), cfg)
        ref.weights = [torch.tensor(float(w)) for w in weights]
        got = ref.step()
        for k in ("mse", "bn", "input"):
            _close(got[k], terms[k], what=f"block {i} {k}")
        _close(got["loss"], base, what=f"block {i} base loss")
    x = _normal(3, (B, HW, HW, 3))
    z = np.random.default_rng(4).uniform(size=(B, WIDTHS[-1])).astype(np.float32)
    _, (base, terms) = jax.jit(lambda x, z: inv.full_loss(v, x, z, (1.0, 1.0)))(x, z)
    got = tr.PMIFullStep(t_model, _nchw(x), torch.from_numpy(np.asarray(z)), cfg).step()
    for k in ("mse", "bn"):
        _close(got[k], terms[k], what=f"full-model {k}")
    _close(got["loss"], base, what="full-model base loss")
    schedule = full_model_schedule(cfg)
    _close([tr.full_model_lr(cfg, s) for s in range(cfg.full_steps)],
           [float(schedule(s)) for s in range(cfg.full_steps)], rtol=1e-6, what="full-model lr")


def test_abd_student_step_matches(teacher):
    from dfcl_jax.methods import TaskInfo, get_method, method_config
    from dfcl_jax.train import mesh as mesh_lib
    from dfcl_jax.train.steps import make_train_step
    from experiments.base import get_config

    cfg, mesh = get_config(), mesh_lib.make_mesh(1)
    model, shapes = _tiny_model()
    mcfg = method_config("abd")
    mcfg.generator.z_dim, mcfg.generator.width = 32, 16
    method = get_method(mcfg)
    method.bind(CLASSES, 3, mesh)
    aug = Augmentation(tuple(cfg.data.mean), tuple(cfg.data.std), crop_padding=0, hflip=False,
                       brightness=0.0, contrast=0.0)
    sample = np.zeros((1, HW, HW, 3), np.float32)
    extras = jax.eval_shape(lambda k: method.init_extras(model, k, sample), jax.random.key(0))
    gen_vars = _fill({k: extras["generator"][k] for k in ("params", "batch_stats")}, 3)
    extras = {"generator": {**gen_vars,
                            "opt_state": jax.jit(method.source.trainer.tx.init)(gen_vars["params"])}}
    student_vars = _fill(shapes, 4)
    run = _run_state(model, student_vars, cfg.train, extras)
    run = run.replace(teacher=_fill(shapes, 5))  # a teacher other than the student
    host = jax.device_get(run)
    rng = np.random.default_rng(5)
    images = rng.integers(0, 256, (B, HW, HW, 3), dtype=np.uint8)
    labels = rng.integers(3, N_SEEN, B).astype(np.int32)
    key = jax.random.key(6)
    step = make_train_step(model, method, aug, mesh)
    run, metrics = step(run, images, labels, TaskInfo.make(3, N_SEEN), key)

    t_gen = tr.load_generator(tr.Generator(HW, 3, 32, 16, mcfg.generator.bn_eps_quirk),
                              host.extras["generator"])
    student = tr.load_resnet(_tiny_resnet(), {"params": host.train.params,
                                              "batch_stats": host.train.batch_stats})
    t_teacher = tr.load_resnet(_tiny_resnet(), host.teacher)
    ref = tr.StudentStep(student, t_teacher, t_gen, torch.from_numpy(images), torch.from_numpy(labels),
                         3, N_SEEN, tr.Augmentation.like(aug), cfg.train, mcfg.kd_weight)
    _, k_loss = jax.random.split(key)  # as make_train_step; the source samples at fold_in(., 7)
    z = np.array(jax.random.normal(jax.random.fold_in(k_loss, 7), (B * 32,))).reshape(B, 32)
    got = ref.step(torch.from_numpy(z))
    for k in ("local_ce", "ft_ce", "kd", "loss"):
        _close(got[k], metrics[k], what=f"student {k}")


def test_recipes_the_reference_does_not_cover_are_refused():
    from dfcl_jax.inversion import DeepInversionConfig

    cfg = dataclasses.replace(DeepInversionConfig(), flip=True)
    with pytest.raises(NotImplementedError):
        tr.DeepInversionStep(_tiny_resnet(), torch.zeros(1, 3, HW, HW), torch.zeros(1).long(), 1, cfg)
    assert tr.set_threads(1) == 1


def test_vs_torch_without_torch_names_the_bench_extra(monkeypatch):
    import sys

    from benchmarks import run

    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
    with pytest.raises(SystemExit, match=r"`bench` extra"):
        run.main(["--vs-torch", "--only", "train"])
