"""LwF.MC (iCaRL's distillation without exemplars): sigmoid/BCE, old targets from the teacher."""

import jax
import jax.numpy as jnp
import optax

from dfcl_jax.methods.base import Method, register, student_forward, teacher_forward
from dfcl_jax.models.heads import class_range_mask


@register
class LwFMC(Method):
    name = "lwf_mc"
    first_task_loss = "bce"

    def loss_fn(self, model, params, batch_stats, images, labels, ctx):
        """BCE summed over the seen classes, batch mean; targets one-hot, old columns sigmoid(teacher).

        As the ABD reference (`BCELoss(reduction="sum") / batch`), also on the first task.
        """
        _, logits, new_stats = student_forward(model, params, batch_stats, images)
        task = ctx.task
        _, t_logits = teacher_forward(model, ctx.teacher, images)
        num_classes = logits.shape[-1]
        targets = jax.nn.one_hot(labels, num_classes)
        old = class_range_mask(num_classes, 0, task.n_old)
        targets = jnp.where(old, jax.nn.sigmoid(t_logits), targets)
        seen = class_range_mask(num_classes, 0, task.n_seen)
        bce = optax.sigmoid_binary_cross_entropy(logits, targets)
        bce = jnp.sum(jnp.where(seen, bce, 0.0), axis=-1)
        return bce.mean(), (new_stats, {"bce": bce.mean()})
