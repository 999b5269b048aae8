"""Generator replay: learners that replay images from an ABD generator (ABD, DeepInversion-KD,
LwF + synthetic). The generator is inverted from the model after every task but the last and
persists across tasks (warm start); it is the only thing these learners keep besides weights."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections

from dfcl_jax.inversion.generator import GeneratorConfig, GeneratorTrainer
from dfcl_jax.methods.base import Method, StepContext, TaskInfo, plain_ce_loss, teacher_forward
from dfcl_jax.models.generator import Generator
from dfcl_jax.models.heads import mask_logits


class GeneratorReplay(Method):
    """Learners that replay images from an ABD generator inverted after every task but the last."""

    @classmethod
    def default_config(cls):
        g = GeneratorConfig()
        return ml_collections.ConfigDict({
            "generator": {"steps": g.steps, "lr": g.lr, "batch_size": g.batch_size,
                          "content": g.content, "diversity": g.diversity, "bn": g.bn,
                          "smoothness": g.smoothness, "z_dim": 1000, "width": 128,
                          "bn_eps_quirk": True, "chunk": g.chunk, "unroll": g.unroll},
        })

    def validate(self):
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

    def sample_synthetic(self, model, run, rng, n: int, n_old: int):
        """`n` replay images as the learner sees them now (generator + teacher's old-class labels)."""
        ctx = StepContext(task=TaskInfo.make(n_old, n_old), teacher=run.teacher, extras=run.extras,
                          rng=rng)
        return self.synthetic_batch(model, ctx, n)

    def first_task_loss_fn(self, model, params, batch_stats, images, labels, ctx):
        """First task (nothing to replay): plain CE on real data, as the references, so the
        trained first-task model can be shared with `finetune`."""
        terms = (self.first_task_term,) + tuple(t for t in self.loss_terms
                                                 if t != self.first_task_term)
        return plain_ce_loss(model, params, batch_stats, images, labels, ctx, terms)

    def loss_fn(self, model, params, batch_stats, images, labels, ctx):
        """Once old classes exist: real + synthetic batch (see the subclasses)."""
        raise NotImplementedError
