"""ABD (Always Be Dreaming, Smith et al. ICCV 2021): generator replay with local CE, head fine-tuning
on stop-gradient features and importance-weighted feature distillation (ABD Eq. 11-15)."""

from __future__ import annotations

import jax.numpy as jnp
import optax

from dfcl_jax.methods.base import register, require_positive
from dfcl_jax.methods.replay import ReplayMethod
from dfcl_jax.models.heads import class_range_mask, mask_logits


def task_balancing_weights(labels, n_old, n_seen):
    """ABD Eq. 14: w = n_old / n_seen for old-class labels, 1 - n_old / n_seen for new ones."""
    ratio = n_old / n_seen
    return jnp.where(labels < n_old, ratio, 1.0 - ratio)


def local_ce(logits, labels, weights, n_old, n_seen):
    """ABD Eq. 11: task-balanced CE over the current task's classes only (real data)."""
    ce = optax.softmax_cross_entropy_with_integer_labels(mask_logits(logits, n_old, n_seen), labels)
    return jnp.mean(weights * ce)


def ft_ce(head_logits, labels, weights, n_seen, all_logits: bool = False):
    """ABD Eq. 12: task-balanced CE of the head on stop-gradient features (real + synthetic)."""
    logits = head_logits if all_logits else mask_logits(head_logits, 0, n_seen)
    return jnp.mean(weights * optax.softmax_cross_entropy_with_integer_labels(logits, labels))


def importance_weighted_feature_kd(feats, old_feats, old_head_kernel, n_old):
    """ABD Eq. 13: mean_i sum_k (W_old (f(x_i) - f_old(x_i)))_k^2 / n_old, W_old = old-class head."""
    diff = (feats - old_feats) @ old_head_kernel  # (B, C): per-class importance-weighted drift
    diff = jnp.where(class_range_mask(diff.shape[-1], 0, n_old), diff, 0.0)
    return jnp.mean(jnp.sum(jnp.square(diff), axis=-1)) / jnp.maximum(n_old, 1)


@register
class ABD(ReplayMethod):
    name = "abd"
    loss_terms = ("local_ce", "ft_ce", "kd")
    first_task_term = "local_ce"

    @classmethod
    def default_config(cls):
        cfg = super().default_config()
        cfg.kd_weight = 0.1
        cfg.ft_all_logits = False  # True: the reference's FT-CE over all logits (quirk)
        return cfg

    def validate(self):
        super().validate()
        require_positive(self.cfg, "kd_weight", allow_zero=True)

    def loss_fn(self, model, params, batch_stats, images, labels, ctx):
        """ABD Eq. 15: local CE (real) + FT-CE (real + synthetic) + KD (real + synthetic)."""
        n_old, n_seen = ctx.task.n_old, ctx.task.n_seen
        y, f, logits, head, stats, old_f, _ = self.replay_forward(model, params, batch_stats, images,
                                                                  labels, ctx)
        w = task_balancing_weights(y, n_old, n_seen)
        b = images.shape[0]
        lce = local_ce(logits[:b], labels, w[:b], n_old, n_seen)
        fce = ft_ce(head, y, w, n_seen, self.cfg.ft_all_logits)
        kd = importance_weighted_feature_kd(f, old_f, ctx.teacher["params"]["head"]["kernel"], n_old)
        total = lce + fce + self.cfg.kd_weight * kd
        return total, (stats, {"local_ce": lce, "ft_ce": fce, "kd": kd})
