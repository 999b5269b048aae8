"""Base (fine-tune): cross-entropy on the current task's data only; the lower bound."""

from dfcl_jax.methods.base import Method, register, seen_ce, student_forward


@register
class Finetune(Method):
    name = "finetune"

    def loss_fn(self, model, params, batch_stats, images, labels, ctx):
        """CE over the seen classes on real data of the current task."""
        _, logits, new_stats = student_forward(model, params, batch_stats, images)
        ce = seen_ce(logits, labels, ctx.task.n_seen).mean()
        return ce, (new_stats, {"ce": ce})
