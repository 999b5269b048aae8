"""Generator replay (ABD's source of synthetic data): a generator inverted from the model after
every task but the last, persisting across tasks (warm start); the only thing kept besides
weights. Replay labels are the teacher's argmax over the old classes."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from dfcl_jax.inversion.generator import GeneratorConfig, GeneratorTrainer
from dfcl_jax.inversion.loop_defaults import loop_config_fields, resolve_loop_options
from dfcl_jax.methods.base import teacher_forward
from dfcl_jax.methods.replay import SyntheticSource, register_source
from dfcl_jax.models.generator import Generator
from dfcl_jax.models.heads import mask_logits


@register_source
class GeneratorSource(SyntheticSource):
    """ABD Sec. 4: a generator trained by inversion after each task (`config.method.generator`)."""

    name = "generator"

    @classmethod
    def default_config(cls):
        g = GeneratorConfig()
        return {"generator": {"steps": g.steps, "lr": g.lr, "batch_size": g.batch_size,
                              "content": g.content, "diversity": g.diversity, "bn": g.bn,
                              "smoothness": g.smoothness, "z_dim": 1000, "width": 128,
                              "bn_eps_quirk": True, **loop_config_fields(g)}}

    def validate(self):
        g = self.cfg.generator
        resolve_loop_options(g.unroll, g.chunk, field="config.method.generator")
        for f in ("steps", "lr", "batch_size", "z_dim", "width"):
            if self.cfg.generator[f] <= 0:
                raise ValueError(f"config.method.generator.{f}={self.cfg.generator[f]} must be > 0")

    def generator_config(self) -> GeneratorConfig:
        g = self.cfg.generator
        fields = {f.name for f in dataclasses.fields(GeneratorConfig)}
        return GeneratorConfig(**{k: v for k, v in g.items() if k in fields})

    def init_extras(self, model, rng, sample_images):
        super().init_extras(model, rng, sample_images)
        h, _, c = sample_images.shape[1:]
        g = self.cfg.generator
        self.generator = Generator(image_size=h, channels=c, z_dim=g.z_dim, width=g.width,
                                   bn_eps_quirk=g.bn_eps_quirk)
        self.trainer = GeneratorTrainer(self.generator, model, self.generator_config(),
                                       self.method.mesh)
        return {"generator": self.trainer.init(rng)}

    def end_task(self, run, task, task_data):
        """Train the generator against the model that just finished `task` (not after the last)."""
        if task_data.is_last:
            return run.extras
        t = run.train
        teacher = {"params": t.params, "batch_stats": t.batch_stats}
        rng = jax.random.fold_in(jax.random.key(task_data.seed), 1000 + task)
        state, history = self.trainer.train(run.extras["generator"], teacher, task_data.n_seen,
                                            rng, progress=task_data.progress)
        self.last_history = history
        return {**run.extras, "generator": state}

    def batch(self, model, ctx, n):
        """Fresh generator images and their labels: the teacher's argmax over old classes."""
        x = self.trainer.sample(ctx.extras["generator"], jax.random.fold_in(ctx.rng, 7), n)
        _, t_logits = teacher_forward(model, ctx.teacher, x)
        return jax.lax.stop_gradient(x), jnp.argmax(mask_logits(t_logits, 0, ctx.task.n_old), -1)
