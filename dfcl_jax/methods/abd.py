"""ABD (Always Be Dreaming, Smith et al. ICCV 2021): generator replay with local CE, head fine-tuning
on stop-gradient features and importance-weighted feature distillation (ABD Eq. 11-15)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import optax

from dfcl_jax.inversion.generator import GeneratorConfig, GeneratorTrainer
from dfcl_jax.methods.base import Method, register, require_positive, teacher_forward
from dfcl_jax.models.generator import Generator
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
class ABD(Method):
    name = "abd"

    @classmethod
    def default_config(cls):
        g = GeneratorConfig()
        return ml_collections.ConfigDict({
            "kd_weight": 0.1, "ft_all_logits": False,  # True: the reference's FT-CE over all logits
            "generator": {"steps": g.steps, "lr": g.lr, "batch_size": g.batch_size,
                          "content": g.content, "diversity": g.diversity, "bn": g.bn,
                          "smoothness": g.smoothness, "z_dim": 1000, "width": 128,
                          "bn_eps_quirk": True, "chunk": g.chunk, "unroll": g.unroll},
        })

    def validate(self):
        require_positive(self.cfg, "kd_weight", allow_zero=True)
        for f in ("steps", "lr", "batch_size", "z_dim", "width", "chunk"):
            if self.cfg.generator[f] <= 0:
                raise ValueError(f"config.method.generator.{f}={self.cfg.generator[f]} must be > 0")

    def generator_config(self) -> GeneratorConfig:
        g = self.cfg.generator
        fields = {f.name for f in dataclasses.fields(GeneratorConfig)}
        return GeneratorConfig(**{k: v for k, v in g.items() if k in fields})

    def init_extras(self, model, rng, sample_images):
        h, _, c = sample_images.shape[1:]
        g = self.cfg.generator
        self.generator = Generator(image_size=h, channels=c, z_dim=g.z_dim, width=g.width,
                                   bn_eps_quirk=g.bn_eps_quirk)
        self.trainer = GeneratorTrainer(self.generator, model, self.generator_config())
        return {"generator": self.trainer.init(rng)}

    def end_task(self, run, task, task_data):
        """Train the generator against the model that just finished `task` (not after the last)."""
        if task_data.is_last:
            return run
        t = run.train
        teacher = {"params": t.params, "batch_stats": t.batch_stats}
        rng = jax.random.fold_in(jax.random.key(task_data.seed), 1000 + task)
        state, history = self.trainer.train(run.extras["generator"], teacher, task_data.n_seen,
                                            rng, progress=task_data.progress)
        self.last_generator_history = history
        return run.replace(extras={**run.extras, "generator": state})

    def synthetic_batch(self, model, ctx, n):
        """Fresh generator images and their labels: the teacher's argmax over old classes."""
        g = ctx.extras["generator"]
        x = self.trainer.sample(g, jax.random.fold_in(ctx.rng, 7), n)
        _, t_logits = teacher_forward(model, ctx.teacher, x)
        return jax.lax.stop_gradient(x), jnp.argmax(mask_logits(t_logits, 0, ctx.task.n_old), -1)

    def loss_fn(self, model, params, batch_stats, images, labels, ctx):
        """ABD Eq. 15: local CE (real) + FT-CE (real + synthetic) + KD (real + synthetic)."""
        n_old, n_seen = ctx.task.n_old, ctx.task.n_seen
        cfg = self.cfg

        def forward(x):
            (f, logits), st = model.apply({"params": params, "batch_stats": batch_stats}, x, True,
                                          method=model.features_and_logits, mutable=["batch_stats"])
            head = model.apply({"params": params}, jax.lax.stop_gradient(f), method=model.classify)
            return f, logits, head, st["batch_stats"]

        def first_task(_):
            # No old classes: plain CE, as the reference (and shareable with finetune).
            _, logits, _, st = forward(images)
            ce = local_ce(logits, labels, jnp.ones_like(labels, jnp.float32), 0, n_seen)
            zero = jnp.zeros(())
            return ce, (st, {"local_ce": ce, "ft_ce": zero, "kd": zero})

        def with_replay(_):
            x_syn, y_syn = self.synthetic_batch(model, ctx, images.shape[0])
            x = jnp.concatenate([images, x_syn])
            y = jnp.concatenate([labels, y_syn])
            f, logits, head, st = forward(x)
            old_f, _ = teacher_forward(model, ctx.teacher, x)
            w = task_balancing_weights(y, n_old, n_seen)
            b = images.shape[0]
            lce = local_ce(logits[:b], labels, w[:b], n_old, n_seen)
            fce = ft_ce(head, y, w, n_seen, cfg.ft_all_logits)
            kd = importance_weighted_feature_kd(f, old_f, ctx.teacher["params"]["head"]["kernel"],
                                                n_old)
            total = lce + fce + cfg.kd_weight * kd
            return total, (st, {"local_ce": lce, "ft_ce": fce, "kd": kd})

        return jax.lax.cond(n_old > 0, with_replay, first_task, None)
