"""LwF (Li & Hoiem): CE on new data + mu * KD(T) from the previous model on old-class outputs."""

import ml_collections

from dfcl_jax.methods.base import (
    Method,
    kd_old_classes,
    register,
    require_positive,
    seen_ce,
    student_forward,
    teacher_forward,
)


@register
class LwF(Method):
    name = "lwf"

    @classmethod
    def default_config(cls):
        return ml_collections.ConfigDict({"mu": 1.0, "temperature": 2.0})

    def validate(self):
        require_positive(self.cfg, "mu", allow_zero=True)
        require_positive(self.cfg, "temperature")

    def loss_fn(self, model, params, batch_stats, images, labels, ctx):
        """CE(seen classes) + mu * KD_T(old classes of teacher -> student) on real new data."""
        _, logits, new_stats = student_forward(model, params, batch_stats, images)
        _, t_logits = teacher_forward(model, ctx.teacher, images)
        ce = seen_ce(logits, labels, ctx.task.n_seen).mean()
        kd = kd_old_classes(logits, t_logits, ctx.task.n_old, self.cfg.temperature).mean()
        return ce + self.cfg.mu * kd, (new_stats, {"ce": ce, "kd": kd})
