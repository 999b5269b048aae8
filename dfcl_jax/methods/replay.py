"""Replay learners and where their synthetic images come from.

A `ReplayMethod` trains on real new data plus synthetic old data; a `SyntheticSource` makes that
data and owns its part of the learner's `extras`. `config.method.synthesis` picks the source, so
any replay learner (ABD, R-DFCIL, DeepInversion-KD, LwF + synthetic) can replay ABD's generator or
PMI's inverted images ("compatible with various CL strategies").
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import ml_collections

from dfcl_jax.methods.base import Method, StepContext, TaskInfo, plain_ce_loss, teacher_forward

SOURCES: dict[str, type[SyntheticSource]] = {}


class SyntheticSource:
    """Makes a replay learner's synthetic old-class data; keeps only what data-free allows."""

    name: ClassVar[str] = ""
    space: ClassVar[str] = "images"  # what it makes: "images", or "tokens" (CLIP token maps)

    def __init__(self, method_cfg: ml_collections.ConfigDict, method: Method):
        self.cfg, self.method = method_cfg, method

    @classmethod
    def default_config(cls) -> dict:
        """This source's sub-configs of `config.method` (e.g. {"generator": {...}})."""
        return {}

    def validate(self) -> None:
        """Raise ValueError naming `config.method.<sub>.<field>` for bad values."""

    def init_extras(self, model, rng, sample_images) -> dict:
        """This source's initial extras; sources keep `model` for their end-of-task work."""
        self.model = model
        return {}

    def end_task(self, run, task: int, task_data) -> dict:
        """The new extras after `task` (its real data readable through `task_data`)."""
        return run.extras

    def batch(self, model, ctx: StepContext, n: int):
        """`n` synthetic images (normalised space) and their labels, inside the jitted step."""
        raise NotImplementedError


def dataclass_kwargs(cls, sub) -> dict:
    """The entries of config block `sub` that are fields of dataclass `cls` (lists as tuples)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: (tuple(v) if isinstance(v, (list, tuple)) else v) for k, v in sub.items()
            if k in names}


def register_source(cls: type[SyntheticSource]) -> type[SyntheticSource]:
    SOURCES[cls.name] = cls
    return cls


class ReplayMethod(Method):
    """Learners that replay synthetic old-class images from `config.method.synthesis`."""

    default_synthesis: ClassVar[str] = "generator"
    synthetic_space: ClassVar[str] = "images"  # the sources this learner can replay
    loss_terms: ClassVar[tuple[str, ...]] = ()
    first_task_term: ClassVar[str] = ""

    def __init__(self, cfg):
        super().__init__(cfg)
        if cfg.synthesis not in SOURCES:
            raise ValueError(f"config.method.synthesis={cfg.synthesis!r}; allowed: "
                             f"{', '.join(sorted(self.compatible_sources()))}")
        if SOURCES[cfg.synthesis].space != self.synthetic_space:
            raise ValueError(f"config.method.synthesis={cfg.synthesis!r} makes "
                             f"{SOURCES[cfg.synthesis].space}, {self.name} replays "
                             f"{self.synthetic_space}; allowed: "
                             f"{', '.join(sorted(self.compatible_sources()))}")
        self.source = SOURCES[cfg.synthesis](cfg, self)

    @classmethod
    def compatible_sources(cls) -> list[str]:
        return [n for n, s in SOURCES.items() if s.space == cls.synthetic_space]

    @classmethod
    def default_config(cls):
        cfg = ml_collections.ConfigDict({"synthesis": cls.default_synthesis})
        for source in sorted(cls.compatible_sources()):
            for key, sub in SOURCES[source].default_config().items():
                cfg[key] = ml_collections.ConfigDict(sub)
        return cfg

    def validate(self):
        self.source.validate()

    def init_extras(self, model, rng, sample_images) -> Any:
        return self.source.init_extras(model, rng, sample_images)

    def end_task(self, run, task, task_data):
        """Let the source prepare the next task's synthetic data (and its statistics)."""
        return run.replace(extras=self.source.end_task(run, task, task_data))

    def synthetic_batch(self, model, ctx, n):
        return self.source.batch(model, ctx, n)

    def replay_forward(self, model, params, batch_stats, images, labels, ctx):
        """Real + equally many synthetic images through the student (train mode), its head on
        stop-gradient features, and the frozen teacher: the inputs of ABD's and R-DFCIL's losses.

        Returns (labels of real + synthetic, features, logits, head logits, new batch_stats,
        teacher features, teacher logits).
        """
        x_syn, y_syn = self.synthetic_batch(model, ctx, images.shape[0])
        x, y = jnp.concatenate([images, x_syn]), jnp.concatenate([labels, y_syn])
        (f, logits), st = model.apply({"params": params, "batch_stats": batch_stats}, x, True,
                                      method=model.features_and_logits, mutable=["batch_stats"])
        head = model.apply({"params": params}, jax.lax.stop_gradient(f), method=model.classify)
        t_f, t_logits = teacher_forward(model, ctx.teacher, x)
        return y, f, logits, head, st["batch_stats"], t_f, t_logits

    def sample_synthetic(self, model, run, rng, n: int, n_old: int):
        """`n` replay images as the learner sees them now (with their labels)."""
        ctx = StepContext(task=TaskInfo.make(n_old, n_old), teacher=run.teacher, extras=run.extras,
                          rng=rng)
        return self.synthetic_batch(model, ctx, n)

    def first_task_loss_fn(self, model, params, batch_stats, images, labels, ctx):
        """First task (nothing to replay): plain CE on real data, as the references, so the
        trained first-task model can be shared with `finetune`."""
        terms = (self.first_task_term,) + tuple(t for t in self.loss_terms
                                                 if t != self.first_task_term)
        return plain_ce_loss(model, params, batch_stats, images, labels, ctx, terms)
