"""PMI class-wise feature modelling and contrastive feature selection (methods.md section 4)."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dfcl_jax.inversion import feature_model as F

DIM = 8
COUNTS = (300, 200, 120)  # unequal on purpose: train_encoders pads and masks
OFFSET = 10.0  # class c's features sit around OFFSET * c: far apart, so nearest mean = class
CFG = F.FeatureModelConfig(encoder_epochs=20)


def _features(seed=0):
    """Non-Gaussian "pooled feature" stand-ins: relu of a random linear map, shifted per class."""
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for c, n in enumerate(COUNTS):
        xs.append(np.maximum(rng.normal(size=(n, DIM)) @ rng.normal(size=(DIM, DIM)), 0) + OFFSET * c)
        ys.append(np.full(n, c))
    perm = rng.permutation(sum(COUNTS))
    return np.concatenate(xs).astype(np.float32)[perm], np.concatenate(ys)[perm]


@pytest.fixture(scope="module")
def trained():
    """(features, labels, mean, std, encoders, best_loss) for the three classes."""
    x, y = _features()
    mean, std = F.class_statistics(x, y, [0, 1, 2])
    encoders, best = F.train_encoders(jax.random.key(0), x, y, [0, 1, 2], DIM, CFG)
    return x, y, mean, std, encoders, best


def _row(variables, c):
    return jax.tree.map(lambda a: a[c], variables)


def _mean_pairwise_cosine(z):
    s = z @ z.T
    n = z.shape[0]
    return float((s.sum() - jnp.trace(s)) / (n * (n - 1)))


def test_config_validate_names_the_field():
    F.FeatureModelConfig().validate()
    with pytest.raises(ValueError, match="feature_model.encoder_lr"):
        F.FeatureModelConfig(encoder_lr=0.0).validate()
    with pytest.raises(ValueError, match="feature_model.select_fraction"):
        F.FeatureModelConfig(select_fraction=-1).validate()


def test_contrastive_loss_formula_and_padding_mask():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(6, 4)).astype(np.float32)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    expected = np.mean(np.log(np.mean(np.exp(z @ z.T / 0.5), axis=1)))
    np.testing.assert_allclose(F.contrastive_loss(jnp.asarray(z), tau=0.5), expected, rtol=1e-5)
    padded = np.concatenate([z, rng.normal(size=(3, 4)).astype(np.float32)])
    valid = jnp.arange(9) < 6
    np.testing.assert_allclose(F.contrastive_loss(jnp.asarray(padded), 0.5, valid), expected, rtol=1e-5)


def test_encoder_mask_keeps_padding_out_of_batchnorm():
    model = F.ContrastiveEncoder(4)
    variables = model.init(jax.random.key(0), jnp.zeros((2, 4)), train=False)
    x = jax.random.normal(jax.random.key(1), (5, 4))
    padded = jnp.concatenate([x, 100.0 * jnp.ones((3, 4))])
    z, stats = model.apply(variables, x, train=True, mutable=["batch_stats"])
    zp, stats_p = model.apply(variables, padded, train=True, mask=jnp.arange(8) < 5, mutable=["batch_stats"])
    np.testing.assert_allclose(zp[:5], z, rtol=1e-4, atol=1e-5)
    chex.assert_trees_all_close(stats_p, stats, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(jnp.linalg.norm(z, axis=1), 1.0, rtol=1e-5)


def test_class_statistics_equal_numpy():
    x, y = _features(seed=3)
    mean, std = F.class_statistics(x, y, [2, 0])  # rows follow `classes`, not sorted order
    for row, c in enumerate([2, 0]):
        np.testing.assert_allclose(mean[row], x[y == c].mean(0), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(std[row], x[y == c].std(0, ddof=1), rtol=1e-4, atol=1e-5)
    mean_j, std_j = jax.jit(F.class_statistics)(jnp.asarray(x), jnp.asarray(y), jnp.array([2, 0]))
    np.testing.assert_allclose(mean_j, mean, rtol=1e-6)
    np.testing.assert_allclose(std_j, std, rtol=1e-6)


def test_train_encoders_lowers_loss_for_every_class_with_unequal_counts(trained):
    x, y, _, _, encoders, best = trained
    init = F.init_encoders(jax.random.key(1), 3, DIM)
    chex.assert_trees_all_equal_shapes(encoders, init)  # same stacked structure as the table rows
    chex.assert_shape(best, (3,))
    model = F.ContrastiveEncoder(DIM)
    for c in range(3):
        xc = jnp.asarray(x[y == c])
        z0, _ = model.apply(_row(init, c), xc, train=True, mutable=["batch_stats"])
        init_loss = float(F.contrastive_loss(z0, CFG.tau))
        assert np.isfinite(best[c]) and best[c] < 0.6 * init_loss, (c, best[c], init_loss)
    # Running statistics were trained too: the eval-mode loss of the well-fed class drops as well.
    x0 = jnp.asarray(x[y == 0])
    eval_loss = lambda v: float(F.contrastive_loss(model.apply(_row(v, 0), x0, train=False)))
    assert eval_loss(encoders) < 0.5 * eval_loss(init)


def test_scatter_encoders_writes_only_the_given_rows(trained):
    encoders = trained[4]
    table = F.init_encoders(jax.random.key(2), 5, DIM)
    out = F.scatter_encoders(table, [3, 1], jax.tree.map(lambda a: a[:2], encoders))
    chex.assert_trees_all_equal(_row(out, 3), _row(encoders, 0))
    chex.assert_trees_all_equal(_row(out, 1), _row(encoders, 1))
    for c in (0, 2, 4):
        chex.assert_trees_all_equal(_row(out, c), _row(table, c))


def test_cfs_keeps_moments_and_spreads_more_than_plain_gaussian(trained):
    _, _, mean, std, encoders, _ = trained
    select = jax.jit(F.cfs_select, static_argnames=("n", "cfg"))
    raw = jax.jit(F._cfs_raw, static_argnames=("n", "cfg"))  # the selection before re-matching
    enc = _row(encoders, 0)
    embed = lambda v: F.ContrastiveEncoder(DIM).apply(enc, v, train=False)
    n, sims = 400, {"cfs": [], "raw": [], "plain": []}
    for seed in range(5):
        sel = select(jax.random.key(seed), mean[0], std[0], enc, n=n, cfg=CFG)
        chex.assert_shape(sel, (n, DIM))
        assert float(jnp.mean(jnp.abs(sel.mean(0) - mean[0]) / std[0])) < 0.1
        np.testing.assert_allclose(sel.std(0, ddof=1) / std[0], 1.0, atol=0.1)
        plain = mean[0] + std[0] * jax.random.normal(jax.random.key(100 + seed), (n, DIM))
        sims["cfs"].append(_mean_pairwise_cosine(embed(sel)))
        sims["raw"].append(_mean_pairwise_cosine(embed(raw(jax.random.key(seed), mean[0], std[0], enc,
                                                               n=n, cfg=CFG))))
        sims["plain"].append(_mean_pairwise_cosine(embed(plain)))
    # The quantity CFS optimises: selected targets are less similar to each other than plain draws of
    # the same size; strongly so before the re-matching, which rescales and shifts them (noisier).
    means = {k: np.mean(v) for k, v in sims.items()}
    assert means["raw"] < 0.5 * means["plain"], sims
    assert means["cfs"] < 0.8 * means["plain"], sims
    # n not a multiple of b (b = 2 here), and n < b: truncated to exactly n.
    chex.assert_shape(select(jax.random.key(0), mean[0], std[0], enc, n=7, cfg=CFG), (7, DIM))
    chex.assert_shape(select(jax.random.key(0), mean[0], std[0], enc, n=1, cfg=CFG), (1, DIM))


def test_sample_targets_places_each_class_at_its_labels_and_jits(trained):
    _, _, mean, std, encoders, _ = trained
    labels = np.random.default_rng(4).permutation(np.repeat([0, 1, 2], [50, 80, 30]))
    fn = jax.jit(F.sample_targets, static_argnames=("cfg", "use_cfs", "classes", "max_count"))
    out = fn(jax.random.key(5), jnp.asarray(labels), mean, std, encoders, CFG, classes=(0, 1, 2),
             max_count=80)
    chex.assert_shape(out, (len(labels), DIM))
    nearest = np.argmin(np.linalg.norm(np.asarray(out)[:, None] - np.asarray(mean)[None], axis=-1), axis=1)
    np.testing.assert_array_equal(nearest, labels)
    for c in range(3):  # moments re-matched on exactly the count_c targets of class c
        np.testing.assert_allclose(out[labels == c].std(0, ddof=1), std[c], rtol=1e-3)
    # Eager with concrete labels infers the same classes / max_count: the same targets.
    eager = F.sample_targets(jax.random.key(5), labels, mean, std, encoders, CFG)
    np.testing.assert_allclose(eager, out, rtol=1e-5, atol=1e-5)
    plain = fn(jax.random.key(5), jnp.asarray(labels), mean, std, encoders, CFG, use_cfs=False)
    nearest = np.argmin(np.linalg.norm(np.asarray(plain)[:, None] - np.asarray(mean)[None], axis=-1), axis=1)
    np.testing.assert_array_equal(nearest, labels)
    with pytest.raises(ValueError, match="max_count"):
        fn(jax.random.key(5), jnp.asarray(labels), mean, std, encoders, CFG)
