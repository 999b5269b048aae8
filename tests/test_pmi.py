"""PMI inversion: the per-layer phase, the full-model refinement, compile-once, and its pieces."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dfcl_jax.inversion import losses
from dfcl_jax.inversion.pmi import (
    PMIConfig,
    PMIInverter,
    boosted,
    full_model_inversion,
    full_model_schedule,
    input_prior_moments,
)
from dfcl_jax.models.blocks import apply_with_bn_moments

CFG = PMIConfig(block_steps=12, full_steps=12, full_warmup=2, full_milestones=(8, 10), micro_batch=48,
                chunk=6)


@pytest.fixture(scope="module")
def targets(trained_teacher):
    """Penultimate features of the teacher's own training-like inputs: reachable targets."""
    model, variables = trained_teacher
    from dfcl_jax.data.stand_in import class_images

    images = class_images(np.repeat(np.arange(5), 10), (28, 28, 1), 10)
    x = (np.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0))).astype(np.float32) / 255 - 0.286) / 0.353
    return np.asarray(model.apply(variables, jnp.asarray(x), method=model.features))


def test_per_layer_phase_lowers_every_block_loss_and_beats_full_model_inversion(trained_teacher, targets):
    model, variables = trained_teacher
    inv = PMIInverter(model, CFG)
    res = inv.invert(variables, targets, (32, 32, 1), jax.random.key(0), progress=False)
    assert len(res.block_curves) == len(model.blocks)
    for i, (curve, record) in enumerate(zip(res.block_curves, res.block_terms)):
        kept = CFG.a_mse * record["kept"]["mse"] + inv.a_rf * (record["kept"]["bn"]
                                                                 + record["kept"]["input"])
        assert kept < curve[0], f"block {i}: kept loss {kept} not below the initial {curve[0]}"
    # The same number of full-model steps from noise reaches a worse feature match.
    _, _, plain = full_model_inversion(inv, variables, targets, (32, 32, 1), jax.random.key(1),
                                       CFG.full_steps, progress=False)
    assert res.feature_mse < float(plain["mse"])
    # The returned images really have that feature error.
    f = model.apply(variables, res.images, method=model.features)
    np.testing.assert_allclose(float(losses.feature_matching(f, targets)), res.feature_mse, rtol=1e-4)
    # The public refinement leaves its start usable (the solve donates only a copy of it).
    x_a, _, _ = inv.full_model_refinement(variables, res.images, targets, progress=False)
    x_b, _, _ = inv.full_model_refinement(variables, res.images, targets, progress=False)
    np.testing.assert_array_equal(np.asarray(x_a), np.asarray(x_b))


def test_refinement_stopped_early_is_the_start_of_the_longer_run(trained_teacher, targets):
    """`steps=k` runs the first k steps of the same schedule (the equal-time benchmark row)."""
    model, variables = trained_teacher
    inv = PMIInverter(model, CFG)
    x0 = jax.random.normal(jax.random.key(3), (targets.shape[0], 32, 32, 1))
    x_short, curve_short, _ = inv.full_model_refinement(variables, x0, targets, False, steps=7)
    _, curve_long, _ = inv.full_model_refinement(variables, x0, targets, False)
    assert len(curve_short) == 7 and len(curve_long) == CFG.full_steps
    np.testing.assert_allclose(curve_short, curve_long[:7], rtol=1e-5)
    fresh = PMIInverter(model, dataclasses.replace(CFG, full_steps=7))
    x_fresh, _, _ = fresh.full_model_refinement(variables, x0, targets, False)
    np.testing.assert_allclose(np.asarray(x_short), np.asarray(x_fresh), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="steps=0"):
        inv.full_model_refinement(variables, x0, targets, False, steps=0)


def test_each_block_solve_compiles_once_and_is_reused(trained_teacher, targets):
    model, variables = trained_teacher
    inv = PMIInverter(model, dataclasses.replace(CFG, micro_batch=24))
    inv.invert(variables, targets, (32, 32, 1), jax.random.key(0), progress=False)  # 2 micro-batches
    other = {"params": jax.tree.map(lambda a: a * 1.01, variables["params"]),
             "batch_stats": variables["batch_stats"]}  # "the next task's model": new values only
    inv.invert(other, targets[::-1], (32, 32, 1), jax.random.key(1), progress=False)
    assert inv.traces == {f"block_{i}": 1 for i in range(len(model.blocks))} | {"full": 1}
    for _, loop in [*inv._block_loops.values(), inv._full_loop]:
        assert all(n == 1 for n in loop.compile_counts().values())


def test_boost_doubles_a_term_above_its_initial_value_up_to_the_cap():
    w = jnp.asarray(1.0)
    for _ in range(6):
        w = boosted(w, 1.0, jnp.asarray(2.0), jnp.asarray(1.0), 10.0, True)
    assert float(w) == 10.0
    assert float(boosted(jnp.asarray(1.0), 1.0, 0.5, 1.0, 10.0, True)) == 1.0
    assert float(boosted(jnp.asarray(1.0), 1.0, 2.0, 1.0, 10.0, False)) == 1.0


def test_full_model_schedule_warms_up_then_halves_at_the_milestones():
    s = full_model_schedule(PMIConfig())
    assert float(s(0)) == pytest.approx(0.08)
    assert float(s(4)) == pytest.approx(0.4)
    assert float(s(79)) == pytest.approx(0.4)
    assert float(s(80)) == pytest.approx(0.2)
    assert float(s(120)) == pytest.approx(0.1)


def test_input_prior_is_zero_when_the_input_matches_the_previous_bn_affine():
    rng = np.random.default_rng(0)
    gamma, beta = jnp.asarray([0.5, 2.0]), jnp.asarray([1.0, -3.0])
    x = jnp.asarray(rng.standard_normal((4096, 2)), jnp.float32)
    x = (x - x.mean(0)) / x.std(0) * gamma + beta
    kl = losses.bn_kl_pmi([input_prior_moments(x, {"scale": gamma, "bias": beta})])
    assert float(kl) < 1e-5
    off = losses.bn_kl_pmi([input_prior_moments(x + 1.0, {"scale": gamma, "bias": beta})])
    assert float(off) > 0.1


def test_block_moments_are_those_of_the_block_alone(trained_teacher):
    """The per-block BN-KL only sees the BatchNorms inside that block."""
    model, variables = trained_teacher
    from dfcl_jax.models.blocks import BlockClassifier

    x = jax.random.normal(jax.random.key(0), (8, 32, 32, 1))
    _, all_moments = apply_with_bn_moments(model, variables, x)
    h = model.apply(variables, x, 0, 1, False, method=BlockClassifier.run_blocks)
    _, second = apply_with_bn_moments(model, variables, h, 1, 2, False, method=BlockClassifier.run_blocks)
    assert len(second) == 2
    np.testing.assert_allclose(second[0].mean, all_moments[1].mean, atol=1e-5)


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="pmi.block_lr"):
        PMIConfig(block_lr=0).validate()
    with pytest.raises(ValueError, match="pmi.full_steps"):
        PMIConfig(full_steps=0).validate()
    with pytest.raises(ValueError, match="pmi.boost_cap_mse"):
        PMIConfig(boost_cap_mse=0.5).validate()


def test_inputs_after_a_relu_stay_non_negative_with_the_flag(trained_teacher):
    model, variables = trained_teacher
    from dfcl_jax.inversion.pmi import ends_in_relu

    assert ends_in_relu(model.blocks[0]) and ends_in_relu(model.blocks[1])
    inv = PMIInverter(model, dataclasses.replace(CFG, nonneg_after_relu=True))
    shape = inv.input_shapes(variables, (32, 32, 1), 8)[1]
    x0 = jax.random.normal(jax.random.key(0), shape)
    target = jax.random.normal(jax.random.key(1), inv.input_shapes(variables, (32, 32, 1), 8)[2])
    x, _, _ = inv._solve(inv.block_loop(1), variables, x0, target, 6, 3, "", False)
    assert float(x.min()) >= 0.0 and float(x.max()) > 0.0
