"""PMI's semantic-aware feature projection (methods.md section 5): image-feature targets for a
class with no images, from the Gaussians of text-similar old classes rotated onto its text
prototype.

For a new class d with text prototype t_d: take the K old classes c with the highest t_c . t_d;
sample L2-normalised features from each class's Gaussian, rotate them by the rotation of
span{t_c, t_d} that maps t_c onto t_d (identity on the orthogonal complement), average over the
K classes, normalise, and mix with the text: o' = normalize((1 - text_mix) o + text_mix t_d).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class ProjectionConfig:
    """Semantic-aware projection constants (PMI CLIP reference)."""

    top_k: int = 5  # text-similar old classes per new class
    per_class: int = 10  # projected targets per new class (reference: 10-20)
    text_mix: float = 0.1  # o' = normalize((1 - text_mix) * o + text_mix * t_d)

    def validate(self) -> None:
        for f in ("top_k", "per_class"):
            if getattr(self, f) <= 0:
                raise ValueError(f"projection.{f}={getattr(self, f)} must be > 0")
        if not 0.0 <= self.text_mix <= 1.0:
            raise ValueError(f"projection.text_mix={self.text_mix} must be in [0, 1]")


def _normalize(x, axis=-1):
    return x / jnp.maximum(jnp.linalg.norm(x, axis=axis, keepdims=True), 1e-12)


def plane_rotation(x, t_c, t_d):
    """PMI Sec. 5 rotation R with R t_c = t_d in span{t_c, t_d}, identity on its complement:
    cos = t_c.t_d, v = normalize(t_d - cos t_c), a = t_c.x, b = v.x,
    R(x) = (cos a - sin b) t_c + (sin a + cos b) v + (x - a t_c - b v). t_c, t_d unit vectors."""
    cos = jnp.clip(jnp.dot(t_c, t_d), -1.0, 1.0)
    u = t_d - cos * t_c
    norm = jnp.linalg.norm(u)
    # t_c ~ t_d (angle < 1e-4 rad; float32 rounding would give v a random direction): R = I.
    v = jnp.where(norm > 1e-4, u / jnp.maximum(norm, 1e-12), 0.0)
    sin = jnp.dot(v, t_d)  # = sqrt(1 - cos^2) >= 0
    a = x @ t_c
    b = x @ v
    return ((cos * a - sin * b)[..., None] * t_c + (sin * a + cos * b)[..., None] * v
            + (x - a[..., None] * t_c - b[..., None] * v))


def top_k_similar(t_d, t_old, valid, k: int):
    """Indices of the k classes (rows of t_old with `valid`) of highest cosine t_c . t_d."""
    sims = jnp.where(valid, t_old @ t_d, -jnp.inf)
    return jax.lax.top_k(sims, k)[1]


def semantic_projection(rng, t_d, t_old, mean, std, valid, cfg: ProjectionConfig):
    """PMI Sec. 5: `cfg.per_class` projected feature targets (L2-normalised) for the class of
    text prototype `t_d`, from the Gaussians (mean, std) of the top-K text-similar valid classes."""
    idx = top_k_similar(t_d, t_old, valid, cfg.top_k)
    eps = jax.random.normal(rng, (cfg.top_k, cfg.per_class, t_d.shape[-1]))
    samples = _normalize(mean[idx][:, None] + std[idx][:, None] * eps)
    rotated = jax.vmap(plane_rotation, in_axes=(0, 0, None))(samples, t_old[idx], t_d)
    o = _normalize(jnp.mean(rotated, axis=0))
    return _normalize((1.0 - cfg.text_mix) * o + cfg.text_mix * t_d)


def project_classes(rng, new_classes, prototypes, mean, std, valid, cfg: ProjectionConfig):
    """Targets for every class in `new_classes` (rows of `prototypes`), with their labels:
    ((len(new_classes) * per_class, D), (len * per_class,))."""
    keys = jax.random.split(rng, len(new_classes))
    targets = [semantic_projection(k, prototypes[d], prototypes, mean, std, valid, cfg)
               for k, d in zip(keys, new_classes)]
    labels = jnp.repeat(jnp.asarray(new_classes, jnp.int32), cfg.per_class)
    return jnp.concatenate(targets), labels
