"""PMI on CLIP (methods.md 3.3 CLIP variant, 5 and 6): a mixture-of-adapters learner over a
frozen CLIP ViT, replaying PMI-inverted token maps (the patch-embedding output), optionally
learning the last task's classes from semantic-aware projected pseudo-data alone ("open world").

After each task but the last, while the task's real data is readable, the `clip_pmi` source keeps
(through the frozen pretrained encoder, i.e. the adapters switched off):
- per class of the task, a diagonal Gaussian of L2-normalised image features;
- per residual attention block, the per-channel mean/var of its input over images and tokens
  (merged with the earlier tasks' by class count), in the model's `input_stats` (batch_stats);
then samples `samples_per_class` targets per seen class from the Gaussians (plus, in open-world
mode before the last task, `projection.per_class` projected targets per class of the last task)
and inverts them down to the token map (per block, the first inverted block progressively
2 -> 4 -> 8 -> 14, then the full model with TV on the token map). Nothing per-sample of real data
outlives the task. Replay runs `blocks[1:]` on the stored tokens.

Loss (R-DFCIL scaling alpha = log2(n_new/2 + 1), beta = sqrt(n_old/n_new)):
`local_ce * (1+1/alpha)/beta * CE(current classes; real, + projected tokens in open-world mode)
 + l1_kd * alpha*beta * L1(old-class logits on synthetic tokens vs the teacher's)
 + text_kd * alpha*beta * (1 - cos(student, teacher image features on synthetic tokens))
 + ft_ce * (1+1/alpha)/beta * CE(all seen classes; real + synthetic)`.
The image features live in CLIP's joint space, so matching them keeps their similarities to every
text prototype ("text-feature KD"). Only adapter/router parameters train (the model labels every
other parameter `frozen`: `optax.set_to_zero`).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dfcl_jax.inversion.loop_defaults import loop_config_fields
from dfcl_jax.inversion.pmi import PMIConfig, PMIInverter
from dfcl_jax.inversion.projection import ProjectionConfig, project_classes
from dfcl_jax.methods.base import register, require_positive
from dfcl_jax.methods.rdfcil import l1_logit_kd, rdfcil_factors
from dfcl_jax.methods.replay import ReplayMethod, SyntheticSource, dataclass_kwargs, register_source
from dfcl_jax.models.clip import l2_normalize, pretrained_variables
from dfcl_jax.models.heads import mask_logits

# PMI's CLIP inversion constants (methods.md 3.3, CLIP variant).
CLIP_PMI = PMIConfig(
    block_steps=200, block_lr=0.1, first_block=1, first_block_steps=1200,
    progressive=(2, 4, 8), progressive_at=(300, 600, 900), rf_per_block=0.002,
    rf_scale_by_blocks=False, input_prior=False, full_steps=600, full_lr=0.01,
    full_schedule="cosine", full_cosine_steps=2000, full_warmup=0, full_milestones=(),
    full_bn=0.002, full_tv=0.005, micro_batch=100)


@register_source
class CLIPPMISource(SyntheticSource):
    """PMI token maps for CLIP (`config.method.clip_inversion`, `config.method.projection`)."""

    name = "clip_pmi"
    space = "tokens"

    @classmethod
    def default_config(cls):
        p = {f.name: getattr(CLIP_PMI, f.name) for f in dataclasses.fields(PMIConfig)}
        p.update(loop_config_fields(CLIP_PMI))
        p.update({"samples_per_class": 5, "feature_batch": 256, "openworld": False})
        proj = {f.name: getattr(ProjectionConfig(), f.name)
                for f in dataclasses.fields(ProjectionConfig)}
        return {"clip_inversion": p, "projection": proj}

    def pmi_config(self) -> PMIConfig:
        return PMIConfig(**dataclass_kwargs(PMIConfig, self.cfg.clip_inversion))

    def projection_config(self) -> ProjectionConfig:
        return ProjectionConfig(**dataclass_kwargs(ProjectionConfig, self.cfg.projection))

    def validate(self):
        for sub, check in (("clip_inversion", self.pmi_config),
                           ("projection", self.projection_config)):
            try:
                check().validate()
            except ValueError as e:  # "pmi.block_lr=0 must be > 0" -> config.method.<sub>.block_lr
                raise ValueError(f"config.method.{sub}.{str(e).partition('.')[2]}") from None
        ci = self.cfg.clip_inversion
        for f in ("samples_per_class", "feature_batch"):
            if ci[f] <= 0:
                raise ValueError(f"config.method.clip_inversion.{f}={ci[f]} must be > 0")
        if ci.first_block != 1:
            raise ValueError(f"config.method.clip_inversion.first_block={ci.first_block}; "
                             "allowed: 1 (CLIP inverts down to the patch-embedding token map)")

    # ---------------------------------------------------------------------------- extras
    def classes_per_task(self) -> int:
        return self.method.num_classes // max(self.method.num_tasks, 1)

    def projected_count(self) -> int:
        ci = self.cfg.clip_inversion
        return self.projection_config().per_class * self.classes_per_task() if ci.openworld else 0

    def capacity(self) -> int:
        """Synthetic token maps kept at most: every class's samples (+ the projected ones)."""
        ci = self.cfg.clip_inversion
        return ci.samples_per_class * self.method.num_classes + self.projected_count()

    def init_extras(self, model, rng, sample_images):
        super().init_extras(model, rng, sample_images)
        self.inverter = PMIInverter(model, self.pmi_config(), self.method.mesh)
        L = len(model.blocks)
        self.L = L

        def stats(variables, x):
            """Normalised features and, per block 1..L-2, the mean of its input and its square."""
            h = model.apply(variables, x, 0, 1, False, method=model.run_blocks)
            moments = []
            for i in range(1, L - 1):
                axes = tuple(range(h.ndim - 1))
                moments.append((jnp.mean(h, axes), jnp.mean(jnp.square(h), axes)))
                h = model.apply(variables, h, i, i + 1, False, method=model.run_blocks)
            f = model.apply(variables, h, L - 1, method=model.features_from)
            return f, moments

        self._stats = jax.jit(stats)
        vc = model.blocks[0].config
        grid = vc.image_size // vc.patch_size
        self.token_shape = (grid, grid, vc.hidden_size)  # the patch-embedding output
        dim = model.projection_dim
        c, cap = max(self.method.num_classes, 1), self.capacity()
        return {"classes": {"mean": jnp.zeros((c, dim)), "std": jnp.zeros((c, dim))},
                "synthetic": {"tokens": jnp.zeros((cap, *self.token_shape)),
                              "labels": jnp.zeros((cap,), jnp.int32),
                              "count": jnp.zeros((), jnp.int32)},
                "openworld": jnp.zeros((), jnp.float32)}

    # ------------------------------------------------------------------------ end of a task
    def real_statistics(self, frozen, task_data):
        """Features of the task's real images and the moments of every block input (frozen
        pretrained encoder); only class Gaussians and channel moments leave this function."""
        b = self.cfg.clip_inversion.feature_batch
        idx = task_data.indices
        feats, sums, n = [], None, 0
        for s in range(0, len(idx), b):
            x = np.asarray(task_data.normalize(task_data.images[idx[s:s + b]]))
            f, moments = self._stats(frozen, x)
            feats.append(np.asarray(f))
            m = [(np.asarray(a) * len(x), np.asarray(q) * len(x)) for a, q in moments]
            sums = m if sums is None else [(a + a2, q + q2) for (a, q), (a2, q2) in zip(sums, m)]
            n += len(x)
        return np.concatenate(feats), [(a / n, q / n) for a, q in sums]

    def end_task(self, run, task, task_data):
        """Returns (extras, batch_stats): the next task's synthetic tokens and the reference
        statistics. After the last task nothing is needed (its data is not read)."""
        t = run.train
        if task_data.is_last:
            return run.extras, t.batch_stats
        ci = self.cfg.clip_inversion
        key = jax.random.fold_in(jax.random.key(task_data.seed), 3000 + task)
        k_targets, k_proj, k_invert = jax.random.split(key, 3)
        n_seen = task_data.n_seen
        n_old = n_seen - self.classes_per_task()
        variables = {"params": t.params, "batch_stats": t.batch_stats}
        feats, moments = self.real_statistics(pretrained_variables(variables), task_data)
        labels = task_data.labels[task_data.indices]
        mean = np.asarray(run.extras["classes"]["mean"]).copy()
        std = np.asarray(run.extras["classes"]["std"]).copy()
        for c in range(n_old, n_seen):
            fc = feats[labels == c]
            mean[c], std[c] = fc.mean(0), fc.std(0)
        del feats
        stats = merge_input_statistics(t.batch_stats, moments, (n_seen - n_old) / n_seen)
        variables = pretrained_variables({"params": t.params, "batch_stats": stats})
        # Targets: Gaussian samples for every seen class (+ projected for the last task).
        y = np.repeat(np.arange(n_seen), ci.samples_per_class)
        eps = np.asarray(jax.random.normal(k_targets, (len(y), mean.shape[1])))
        z = l2_normalize(jnp.asarray(mean[y] + std[y] * eps))
        openworld = ci.openworld and task == self.method.num_tasks - 2
        if openworld:
            protos = t.params["text_head"]["prototypes"]
            new = np.arange(n_seen, n_seen + self.classes_per_task())
            zp, yp = project_classes(k_proj, new, protos, jnp.asarray(mean), jnp.asarray(std),
                                     jnp.arange(mean.shape[0]) < n_seen, self.projection_config())
            z, y = jnp.concatenate([z, zp]), np.concatenate([y, np.asarray(yp)])
        n = len(y)
        rows = self.inverter.cfg.micro_batch
        padded = -(-n // rows) * rows  # whole micro-batches: the same shapes after every task
        zpad = z[jnp.arange(padded) % n]
        result = self.inverter.invert(variables, zpad, self.token_shape, k_invert,
                                      progress=task_data.progress)
        self.last_result = result
        cap = self.capacity()
        tokens = jnp.zeros((cap, *self.token_shape)).at[:n].set(result.images[:n])
        extras = {"classes": {"mean": jnp.asarray(mean), "std": jnp.asarray(std)},
                  "synthetic": {"tokens": tokens,
                                "labels": jnp.zeros((cap,), jnp.int32).at[:n].set(jnp.asarray(y)),
                                "count": jnp.asarray(n, jnp.int32)},
                  "openworld": jnp.asarray(float(openworld), jnp.float32)}
        return extras, stats

    def batch(self, model, ctx, n):
        """A random batch of the stored synthetic token maps and their classes."""
        syn = ctx.extras["synthetic"]
        ix = jax.random.randint(jax.random.fold_in(ctx.rng, 7), (n,), 0,
                                jnp.maximum(syn["count"], 1))
        return syn["tokens"][ix], syn["labels"][ix]


def merge_input_statistics(batch_stats, moments, weight: float):
    """Reference input statistics after a task: (1 - w) * previous + w * this task's, for the
    mean and the second moment (w = the task's share of the seen classes)."""
    stats = jax.tree.map(lambda a: a, batch_stats)
    for i, (m, q) in enumerate(moments, start=1):
        ref = stats[f"blocks_{i}"]["input_stats"]
        prev_q = np.asarray(ref["var"]) + np.square(np.asarray(ref["mean"]))
        mean = (1 - weight) * np.asarray(ref["mean"]) + weight * m
        second = (1 - weight) * prev_q + weight * q
        var = np.maximum(second - np.square(mean), 1e-8)
        stats[f"blocks_{i}"] = {**stats[f"blocks_{i}"],
                                "input_stats": {"mean": jnp.asarray(mean, jnp.float32),
                                                "var": jnp.asarray(var, jnp.float32)}}
    return stats


def weighted_ce(logits, labels, weights):
    """sum_i w_i CE_i / max(sum_i w_i, 1)."""
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return jnp.sum(weights * ce) / jnp.maximum(jnp.sum(weights), 1.0)


def text_feature_kd(student, teacher):
    """1 - cos(student, teacher) of image features in CLIP's joint text-image space."""
    return jnp.mean(1.0 - jnp.sum(l2_normalize(student) * jax.lax.stop_gradient(teacher), -1))


@register
class CLIPPMI(ReplayMethod):
    """Mixture-of-adapters CLIP learner replaying PMI token maps (`config.method.name=clip_pmi`)."""

    name = "clip_pmi"
    default_synthesis = "clip_pmi"
    synthetic_space = "tokens"
    loss_terms = ("local_ce", "l1_kd", "text_kd", "ft_ce")
    first_task_term = "local_ce"

    @classmethod
    def default_config(cls):
        cfg = super().default_config()
        cfg.local_ce = 0.75  # x (1 + 1/alpha) / beta
        cfg.l1_kd = 0.15  # x alpha * beta
        cfg.text_kd = 0.5  # x alpha * beta
        cfg.ft_ce = 1.5  # x (1 + 1/alpha) / beta
        return cfg

    def validate(self):
        super().validate()
        require_positive(self.cfg, "local_ce", "l1_kd", "text_kd", "ft_ce", allow_zero=True)

    def end_task(self, run, task, task_data):
        extras, stats = self.source.end_task(run, task, task_data)
        return run.replace(extras=extras, train=run.train.replace(batch_stats=stats))

    def loss_fn(self, model, params, batch_stats, images, labels, ctx):
        """PMI CLIP recipe: local CE + L1 logit KD + text-feature KD + FT-CE (R-DFCIL scaling);
        in open-world mode the real images get weight 0 (the task learns from pseudo-data)."""
        c, n_old, n_seen = self.cfg, ctx.task.n_old, ctx.task.n_seen
        alpha, beta = rdfcil_factors(n_old, n_seen - n_old)
        v = {"params": params, "batch_stats": batch_stats}
        tokens = model.apply(v, images, 0, 1, False, method=model.run_blocks)  # frozen block 0
        x_syn, y_syn = self.synthetic_batch(model, ctx, images.shape[0])
        x, y = jnp.concatenate([tokens, x_syn]), jnp.concatenate([labels, y_syn])
        f = model.apply(v, x, 1, True, method=model.features_from)
        logits = model.apply(v, f, method=model.classify)
        t_f = jax.lax.stop_gradient(model.apply(ctx.teacher, x_syn, 1, method=model.features_from))
        t_logits = jax.lax.stop_gradient(model.apply(ctx.teacher, t_f, method=model.classify))
        b = images.shape[0]
        real_w = jnp.full((b,), 1.0) * (1.0 - ctx.extras["openworld"])
        current = mask_logits(logits, n_old, n_seen)
        terms = {
            "local_ce": weighted_ce(current, y, jnp.concatenate(
                [real_w, (y_syn >= n_old).astype(jnp.float32)])),
            "l1_kd": l1_logit_kd(logits[b:], t_logits, n_old),
            "text_kd": text_feature_kd(f[b:], t_f),
            "ft_ce": weighted_ce(mask_logits(logits, 0, n_seen), y,
                                 jnp.concatenate([real_w, jnp.ones((b,))])),
        }
        w_ce = (1.0 + 1.0 / alpha) / beta
        total = (c.local_ce * w_ce * terms["local_ce"] + c.l1_kd * alpha * beta * terms["l1_kd"]
                 + c.text_kd * alpha * beta * terms["text_kd"] + c.ft_ce * w_ce * terms["ft_ce"])
        return total, (batch_stats, terms)
