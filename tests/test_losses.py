"""Inversion losses (methods.md section 2) against direct numpy computations, plus behaviour."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dfcl_jax.inversion import losses as L
from dfcl_jax.models.blocks import BNMoments, apply_with_bn_moments
from dfcl_jax.models.resnet import cifar_resnet

# ------------------------------------------------------------------------------------------------
# numpy references, written from the formulas in methods.md 2.1 (independent of the jax code)


def _random_moments(seed, channels=(3, 5, 7)):
    rng = np.random.default_rng(seed)
    return [BNMoments(mean=rng.normal(size=c).astype(np.float32),
                      var=rng.uniform(0.2, 3.0, size=c).astype(np.float32),
                      running_mean=rng.normal(size=c).astype(np.float32),
                      running_var=rng.uniform(0.2, 3.0, size=c).astype(np.float32))
            for c in channels]


def _np_kl_abd(moments):
    per_layer = []
    for mo in moments:
        mu, s2 = np.float64(mo.mean), np.float64(mo.var) + 1e-8
        m, v = np.float64(mo.running_mean), np.float64(mo.running_var) + 1e-8
        kl = np.log(np.sqrt(s2) / np.sqrt(v)) - 0.5 * (1 - (v + (m - mu) ** 2) / s2)
        per_layer.append(kl.mean())
    return np.mean(per_layer)


def _np_kl_pmi(moments):
    total = 0.0
    for mo in moments:
        mu, s2 = np.float64(mo.mean), np.float64(mo.var) + 1e-8
        m, v = np.float64(mo.running_mean), np.float64(mo.running_var) + 1e-8
        total += (0.5 * (np.log(v) - np.log(s2) - 1 + (s2 + (mu - m) ** 2) / v)).mean()
    return total


def _np_l2_di(moments, first=1.0):
    terms = [np.linalg.norm(np.float64(mo.running_var) - mo.var)
             + np.linalg.norm(np.float64(mo.running_mean) - mo.mean) for mo in moments]
    return first * terms[0] + sum(terms[1:])


def _np_kl_gauss(m1, v1, m2, v2):
    """KL(N(m1, v1) || N(m2, v2)) from the textbook formula, per element."""
    return 0.5 * np.log(v2 / v1) + (v1 + (m1 - m2) ** 2) / (2 * v2) - 0.5


# ------------------------------------------------------------------------------------------------
# 2.1 BN-statistics matching


def test_bn_matchings_equal_direct_numpy_on_random_moments():
    ms = _random_moments(0)
    np.testing.assert_allclose(L.bn_kl_abd(ms), _np_kl_abd(ms), rtol=1e-5)
    np.testing.assert_allclose(L.bn_kl_pmi(ms), _np_kl_pmi(ms), rtol=1e-5)
    np.testing.assert_allclose(L.bn_l2_di(ms), _np_l2_di(ms), rtol=1e-5)
    np.testing.assert_allclose(L.bn_l2_di(ms, first_layer_scale=10.0), _np_l2_di(ms, 10.0), rtol=1e-5)
    # Directions of the two KLs: ABD is KL(running || batch), PMI is KL(batch || running).
    mo = ms[0]
    abd = np.mean([_np_kl_gauss(m.running_mean, m.running_var, m.mean, m.var).mean() for m in ms])
    pmi = np.sum([_np_kl_gauss(m.mean, m.var, m.running_mean, m.running_var).mean() for m in ms])
    np.testing.assert_allclose(L.bn_kl_abd(ms), abd, rtol=1e-4)
    np.testing.assert_allclose(L.bn_kl_pmi(ms), pmi, rtol=1e-4)
    assert not np.isclose(float(L.bn_kl_abd([mo])), float(L.bn_kl_pmi([mo])), rtol=1e-3)


def test_kl_abd_averages_layers_and_kl_pmi_sums_them():
    ms = _random_moments(1, channels=(4, 6))
    one_abd, one_pmi = float(L.bn_kl_abd(ms[:1])), float(L.bn_kl_pmi(ms[:1]))
    np.testing.assert_allclose(L.bn_kl_abd(ms[:1] * 3), one_abd, rtol=1e-6)
    np.testing.assert_allclose(L.bn_kl_pmi(ms[:1] * 3), 3 * one_pmi, rtol=1e-6)
    two_abd = (one_abd + float(L.bn_kl_abd(ms[1:]))) / 2
    two_pmi = one_pmi + float(L.bn_kl_pmi(ms[1:]))
    np.testing.assert_allclose(L.bn_kl_abd(ms), two_abd, rtol=1e-6)
    np.testing.assert_allclose(L.bn_kl_pmi(ms), two_pmi, rtol=1e-6)


@pytest.mark.parametrize("name", ["kl_abd", "kl_pmi", "l2_di"])
def test_bn_matching_is_zero_at_the_running_moments_and_positive_elsewhere(name):
    ms = _random_moments(2)
    same = [BNMoments(m.running_mean, m.running_var, m.running_mean, m.running_var) for m in ms]
    assert abs(float(L.bn_matching(name, same))) < 1e-6
    assert float(L.bn_matching(name, ms)) > 1e-2
    # One channel of one layer off is enough to make it positive.
    off = list(same)
    shifted = off[1].mean.copy()
    shifted[0] += 0.5
    off[1] = off[1]._replace(mean=shifted)
    assert float(L.bn_matching(name, off)) > 1e-3
    # Gradients are finite at the optimum too (the L2 norms are not differentiable at 0).
    g = jax.grad(lambda mean: L.bn_matching(name, [same[0]._replace(mean=mean)] + same[1:]))(
        jnp.asarray(same[0].mean))
    assert np.all(np.isfinite(g))


def test_bn_matching_dispatches_and_rejects_unknown_names():
    ms = _random_moments(3)
    np.testing.assert_allclose(L.bn_matching("kl_abd", ms), _np_kl_abd(ms), rtol=1e-5)
    np.testing.assert_allclose(L.bn_matching("kl_pmi", ms), _np_kl_pmi(ms), rtol=1e-5)
    np.testing.assert_allclose(L.bn_matching("l2_di", ms, first_layer_scale=10.0),
                               _np_l2_di(ms, 10.0), rtol=1e-5)
    with pytest.raises(ValueError, match="kl_abd.*kl_pmi.*l2_di"):
        L.bn_matching("kl", ms)


# ------------------------------------------------------------------------------------------------
# 2.2 Priors


def test_gaussian_kernel_matches_the_reference_taps():
    np.testing.assert_allclose(L.gaussian_kernel_1d(), [0.1117, 0.2365, 0.3036, 0.2365, 0.1117],
                               atol=1e-4)
    np.testing.assert_allclose(float(jnp.sum(L.gaussian_kernel_1d(7, 2.0))), 1.0, rtol=1e-6)


def _np_smoothness(x):
    x = np.float64(x)
    d = np.arange(5) - 2.0
    k1 = np.exp(-((d / 2.0) ** 2))
    k2 = np.outer(k1, k1)
    k2 /= k2.sum()
    n, h, w, c = x.shape
    xp = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)), mode="reflect")
    blur = np.zeros_like(x)
    for i in range(5):
        for j in range(5):
            blur += k2[i, j] * xp[:, i:i + h, j:j + w, :]
    return np.mean((x - blur) ** 2)


def test_smoothness_prior():
    rng = np.random.default_rng(0)
    noise = rng.normal(size=(2, 12, 10, 3)).astype(np.float32)
    np.testing.assert_allclose(L.smoothness_prior(noise), _np_smoothness(noise), rtol=1e-5)
    assert float(L.smoothness_prior(jnp.full((2, 12, 10, 3), 3.7))) < 1e-10
    ramp = np.broadcast_to(np.linspace(-1, 1, 10, dtype=np.float32)[None, None, :, None],
                           (2, 12, 10, 3))
    ramp_s, noise_s = float(L.smoothness_prior(ramp)), float(L.smoothness_prior(noise))
    # A linear ramp is a fixed point of the blur away from the borders (reflect padding bends it there).
    assert noise_s > 20 * max(ramp_s, 1e-12)
    assert noise_s > 0.1


def test_total_variation_equals_numpy():
    x = np.random.default_rng(1).normal(size=(3, 7, 9, 2)).astype(np.float32)
    d1 = x[:, :, :-1] - x[:, :, 1:]
    d2 = x[:, :-1, :] - x[:, 1:, :]
    d3 = x[:, 1:, :-1] - x[:, :-1, 1:]
    d4 = x[:, :-1, :-1] - x[:, 1:, 1:]
    want = sum(np.sqrt(np.sum(np.float64(d) ** 2)) for d in (d1, d2, d3, d4))
    np.testing.assert_allclose(L.total_variation(x), want, rtol=1e-5)
    assert float(L.total_variation(jnp.ones((2, 5, 5, 3)))) == 0.0
    g = jax.grad(L.total_variation)(jnp.ones((2, 5, 5, 3)))
    assert np.all(np.isfinite(g))


def test_pixel_l2_is_the_batch_mean_of_image_norms():
    x = np.random.default_rng(2).normal(size=(4, 5, 6, 3)).astype(np.float32)
    want = np.mean([np.linalg.norm(np.float64(img).ravel()) for img in x])
    np.testing.assert_allclose(L.pixel_l2(x), want, rtol=1e-5)


# ------------------------------------------------------------------------------------------------
# 2.3 Output-side losses


def _np_log_softmax(z):
    z = np.float64(z)
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _with_unseen(logits_seen, n_extra=3, value=50.0):
    """Append columns for unseen classes with large logits that must be ignored."""
    b = logits_seen.shape[0]
    extra = np.full((b, n_extra), value, np.float32) + np.arange(n_extra, dtype=np.float32)
    return np.concatenate([logits_seen, extra], axis=1)


def test_content_loss_equals_numpy_and_ignores_unseen_classes():
    seen = np.random.default_rng(3).normal(size=(6, 5)).astype(np.float32) * 40
    t = 1000.0
    logp = _np_log_softmax(seen / t)
    want = -np.mean(logp[np.arange(6), seen.argmax(1)])
    np.testing.assert_allclose(L.content_loss(seen, 5, t), want, rtol=1e-5)
    np.testing.assert_allclose(L.content_loss(_with_unseen(seen), 5, t), want, rtol=1e-5)
    # Without masking the large unseen logits would dominate: the value would differ.
    assert not np.isclose(float(L.content_loss(_with_unseen(seen), 8, t)), want, rtol=1e-3)


def test_class_conditional_ce_equals_numpy_and_ignores_unseen_classes():
    seen = np.random.default_rng(4).normal(size=(6, 5)).astype(np.float32) * 3
    labels = np.array([0, 1, 2, 3, 4, 0])
    want = -np.mean(_np_log_softmax(seen)[np.arange(6), labels])
    np.testing.assert_allclose(L.class_conditional_ce(seen, labels, 5), want, rtol=1e-5)
    np.testing.assert_allclose(L.class_conditional_ce(_with_unseen(seen), labels, 5), want, rtol=1e-5)


def test_diversity_loss():
    n = 5
    seen = np.random.default_rng(5).normal(size=(7, n)).astype(np.float32)
    pbar = np.exp(_np_log_softmax(seen)).mean(0)
    want = 1 + np.sum(pbar * np.log(pbar)) / np.log(n)
    np.testing.assert_allclose(L.diversity_loss(seen, n), want, rtol=1e-5)
    np.testing.assert_allclose(L.diversity_loss(_with_unseen(seen), n), want, rtol=1e-5)
    # Every sample predicts a different class, uniformly over the n seen classes: pbar uniform -> 0.
    one_hot = np.eye(n, dtype=np.float32) * 100.0
    assert abs(float(L.diversity_loss(_with_unseen(one_hot), n))) < 1e-5
    # Every sample predicts the same class -> 1.
    same = np.zeros((6, n), np.float32)
    same[:, 2] = 100.0
    np.testing.assert_allclose(L.diversity_loss(_with_unseen(same), n), 1.0, atol=1e-5)


def test_feature_matching_is_mse():
    rng = np.random.default_rng(6)
    f, t = rng.normal(size=(4, 8)).astype(np.float32), rng.normal(size=(4, 8)).astype(np.float32)
    np.testing.assert_allclose(L.feature_matching(f, t), np.mean((np.float64(f) - t) ** 2), rtol=1e-5)
    assert float(L.feature_matching(f, f)) == 0.0


def test_output_losses_jit_with_traced_n_seen_and_compile_once():
    traces = []

    @jax.jit
    def all_losses(logits, labels, n_seen):
        traces.append(1)
        return (L.content_loss(logits, n_seen), L.diversity_loss(logits, n_seen),
                L.class_conditional_ce(logits, labels, n_seen))

    rng = np.random.default_rng(7)
    logits = rng.normal(size=(6, 10)).astype(np.float32) * 5
    labels = np.array([0, 1, 2, 0, 1, 2])
    for n in (3, 7):
        got = all_losses(logits, labels, jnp.int32(n))
        sliced = logits[:, :n]
        want = (L.content_loss(sliced, n), L.diversity_loss(sliced, n),
                L.class_conditional_ce(sliced, labels, n))
        np.testing.assert_allclose(got, want, rtol=1e-5)
        grads = jax.grad(lambda z, n=n: sum(all_losses(z, labels, jnp.int32(n))))(logits)
        assert np.all(np.isfinite(grads))
        np.testing.assert_array_equal(grads[:, n:], 0.0)
    assert len(traces) <= 2  # one trace for values, one under grad; none per n_seen


# ------------------------------------------------------------------------------------------------
# Through a real model


@pytest.fixture(scope="module")
def tiny():
    model = cifar_resnet(10, depth=8, widths=(4, 8, 16))
    x = jax.random.normal(jax.random.key(0), (8, 16, 16, 3))
    variables = jax.jit(model.init)(jax.random.key(1), x)
    # One train-mode forward on a shifted batch makes the running statistics non-trivial.
    train_fwd = jax.jit(lambda v, x: model.apply(v, x, True, mutable=["batch_stats"]))
    _, state = train_fwd(variables, x * 2 + 1)
    return model, {"params": variables["params"], "batch_stats": state["batch_stats"]}, x


def _pmi_loss(model, variables):
    def loss(img):
        _, moments = apply_with_bn_moments(model, variables, img)
        return L.bn_kl_pmi(moments)
    return jax.jit(loss)


def test_bn_kl_pmi_gradients_flow_to_the_input_image(tiny):
    model, v, x = tiny
    value, g = jax.jit(jax.value_and_grad(_pmi_loss(model, v)))(x)
    assert float(value) > 0
    assert g.shape == x.shape and np.all(np.isfinite(g)) and float(jnp.abs(g).sum()) > 0


def test_adam_on_the_input_lowers_bn_kl_pmi(tiny):
    model, v, _ = tiny
    loss = _pmi_loss(model, v)
    opt = optax.adam(0.05)
    img0 = jax.random.normal(jax.random.key(2), (8, 16, 16, 3))

    @jax.jit
    def run(img):
        def step(carry, _):
            img, st = carry
            value, g = jax.value_and_grad(loss)(img)
            updates, st = opt.update(g, st)
            return (optax.apply_updates(img, updates), st), value
        (img, _), values = jax.lax.scan(step, (img, opt.init(img)), None, length=30)
        return img, values

    img, values = run(img0)
    start, end = float(loss(img0)), float(loss(img))
    assert np.all(np.isfinite(values))
    assert end < 0.5 * start, (start, end)
