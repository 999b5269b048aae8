"""The R-DFCIL-style learner: its loss pieces, gradual unfreezing and its phases."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dfcl_jax.data.augment import Augmentation
from dfcl_jax.methods import TaskInfo, get_method, method_config
from dfcl_jax.methods.rdfcil import angle_rkd, class_balanced_ce, l1_logit_kd, rdfcil_factors
from dfcl_jax.models.resnet import cifar_resnet
from dfcl_jax.train import mesh as mesh_lib
from dfcl_jax.train.state import init_run_state, learning_rates, parameter_groups, set_learning_rate
from dfcl_jax.train.steps import make_train_step
from experiments.base import get_config


def test_rdfcil_factors():
    alpha, beta = rdfcil_factors(10, 10)
    assert float(alpha) == pytest.approx(math.log2(6.0)) and float(beta) == pytest.approx(1.0)
    alpha, beta = rdfcil_factors(90, 10)
    assert float(beta) == pytest.approx(3.0)


def test_angle_rkd_compares_shapes_not_scale_or_position():
    rng = np.random.default_rng(0)
    t = jnp.asarray(rng.standard_normal((16, 8)), jnp.float32)
    assert float(angle_rkd(t, t)) == pytest.approx(0.0, abs=1e-10)
    assert float(angle_rkd(3.0 * t + 1.0, t)) == pytest.approx(0.0, abs=1e-6)  # angles unchanged
    assert float(angle_rkd(jnp.asarray(rng.standard_normal((16, 8)), jnp.float32), t)) > 1e-3
    g = jax.grad(lambda s: angle_rkd(s, t))(t + 0.1)
    assert bool(jnp.all(jnp.isfinite(g)))  # i = j pairs (zero differences) have finite gradients


def test_l1_logit_kd_only_sees_old_classes():
    s = jnp.asarray([[1.0, 2.0, 9.0]])
    t = jnp.asarray([[0.0, 4.0, -9.0]])
    assert float(l1_logit_kd(s, t, 2)) == pytest.approx((1.0 + 2.0) / 2)


def test_class_balanced_ce_weights_classes_equally():
    logits = jnp.asarray(np.random.default_rng(0).standard_normal((8, 4)), jnp.float32)
    labels = jnp.asarray([0, 0, 0, 0, 0, 0, 1, 1])
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    expected = 0.5 * ce[:6].mean() + 0.5 * ce[6:].mean()
    assert float(class_balanced_ce(logits, labels, 4)) == pytest.approx(float(expected), rel=1e-5)


def test_parameter_groups_of_a_cifar_resnet():
    model = cifar_resnet(10, 14, (8, 16, 32))
    params = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 1)))["params"]
    groups = {k: jax.tree.leaves(v)[0] for k, v in parameter_groups(params).items()}
    assert groups["head"] == "head"
    assert [k for k, g in groups.items() if g == "last_stage"] == ["blocks_5", "blocks_6"]
    assert groups["blocks_0"] == groups["blocks_4"] == "backbone"


def test_frozen_groups_do_not_move_during_a_head_only_phase():
    cfg = get_config()
    model = cifar_resnet(10, 8, (4, 8, 16))
    method = get_method(method_config("finetune"))
    mesh = mesh_lib.make_mesh(1)
    run = init_run_state(model, cfg.train, jax.random.key(0), np.zeros((1, 32, 32, 1), np.float32))
    run = run.replace(train=set_learning_rate(run.train, 0.1, ("head",)))
    assert learning_rates(run.train) == {"head": pytest.approx(0.1), "last_stage": 0.0, "backbone": 0.0}
    before = jax.device_get(run.train.params)
    step = make_train_step(model, method, Augmentation((0.5,), (0.5,), 0, False, 0, 0), mesh)
    images = np.random.default_rng(0).integers(0, 256, (16, 32, 32, 1), dtype=np.uint8)
    labels = np.arange(16, dtype=np.int32) % 4
    run = mesh_lib.put_replicated(mesh, run)
    for i in range(2):
        x, y = mesh_lib.put_batch(mesh, images, labels)
        run, _ = step(run, x, y, TaskInfo.make(0, 4), jax.random.key(i))
    after = jax.device_get(run.train.params)
    moved = jax.tree.map(lambda a, b: bool(np.any(a != b)), before, after)
    assert all(jax.tree.leaves(moved["head"]))
    assert not any(jax.tree.leaves({k: v for k, v in moved.items() if k != "head"}))


def test_rdfcil_phases_unfreeze_gradually_then_fine_tune_the_head():
    cfg = get_config()
    method = get_method(method_config("rdfcil"))
    assert [p.loss for p in method.phases(cfg.train, 0)] == ["first"]
    phases = method.phases(cfg.train, 3)
    assert [(p.name, p.epochs, p.lr, p.trainable, p.loss) for p in phases] == [
        ("head", 20, 0.1, ("head",), "main"),
        ("last_stage", 20, 0.05, ("head", "last_stage"), "main"),
        ("all", 120, 0.01, None, "main"),
        ("head_ft", 40, 0.005, ("head",), "head_ft")]
    assert phases[2].milestones == (60, 90)  # x0.1 at 50% and 75%
    assert phases[2].lr_at(59) == pytest.approx(0.01) and phases[2].lr_at(90) == pytest.approx(1e-4)
