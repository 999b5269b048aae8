"""R-DFCIL-style learner (Gao et al., ECCV 2022), as PMI trains its ResNets (methods.md sec. 6):
local CE on real data, L1 logit distillation on synthetic data, angle relational distillation
through projection heads, FT-CE of the head on stop-gradient features, gradual unfreezing
(head, + last stage, all) and a final class-balanced head fine-tuning."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import linen as nn

from dfcl_jax.methods.abd import ft_ce, local_ce
from dfcl_jax.methods.base import register, require_positive, teacher_forward
from dfcl_jax.methods.replay import ReplayMethod
from dfcl_jax.models.heads import class_range_mask, mask_logits
from dfcl_jax.train.schedule import default_phases, staged_phases


def rdfcil_factors(n_old, n_new):
    """R-DFCIL loss factors: alpha = log2(n_new / 2 + 1), beta = sqrt(n_old / n_new)."""
    n_old, n_new = jnp.asarray(n_old, jnp.float32), jnp.asarray(n_new, jnp.float32)
    return jnp.log2(n_new / 2.0 + 1.0), jnp.sqrt(n_old / n_new)


def angle_potentials(e):
    """RKD angle potentials: cosines of the angles e_j - e_i, e_k - e_i for every triplet."""
    d = e[None, :, :] - e[:, None, :]
    # F.normalize(d, dim=-1); rsqrt of a clamped square keeps the gradient finite where d = 0 (i = j).
    d = d * jax.lax.rsqrt(jnp.maximum(jnp.sum(jnp.square(d), -1, keepdims=True), 1e-24))
    return jnp.einsum("ijd,ikd->ijk", d, d)


def angle_rkd(student, teacher):
    """Angle-wise relational KD (Park et al. 2019): smooth-L1 between angle potentials."""
    return jnp.mean(optax.huber_loss(angle_potentials(student),
                                     jax.lax.stop_gradient(angle_potentials(teacher))))


def l1_logit_kd(logits, teacher_logits, n_old):
    """R-DFCIL: mean absolute difference of the old-class logits (current vs stored teacher)."""
    diff = jnp.where(class_range_mask(logits.shape[-1], 0, n_old),
                     jnp.abs(logits - jax.lax.stop_gradient(teacher_logits)), 0.0)
    return jnp.mean(jnp.sum(diff, -1)) / jnp.maximum(n_old, 1)


def class_balanced_ce(logits, labels, n_seen):
    """CE with per-class weights 1 / count (counts in the batch), normalised to mean weight 1."""
    counts = jnp.sum(jax.nn.one_hot(labels, logits.shape[-1]), axis=0)
    w = 1.0 / jnp.maximum(counts[labels], 1.0)
    w = w * labels.shape[0] / jnp.sum(w)
    ce = optax.softmax_cross_entropy_with_integer_labels(mask_logits(logits, 0, n_seen), labels)
    return jnp.mean(w * ce)


@register
class RDFCIL(ReplayMethod):
    name = "rdfcil"
    loss_terms = ("local_ce", "l1_kd", "rkd", "ft_ce")
    first_task_term = "local_ce"

    @classmethod
    def default_config(cls):
        cfg = super().default_config()
        cfg.local_ce = 0.75  # x (1 + 1/alpha) / beta
        cfg.l1_kd = 0.15  # x alpha * beta
        cfg.rkd = 0.5  # x alpha * beta
        cfg.ft_ce = 1.5  # x (1 + 1/alpha) / beta
        cfg.rkd_dim = 128  # projection heads Linear(d, rkd_dim), student and teacher
        cfg.multiply_quirk = False  # the released code's `rkd * L_rkd * ft * L_ft` (a typo)
        # Gradual unfreezing (epochs, lr) per stage, each x0.1 at 50% and 75% of its epochs;
        # then class-balanced head fine-tuning. CIFAR-100 10 tasks reference values.
        cfg.head_epochs, cfg.head_lr = 20, 0.1
        cfg.last_stage_epochs, cfg.last_stage_lr = 20, 0.05
        cfg.all_epochs, cfg.all_lr = 120, 0.01
        cfg.head_ft_epochs, cfg.head_ft_lr = 40, 0.005
        return cfg

    def validate(self):
        super().validate()
        require_positive(self.cfg, "local_ce", "l1_kd", "rkd", "ft_ce", allow_zero=True)
        require_positive(self.cfg, "rkd_dim", "head_lr", "last_stage_lr", "all_lr", "head_ft_lr")
        require_positive(self.cfg, "head_epochs", "last_stage_epochs", "all_epochs",
                         "head_ft_epochs", allow_zero=True)
        if self.cfg.head_epochs + self.cfg.last_stage_epochs + self.cfg.all_epochs == 0:
            raise ValueError("config.method.{head,last_stage,all}_epochs are all 0: nothing trains")

    def phases(self, train_cfg, task):
        """First task: `config.train`; later: head -> + last stage -> all -> balanced head FT."""
        if task == 0:
            return default_phases(train_cfg, task, True)
        c = self.cfg
        return staged_phases([
            ("head", c.head_epochs, c.head_lr, ("head",), "main"),
            ("last_stage", c.last_stage_epochs, c.last_stage_lr, ("head", "last_stage"), "main"),
            ("all", c.all_epochs, c.all_lr, None, "main"),
            ("head_ft", c.head_ft_epochs, c.head_ft_lr, ("head",), "head_ft")])

    def init_learner_params(self, model, rng, sample_images):
        dim = jax.eval_shape(lambda x: model.init_with_output(rng, x, False, method=model.features)[0],
                             sample_images).shape[-1]
        proj = nn.Dense(self.cfg.rkd_dim)
        ks, kt = jax.random.split(rng)
        return {"rkd_student": proj.init(ks, jnp.zeros((1, dim)))["params"],
                "rkd_teacher": proj.init(kt, jnp.zeros((1, dim)))["params"]}

    def project(self, learner_params, which: str, feats):
        return nn.Dense(self.cfg.rkd_dim).apply({"params": learner_params[which]}, feats)

    def loss_fn(self, model, params, batch_stats, images, labels, ctx):
        """R-DFCIL: localCE(real) + L1-KD(synthetic) + angle-RKD(real) + FT-CE(real + synthetic)."""
        c, n_old, n_seen = self.cfg, ctx.task.n_old, ctx.task.n_seen
        alpha, beta = rdfcil_factors(n_old, n_seen - n_old)
        y, f, logits, head, stats, t_f, t_logits = self.replay_forward(model, params, batch_stats,
                                                                       images, labels, ctx)
        b = images.shape[0]
        ones = jnp.ones_like(y, jnp.float32)
        terms = {
            "local_ce": local_ce(logits[:b], labels, ones[:b], n_old, n_seen),
            "l1_kd": l1_logit_kd(logits[b:], t_logits[b:], n_old),
            "rkd": angle_rkd(self.project(params["learner"], "rkd_student", f[:b]),
                             self.project(params["learner"], "rkd_teacher", t_f[:b])),
            "ft_ce": ft_ce(head, y, ones, n_seen),
        }
        w_ce = (1.0 + 1.0 / alpha) / beta
        rkd, ft = c.rkd * alpha * beta * terms["rkd"], c.ft_ce * w_ce * terms["ft_ce"]
        total = (c.local_ce * w_ce * terms["local_ce"] + c.l1_kd * alpha * beta * terms["l1_kd"]
                 + (rkd * ft if c.multiply_quirk else rkd + ft))
        return total, (stats, terms)

    def head_ft_loss_fn(self, model, params, batch_stats, images, labels, ctx):
        """Class-balanced head fine-tuning: weighted CE (real + synthetic) + L1-KD (synthetic).

        The backbone runs in eval mode (its statistics stay as trained); only the head learns.
        """
        n_old, n_seen = ctx.task.n_old, ctx.task.n_seen
        alpha, beta = rdfcil_factors(n_old, n_seen - n_old)
        x_syn, y_syn = self.synthetic_batch(model, ctx, images.shape[0])
        x, y = jnp.concatenate([images, x_syn]), jnp.concatenate([labels, y_syn])
        f = jax.lax.stop_gradient(model.apply({"params": params, "batch_stats": batch_stats}, x,
                                              False, method=model.features))
        logits = model.apply({"params": params}, f, method=model.classify)
        _, t_logits = teacher_forward(model, ctx.teacher, x_syn)
        b = images.shape[0]
        ce = class_balanced_ce(logits, y, n_seen)
        kd = l1_logit_kd(logits[b:], t_logits, n_old)
        return ce + self.cfg.l1_kd * alpha * beta * kd, (batch_stats, {"ce": ce, "l1_kd": kd})
