"""Semantic-aware feature projection (methods.md section 5): the plane rotation and the
projected targets of a class with no data."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dfcl_jax.inversion.projection import ProjectionConfig, plane_rotation, semantic_projection


def unit(v):
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def test_rotation_maps_t_c_to_t_d_preserves_norms_and_fixes_the_complement():
    rng = np.random.default_rng(0)
    t_c, t_d = unit(rng.standard_normal(16)), unit(rng.standard_normal(16))
    R = lambda x: np.asarray(plane_rotation(jnp.asarray(x, jnp.float32), jnp.asarray(t_c, jnp.float32),
                                            jnp.asarray(t_d, jnp.float32)))
    np.testing.assert_allclose(R(t_c), t_d, atol=1e-6)
    x = rng.standard_normal((64, 16))
    np.testing.assert_allclose(np.linalg.norm(R(x), axis=1), np.linalg.norm(x, axis=1), rtol=1e-5)
    # The orthogonal complement of span{t_c, t_d} is left as it is.
    basis = np.linalg.qr(np.stack([t_c, t_d], 1), mode="complete")[0][:, 2:]
    w = rng.standard_normal((8, 14)) @ basis.T
    np.testing.assert_allclose(R(w), w, atol=1e-5)
    # A rotation: orthogonal with determinant +1, and inner products are preserved.
    M = R(np.eye(16)).T
    np.testing.assert_allclose(M.T @ M, np.eye(16), atol=1e-5)
    assert np.linalg.det(M) == pytest.approx(1.0, abs=1e-4)
    # t_c == t_d: the identity (no NaN from normalising a zero vector).
    same = np.asarray(plane_rotation(jnp.asarray(x, jnp.float32), jnp.asarray(t_c, jnp.float32),
                                     jnp.asarray(t_c, jnp.float32)))
    np.testing.assert_allclose(same, x, atol=1e-5)


def constructed_space(d=64, c=12, gap=1.0, spread=0.05, seed=0):
    """Text prototypes t_c; class image features cluster around normalize(t_c + g) (a shared
    modality gap g), with per-dimension std `spread`."""
    rng = np.random.default_rng(seed)
    t = unit(rng.standard_normal((c, d)))
    g = unit(rng.standard_normal(d))
    mean = unit(t + gap * g)
    return t, mean, np.full((c, d), spread)


def test_projected_features_of_a_held_out_class_are_nearest_its_true_mean():
    t, mean, std = constructed_space()
    cfg = ProjectionConfig(top_k=5, per_class=20, text_mix=0.1)
    for held in range(t.shape[0]):
        valid = jnp.arange(t.shape[0]) != held
        z = np.asarray(semantic_projection(jax.random.key(held), jnp.asarray(t[held]), jnp.asarray(t),
                                           jnp.asarray(mean), jnp.asarray(std), valid, cfg))
        np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1.0, rtol=1e-5)
        d = ((z[:, None] - mean[None]) ** 2).sum(-1)  # (samples, classes)
        assert (d.argmin(1) == held).all(), f"class {held}: nearest means {d.argmin(1)}"
        # Without the rotation the same samples stay nearest the old classes they came from.
        unrotated = unit(mean[np.argsort(-(t @ t[held]) + 10 * (~np.asarray(valid)))[:5]].mean(0))
        assert ((unrotated - mean) ** 2).sum(-1).argmin() != held


def test_projection_config_errors_name_the_field():
    with pytest.raises(ValueError, match="projection.top_k"):
        ProjectionConfig(top_k=0).validate()
    with pytest.raises(ValueError, match="projection.text_mix"):
        ProjectionConfig(text_mix=1.5).validate()
