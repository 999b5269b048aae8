"""PMI (Tong et al., NeurIPS 2025) as a replay source, and the `pmi` learner: PMI's synthetic data
feeding the R-DFCIL-style learner (methods.md sections 3.3, 4 and 6).

After each task the source keeps, per class, a diagonal Gaussian of penultimate features and a
contrastive encoder (real data of the finished task for its classes; for older classes the previous
synthetic images passed through the new model, since the backbone drifts). Unless the task was the
last, it then draws feature targets (CFS) for every seen class and inverts them through the model
(per-layer, then full-model): the synthetic set the next task replays. Nothing per-sample of real
images outlives the task.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from dfcl_jax.inversion import feature_model as fm
from dfcl_jax.inversion.loop_defaults import loop_config_fields
from dfcl_jax.inversion.pmi import PMIConfig, PMIInverter
from dfcl_jax.methods.base import register
from dfcl_jax.methods.rdfcil import RDFCIL
from dfcl_jax.methods.replay import SyntheticSource, dataclass_kwargs, register_source


@register_source
class PMISource(SyntheticSource):
    """PMI synthesis: class Gaussians + CFS targets, inverted per layer (`config.method.pmi`)."""

    name = "pmi"

    @classmethod
    def default_config(cls):
        p = {f.name: getattr(PMIConfig(), f.name) for f in dataclasses.fields(PMIConfig)}
        p.update(loop_config_fields(PMIConfig()))
        p.update({"targets_base": 3000, "targets_per_task": 2000,  # 10-task reference counts
                  "cfs": True, "refresh_old": True, "feature_batch": 500})
        f = {f.name: getattr(fm.FeatureModelConfig(), f.name)
             for f in dataclasses.fields(fm.FeatureModelConfig)}
        return {"pmi": p, "feature_model": f}

    def pmi_config(self) -> PMIConfig:
        return PMIConfig(**dataclass_kwargs(PMIConfig, self.cfg.pmi))

    def feature_config(self) -> fm.FeatureModelConfig:
        return fm.FeatureModelConfig(**dataclass_kwargs(fm.FeatureModelConfig, self.cfg.feature_model))

    def validate(self):
        for check in (self.pmi_config, self.feature_config):
            try:
                check().validate()
            except ValueError as e:
                raise ValueError(f"config.method.{e}") from None
        for f in ("targets_base", "feature_batch"):
            if self.cfg.pmi[f] <= 0:
                raise ValueError(f"config.method.pmi.{f}={self.cfg.pmi[f]} must be > 0")
        if self.cfg.pmi.targets_per_task < 0:
            raise ValueError(f"config.method.pmi.targets_per_task={self.cfg.pmi.targets_per_task} "
                             "must be >= 0")

    def num_targets(self, task: int) -> int:
        """Targets inverted after `task` (0-based): base + per_task * (task + 1), rounded up to
        whole micro-batches (so every inversion has the same compiled shapes)."""
        n = self.cfg.pmi.targets_base + self.cfg.pmi.targets_per_task * (task + 1)
        mb = self.cfg.pmi.micro_batch
        return n if n <= mb else -(-n // mb) * mb

    def capacity(self) -> int:
        """Synthetic images kept at most (the count for the last task that replays)."""
        return self.num_targets(max(self.method.num_tasks, 2) - 2)

    def init_extras(self, model, rng, sample_images):
        super().init_extras(model, rng, sample_images)
        self.inverter = PMIInverter(model, self.pmi_config(), self.method.mesh)
        self._features = jax.jit(lambda v, x: model.apply(v, x, method=model.features))
        dim = jax.eval_shape(lambda x: model.init_with_output(rng, x, False, method=model.features)[0],
                             sample_images).shape[-1]
        c = max(self.method.num_classes, 1)
        return {"feature_model": {"mean": jnp.zeros((c, dim)), "std": jnp.zeros((c, dim)),
                                  "encoders": fm.init_encoders(rng, c, dim)},
                "synthetic": {"images": jnp.zeros((self.capacity(), *sample_images.shape[1:])),
                              "labels": jnp.zeros((self.capacity(),), jnp.int32),
                              "count": jnp.zeros((), jnp.int32)}}

    # ------------------------------------------------------------------------ end of a task
    def features(self, variables, images) -> np.ndarray:
        """Penultimate features (eval mode) of normalised images, in batches."""
        b = self.cfg.pmi.feature_batch
        return np.concatenate([np.asarray(self._features(variables, images[i:i + b]))
                               for i in range(0, len(images), b)])

    def fit_classes(self, feature_model, rng, feats, labels, classes) -> dict:
        """PMI Sec. 4: per-class Gaussian and contrastive encoder from (features, labels)."""
        mean, std = fm.class_statistics(feats, labels, classes)
        enc, _ = fm.train_encoders(rng, feats, labels, classes, feats.shape[1], self.feature_config())
        ix = jnp.asarray(classes)
        return {"mean": feature_model["mean"].at[ix].set(mean),
                "std": feature_model["std"].at[ix].set(std),
                "encoders": fm.scatter_encoders(feature_model["encoders"], ix, enc)}

    def end_task(self, run, task, task_data):
        t = run.train
        variables = {"params": t.params, "batch_stats": t.batch_stats}
        key = jax.random.fold_in(jax.random.key(task_data.seed), 2000 + task)
        k_new, k_old, k_labels, k_targets, k_invert = jax.random.split(key, 5)
        n_seen = task_data.n_seen
        n_old = int(task_data.labels[task_data.indices].min())
        feature_model = run.extras["feature_model"]
        # New classes: statistics of the real features (the features themselves are dropped).
        images = np.asarray(task_data.normalize(task_data.images[task_data.indices]))
        feats = self.features(variables, images)
        labels = task_data.labels[task_data.indices]
        feature_model = self.fit_classes(feature_model, k_new, feats, labels,
                                         np.arange(n_old, n_seen))
        del images, feats
        # Old classes: re-estimated from the replayed synthetic images through the new model.
        syn = run.extras["synthetic"]
        count = int(syn["count"])
        if task > 0 and self.cfg.pmi.refresh_old and count:
            sf = self.features(variables, syn["images"][:count])
            sl = np.asarray(syn["labels"][:count])
            classes, counts = np.unique(sl, return_counts=True)
            classes = classes[counts >= 2]  # a class with one replayed image keeps its statistics
            feature_model = self.fit_classes(feature_model, k_old, sf, sl, classes)
        extras = {**run.extras, "feature_model": feature_model}
        if task_data.is_last:
            return extras
        # The next task's synthetic set: CFS targets for every seen class, inverted (Sec. 3.3).
        n = self.num_targets(task)
        target_labels = np.asarray(jax.random.randint(k_labels, (n,), 0, n_seen))
        fmc = self.feature_config()
        z = fm.sample_targets(k_targets, target_labels, feature_model["mean"], feature_model["std"],
                              feature_model["encoders"], fmc, use_cfs=self.cfg.pmi.cfs)
        result = self.inverter.invert(variables, z, images_shape(syn), k_invert,
                                      progress=task_data.progress)
        self.last_result = result
        cap = self.capacity()
        images = jnp.zeros((cap, *images_shape(syn)), jnp.float32).at[:n].set(result.images)
        labels = jnp.zeros((cap,), jnp.int32).at[:n].set(jnp.asarray(target_labels, jnp.int32))
        extras["synthetic"] = {"images": images, "labels": labels,
                               "count": jnp.asarray(n, jnp.int32)}
        return extras

    def batch(self, model, ctx, n):
        """A random batch of the stored synthetic set, labelled by the class of its target."""
        syn = ctx.extras["synthetic"]
        ix = jax.random.randint(jax.random.fold_in(ctx.rng, 7), (n,), 0,
                                jnp.maximum(syn["count"], 1))
        return syn["images"][ix], syn["labels"][ix]


def images_shape(synthetic) -> tuple:
    return tuple(synthetic["images"].shape[1:])


@register
class PMI(RDFCIL):
    """PMI for ResNets: PMI's synthetic data replayed by the R-DFCIL-style learner."""

    name = "pmi"
    default_synthesis = "pmi"
