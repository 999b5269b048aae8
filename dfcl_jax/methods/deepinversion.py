"""DeepInversion as a data-free continual learner (ABD Eq. 8-9) and LwF with synthetic data.

Both replay an equal-sized batch of ABD-generator images beside every real batch and distil the
frozen previous model at temperature 2:
- `deepinversion`: CE on real data + mu * KD on real and synthetic, where the student's softmax
  spans every seen class and the teacher's old-class probabilities are zero-padded for the new
  classes (ABD Eq. 9), mu = 1;
- `lwf_synthetic`: CE on real data + mu * LwF's KD (softmax over the old classes only) on real and
  synthetic, mu = 0.1.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dfcl_jax.methods.base import (
    kd_old_classes,
    register,
    require_positive,
    seen_ce,
    student_forward,
    teacher_forward,
)
from dfcl_jax.methods.replay import ReplayMethod
from dfcl_jax.models.heads import class_range_mask, mask_logits


def kd_zero_padded(student_logits, teacher_logits, n_old, n_seen, temperature: float):
    """ABD Eq. 9: soft-target CE over the seen classes, teacher probabilities zero for new ones."""
    log_p = jax.nn.log_softmax(mask_logits(student_logits, 0, n_seen) / temperature)
    q = jax.nn.softmax(mask_logits(teacher_logits, 0, n_old) / temperature)
    q = jnp.where(class_range_mask(q.shape[-1], 0, n_old), q, 0.0)
    return -jnp.sum(q * jnp.where(class_range_mask(q.shape[-1], 0, n_seen), log_p, 0.0), -1)


class _SyntheticKD(ReplayMethod):
    loss_terms = ("ce", "kd")
    first_task_term = "ce"
    default_mu = 1.0

    @classmethod
    def default_config(cls):
        cfg = super().default_config()
        cfg.mu = cls.default_mu
        cfg.temperature = 2.0
        return cfg

    def validate(self):
        super().validate()
        require_positive(self.cfg, "mu", allow_zero=True)
        require_positive(self.cfg, "temperature")

    def kd(self, logits, t_logits, task):
        raise NotImplementedError

    def loss_fn(self, model, params, batch_stats, images, labels, ctx):
        """CE(real, seen classes) + mu * KD_T(real + synthetic)."""
        x_syn, _ = self.synthetic_batch(model, ctx, images.shape[0])
        x = jnp.concatenate([images, x_syn])
        _, logits, st = student_forward(model, params, batch_stats, x)
        _, t_logits = teacher_forward(model, ctx.teacher, x)
        b = images.shape[0]
        ce = seen_ce(logits[:b], labels, ctx.task.n_seen).mean()
        kd = self.kd(logits, t_logits, ctx.task).mean()
        return ce + self.cfg.mu * kd, (st, {"ce": ce, "kd": kd})


@register
class DeepInversionKD(_SyntheticKD):
    name = "deepinversion"

    def kd(self, logits, t_logits, task):
        return kd_zero_padded(logits, t_logits, task.n_old, task.n_seen, self.cfg.temperature)


@register
class LwFSynthetic(_SyntheticKD):
    name = "lwf_synthetic"
    default_mu = 0.1

    def kd(self, logits, t_logits, task):
        return kd_old_classes(logits, t_logits, task.n_old, self.cfg.temperature)
