"""Single-head class masking: the head covers every class; unseen ones are masked, never sliced.

Class counts may be traced int32 arrays, so one compiled function serves every task.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

NEG_INF = -1e9  # finite "minus infinity": softmax gives exactly 0 there and 0 * NEG_INF stays 0


def class_range_mask(num_classes: int, lo, hi) -> jax.Array:
    """Boolean (C,) mask of classes in [lo, hi)."""
    c = jnp.arange(num_classes)
    return (c >= lo) & (c < hi)


def mask_logits(logits: jax.Array, lo, hi) -> jax.Array:
    """Logits outside classes [lo, hi) set to NEG_INF."""
    return jnp.where(class_range_mask(logits.shape[-1], lo, hi), logits, NEG_INF)


def mask_unseen(logits: jax.Array, n_seen) -> jax.Array:
    """Logits of classes >= n_seen set to NEG_INF."""
    return mask_logits(logits, 0, n_seen)
