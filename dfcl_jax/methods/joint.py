"""Upper bound: at task t, joint (offline) training on all data of tasks 1..t."""

from dfcl_jax.methods.base import Method, register, seen_ce, student_forward


@register
class Joint(Method):
    name = "joint"
    data_free = False  # an oracle: it reads every seen task's real data
    trains_on = "seen"

    def loss_fn(self, model, params, batch_stats, images, labels, ctx):
        """CE over the seen classes on real data of every seen task."""
        _, logits, new_stats = student_forward(model, params, batch_stats, images)
        ce = seen_ce(logits, labels, ctx.task.n_seen).mean()
        return ce, (new_stats, {"ce": ce})
