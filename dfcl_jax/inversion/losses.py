"""Losses shared by every inversion engine (methods.md section 2), as pure jax functions.

BN-statistics matching takes the `BNMoments` reported by `apply_with_bn_moments` (batch mean/var of
each BatchNorm input, biased, and the running mean/var), in forward order. Output-side losses take
the full-width logits of the head plus `n_seen`, which may be a traced int32 array: classes
`>= n_seen` are masked with a finite large negative logit, never sliced, so one compiled function
serves every task.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from dfcl_jax.models.blocks import BNMoments
from dfcl_jax.models.heads import class_range_mask, mask_unseen

VAR_EPS = 1e-8  # added to batch and running variances by the KL variants (reference value)

BN_MATCHINGS = ("kl_abd", "kl_pmi", "l2_di")


# --------------------------------------------------------------------------------------------------
# Helpers


def _safe_norm(x: jnp.ndarray) -> jnp.ndarray:
    """Frobenius norm of `x` whose gradient is 0 (not NaN) where x == 0, as torch.norm's."""
    sq = jnp.sum(jnp.square(x))
    positive = sq > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)


def seen_mask(num_classes: int, n_seen) -> jnp.ndarray:
    """Boolean mask of the seen classes `[0, n_seen)`; `n_seen` may be traced."""
    return class_range_mask(num_classes, 0, n_seen)


# --------------------------------------------------------------------------------------------------
# 2.1 BN-statistics matching


def _kl_abd_layer(m: BNMoments) -> jnp.ndarray:
    s2 = m.var + VAR_EPS
    v = m.running_var + VAR_EPS
    # log(sqrt(s2)/sqrt(v)) written as 0.5*(log s2 - log v): the same value, no sqrt in the gradient.
    kl = 0.5 * (jnp.log(s2) - jnp.log(v)) - 0.5 * (1.0 - (v + jnp.square(m.running_mean - m.mean)) / s2)
    return jnp.mean(kl)


def _kl_pmi_layer(m: BNMoments) -> jnp.ndarray:
    s2 = m.var + VAR_EPS
    v = m.running_var + VAR_EPS
    kl = 0.5 * (jnp.log(v) - jnp.log(s2) - 1.0 + (s2 + jnp.square(m.mean - m.running_mean)) / v)
    return jnp.mean(kl)


def _check_moments(moments: Sequence[BNMoments]) -> None:
    if len(moments) == 0:
        raise ValueError("BN-statistics matching needs at least one BNMoments; got an empty list")


def bn_kl_abd(moments: Sequence[BNMoments]) -> jnp.ndarray:
    """ABD generator BN loss ("kl_abd"): layer-mean of channel-mean KL(N(m, v) || N(mu, s2))."""
    _check_moments(moments)
    return sum(_kl_abd_layer(m) for m in moments) / len(moments)


def bn_kl_pmi(moments: Sequence[BNMoments]) -> jnp.ndarray:
    """PMI BN alignment ("kl_pmi"): layer-sum of channel-mean KL(N(mu, s2) || N(m, v))."""
    _check_moments(moments)
    return sum(_kl_pmi_layer(m) for m in moments)


def bn_l2_di(moments: Sequence[BNMoments], first_layer_scale: float = 1.0) -> jnp.ndarray:
    """DeepInversion R_feature ("l2_di"): sum_l ||v_l - s2_l||_2 + ||m_l - mu_l||_2, layer 1 scaled."""
    _check_moments(moments)
    terms = [_safe_norm(m.running_var - m.var) + _safe_norm(m.running_mean - m.mean) for m in moments]
    return first_layer_scale * terms[0] + sum(terms[1:])


def bn_matching(name: str, moments: Sequence[BNMoments], **kw) -> jnp.ndarray:
    """BN-statistics matching selected by name (methods.md 2.1): "kl_abd" | "kl_pmi" | "l2_di"."""
    if name == "kl_abd":
        return bn_kl_abd(moments, **kw)
    if name == "kl_pmi":
        return bn_kl_pmi(moments, **kw)
    if name == "l2_di":
        return bn_l2_di(moments, **kw)
    raise ValueError(f"unknown BN matching {name!r}; allowed: {', '.join(BN_MATCHINGS)}")


# --------------------------------------------------------------------------------------------------
# 2.2 Image priors (x is NHWC)


def gaussian_kernel_1d(size: int = 5, sigma: float = 1.0) -> jnp.ndarray:
    """ABD smoothness prior kernel: 1-D taps exp(-(d / (2 sigma))^2), normalised to sum 1."""
    d = jnp.arange(size, dtype=jnp.float32) - (size - 1) / 2.0
    k = jnp.exp(-jnp.square(d / (2.0 * sigma)))
    return k / jnp.sum(k)


def gaussian_blur(x: jnp.ndarray, size: int = 5, sigma: float = 1.0) -> jnp.ndarray:
    """Depthwise separable Gaussian blur of NHWC `x` with reflect padding `size // 2` (same size)."""
    k = gaussian_kernel_1d(size, sigma).astype(x.dtype)
    pad = size // 2
    xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")
    h, w = x.shape[1], x.shape[2]
    # Separable: the 2-D kernel is the outer product of the normalised 1-D taps (as the reference's).
    rows = sum(k[i] * xp[:, i:i + h, :, :] for i in range(size))
    return sum(k[j] * rows[:, :, j:j + w, :] for j in range(size))


def smoothness_prior(x: jnp.ndarray) -> jnp.ndarray:
    """ABD smoothness prior: mean((x - blur(x))^2), 5x5 Gaussian (sigma 1), reflect padding 2, NHWC."""
    return jnp.mean(jnp.square(x - gaussian_blur(x)))


def total_variation(x: jnp.ndarray) -> jnp.ndarray:
    """DeepInversion R_TV (R_prior): ||dx||_F + ||dy||_F + ||d_diag1||_F + ||d_diag2||_F on NHWC x."""
    dx = x[:, :, :-1, :] - x[:, :, 1:, :]
    dy = x[:, :-1, :, :] - x[:, 1:, :, :]
    d1 = x[:, 1:, :-1, :] - x[:, :-1, 1:, :]
    d2 = x[:, :-1, :-1, :] - x[:, 1:, 1:, :]
    return _safe_norm(dx) + _safe_norm(dy) + _safe_norm(d1) + _safe_norm(d2)


def pixel_l2(x: jnp.ndarray) -> jnp.ndarray:
    """DeepInversion R_l2 (R_prior): batch mean of per-image L2 norms, mean_i ||x_i||_2."""
    # The reference's exact form: torch.norm(x.view(bs, -1), dim=1).mean() (not one norm of the batch,
    # which would be sqrt(bs) times larger for equal image norms).
    flat = x.reshape(x.shape[0], -1)
    return jnp.mean(jax.vmap(_safe_norm)(flat))


# --------------------------------------------------------------------------------------------------
# 2.3 Output-side losses (logits are full-width; classes >= n_seen are masked)


def _masked_ce(logits: jnp.ndarray, labels: jnp.ndarray, n_seen) -> jnp.ndarray:
    logp = jax.nn.log_softmax(mask_unseen(logits, n_seen), axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, labels[:, None].astype(jnp.int32), axis=-1)[:, 0])


def content_loss(logits: jnp.ndarray, n_seen, temperature: float = 1000.0) -> jnp.ndarray:
    """ABD content loss: CE(logits / T, argmax(logits)) over the seen classes, batch mean."""
    pseudo = jnp.argmax(mask_unseen(logits, n_seen), axis=-1)
    return _masked_ce(logits / temperature, pseudo, n_seen)


def diversity_loss(logits: jnp.ndarray, n_seen) -> jnp.ndarray:
    """ABD Eq. 1: diversity of the batch-mean prediction, 1 + sum_k pbar_k log pbar_k / log(n_seen)."""
    pbar = jnp.mean(jax.nn.softmax(mask_unseen(logits, n_seen), axis=-1), axis=0)
    positive = (pbar > 0) & seen_mask(logits.shape[-1], n_seen)
    plogp = jnp.where(positive, pbar * jnp.log(jnp.where(positive, pbar, 1.0)), 0.0)
    # n_seen = 1 would divide 0 by log 1 = 0; use log 2 there (every sample then predicts one class: 1).
    denom = jnp.log(jnp.maximum(jnp.asarray(n_seen, jnp.float32), 2.0))
    return 1.0 + jnp.sum(plogp) / denom


def class_conditional_ce(logits: jnp.ndarray, labels: jnp.ndarray, n_seen) -> jnp.ndarray:
    """DeepInversion L(x, y): CE of the logits to target labels over the seen classes, batch mean."""
    return _masked_ce(logits, labels, n_seen)


def feature_matching(features: jnp.ndarray, targets: jnp.ndarray) -> jnp.ndarray:
    """PMI feature alignment (MSE): mean over all elements of (features - targets)^2."""
    return jnp.mean(jnp.square(features - targets))
