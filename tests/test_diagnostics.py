"""MID and MMD on samples with known relations; the plots are real PNGs."""

import numpy as np
import pytest

from dfcl_jax.metrics.diagnostics import mean_image_distance, mmd_unbiased, plot_embeddings, plot_image_grid


def test_mid_is_the_std_normalised_mean_shift():
    rng = np.random.default_rng(0)
    a = rng.normal(0, 2, (5000, 3))
    b = a + np.array([2.0, 0.0, 0.0])
    assert mean_image_distance(a, b) == pytest.approx(1.0, rel=0.02)  # shift of 2 at std 2
    assert mean_image_distance(a, a) == 0.0


def test_unbiased_mmd_separates_distributions():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(300, 4)), rng.normal(size=(300, 4))
    z = rng.normal(size=(300, 4)) + 1.0
    same, diff = mmd_unbiased(x, y), mmd_unbiased(x, z)
    assert abs(same) < 0.01 and diff > 0.1
    # Hand-checked tiny case with bandwidth 1: points 0,1 vs 0,2 in 1-D.
    k = lambda d2: np.exp(-d2 / 2)
    want = k(1) * 2 / 2 + k(4) * 2 / 2 - 2 * (k(0) + k(4) + k(1) + k(1)) / 4
    got = mmd_unbiased(np.array([[0.0], [1.0]]), np.array([[0.0], [2.0]]), bandwidth=1.0)
    assert got == pytest.approx(want)


def test_plots_are_written(tmp_path):
    rng = np.random.default_rng(2)
    plot_embeddings(str(tmp_path / "emb.png"), {"real old": rng.normal(size=(50, 8)),
                                                "synthetic old": rng.normal(size=(50, 8)) + 1})
    plot_image_grid(str(tmp_path / "grid.png"), rng.uniform(size=(12, 8, 8, 1)), labels=range(12))
    for name in ("emb.png", "grid.png"):
        data = (tmp_path / name).read_bytes()
        assert data[:4] == b"\x89PNG" and len(data) > 3000
