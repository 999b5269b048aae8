"""Coreset baselines (methods.md sec. 6): Naive Rehearsal, LwF + coreset, E2E and BiC.

They are the only learners that keep real images of past tasks (protocols.md sec. 1: "the
explicit, labelled exception"; `data_free = False`, and `experiments.audit` labels them so). All
share one mechanism: a fixed-capacity buffer of `config.method.coreset.size` uint8 images (the
learner's `extras["coreset"]`, checkpointed with the run), refilled at the end of every task with
an equal share per seen class (`size // n_seen`; old classes are trimmed to their first
exemplars, which herding orders by priority), and a batch of coreset images drawn, augmented like
the real batch, and concatenated with it inside the jitted step.

Buffer layout: `images[:count]` are the exemplars replayed in training; `images[count:count +
val_count]` a held-out part (BiC's validation split; empty for the other learners). Within each
part the classes are contiguous and every class's exemplars keep their priority order.
"""

from __future__ import annotations

import functools
import logging
from typing import ClassVar

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from dfcl_jax.methods.base import (
    Method,
    kd_old_classes,
    plain_ce_loss,
    register,
    seen_ce,
    student_forward,
    teacher_forward,
)
from dfcl_jax.methods.rdfcil import class_balanced_ce
from dfcl_jax.models.heads import class_range_mask, mask_logits
from dfcl_jax.train.schedule import Phase, default_phases

SELECTIONS = ("herding", "random")
log = logging.getLogger("dfcl_jax")


# ----------------------------------------------------------------------------- selection
def herding_selection(features: np.ndarray, m: int) -> np.ndarray:
    """iCaRL herding (Rebuffi et al., CVPR 2017, Alg. 4 "ConstructExemplarSet"): indices of `m`
    samples, in priority order, whose running mean of L2-normalised features best approximates
    the class mean: p_k = argmin_x || mu - (phi(x) + sum_{j<k} phi(p_j)) / k || (no repeats)."""
    f = np.asarray(features, np.float64)
    f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    mu = f.mean(axis=0)
    m = min(m, len(f))
    chosen = np.empty(m, np.int64)
    taken = np.zeros(len(f), bool)
    running = np.zeros_like(mu)
    for k in range(m):
        dist = np.linalg.norm(mu[None] - (running[None] + f) / (k + 1), axis=1)
        dist[taken] = np.inf
        i = int(np.argmin(dist))
        chosen[k], taken[i] = i, True
        running += f[i]
    return chosen


def random_selection(n: int, m: int, rng: np.random.Generator) -> np.ndarray:
    """`m` of `n` samples uniformly without replacement (a random order is its priority)."""
    return rng.permutation(n)[:m]


def holdout_count(fraction: float, m: int) -> int:
    """Held-out exemplars of a class with `m` of them: round(fraction * m), at least 1 when
    `fraction` > 0 and the class has 2 or more (and always leaving one to train on)."""
    if fraction <= 0 or m < 2:
        return 0
    return int(min(max(round(fraction * m), 1), m - 1))


def empty_coreset(size: int, image_shape) -> dict:
    return {"images": jnp.zeros((size, *image_shape), jnp.uint8),
            "labels": jnp.zeros((size,), jnp.int32),
            "count": jnp.zeros((), jnp.int32), "val_count": jnp.zeros((), jnp.int32)}


def coreset_by_class(coreset) -> dict[int, np.ndarray]:
    """{class: its exemplars in priority order (training part, then held-out part)}."""
    cs = jax.device_get(coreset)
    n, v = int(cs["count"]), int(cs["val_count"])
    images, labels = np.asarray(cs["images"]), np.asarray(cs["labels"])
    out = {}
    for c in np.unique(labels[:n + v]):
        out[int(c)] = np.concatenate([images[:n][labels[:n] == c],
                                      images[n:n + v][labels[n:n + v] == c]])
    return out


def pack_coreset(per_class: dict[int, np.ndarray], size: int, image_shape,
                 holdout_fraction: float) -> dict:
    """The buffer from per-class exemplar lists: each class's last `holdout_count` exemplars go
    to the held-out part, the rest to the training part."""
    train_x, train_y, val_x, val_y = [], [], [], []
    for c in sorted(per_class):
        ex = per_class[c]
        k = holdout_count(holdout_fraction, len(ex))
        train_x.append(ex[:len(ex) - k])
        val_x.append(ex[len(ex) - k:])
        train_y.append(np.full(len(ex) - k, c, np.int32))
        val_y.append(np.full(k, c, np.int32))
    x = np.concatenate(train_x + val_x) if per_class else np.zeros((0, *image_shape), np.uint8)
    y = np.concatenate(train_y + val_y) if per_class else np.zeros((0,), np.int32)
    if len(x) > size:
        raise AssertionError(f"coreset overflow: {len(x)} > {size}")
    images = np.zeros((size, *image_shape), np.uint8)
    labels = np.zeros((size,), np.int32)
    images[:len(x)], labels[:len(y)] = x, y
    n_train = sum(len(a) for a in train_y)
    return {"images": jnp.asarray(images), "labels": jnp.asarray(labels),
            "count": jnp.asarray(n_train, jnp.int32),
            "val_count": jnp.asarray(len(y) - n_train, jnp.int32)}


def batched_apply(fn, variables, x: np.ndarray, batch: int) -> np.ndarray:
    """`fn(variables, chunk)` over `x` in chunks of exactly `batch` rows (the last one padded),
    so a jitted `fn` compiles once."""
    out = []
    for i in range(0, len(x), batch):
        chunk = x[i:i + batch]
        pad = batch - len(chunk)
        if pad:
            chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), chunk.dtype)])
        out.append(np.asarray(fn(variables, chunk))[:batch - pad])
    return np.concatenate(out)


# ----------------------------------------------------------------------------- the learners
class CoresetMethod(Method):
    """A learner replaying a coreset of stored real images (`config.method.coreset`)."""

    data_free = False
    first_task_loss = "ce"  # task 1 has nothing to replay: plain CE, shareable with `finetune`
    loss_terms: ClassVar[tuple[str, ...]] = ("ce",)

    @classmethod
    def default_config(cls):
        return ml_collections.ConfigDict({"coreset": {
            "size": 2000,  # stored images in all (the references' 2,000)
            "selection": "herding",  # "herding" (iCaRL) or "random", per class
            "batch_size": 0,  # coreset images per step beside the real batch (0: as many)
            "feature_batch": 256,  # batch of the feature forward used by herding
        }})

    def holdout_fraction(self) -> float:
        return 0.0

    def validate(self):
        cs = self.cfg.coreset
        for field in ("size", "batch_size", "feature_batch"):
            v = cs[field]
            if not isinstance(v, int) or isinstance(v, bool):
                raise ValueError(f"config.method.coreset.{field}={v!r} must be an integer")
        if cs.size <= 0:
            raise ValueError(f"config.method.coreset.size={cs.size} must be > 0")
        if cs.batch_size < 0:
            raise ValueError(f"config.method.coreset.batch_size={cs.batch_size} must be >= 0 "
                             "(0: as many as the real batch)")
        if cs.feature_batch <= 0:
            raise ValueError(f"config.method.coreset.feature_batch={cs.feature_batch} must be > 0")
        if cs.selection not in SELECTIONS:
            raise ValueError(f"config.method.coreset.selection={cs.selection!r}; allowed: "
                             f"{', '.join(SELECTIONS)}")

    def bind(self, num_classes, num_tasks, mesh=None):
        super().bind(num_classes, num_tasks, mesh)
        if num_classes and self.cfg.coreset.size < num_classes:
            from dfcl_jax.train.validate import ConfigError

            raise ConfigError(f"config.method.coreset.size={self.cfg.coreset.size} must be >= the "
                              f"{num_classes} classes of the benchmark (one exemplar per class)")

    def init_extras(self, model, rng, sample_images):
        self.image_shape = tuple(sample_images.shape[1:])
        self._features = jax.jit(lambda v, x: model.apply(v, x, False, method=model.features))
        return {"coreset": empty_coreset(self.cfg.coreset.size, self.image_shape)}

    # ------------------------------------------------------------------------ end of a task
    def select_exemplars(self, run, task, task_data) -> dict[int, np.ndarray]:
        """{class: uint8 exemplars in priority order} for every class of the finished task."""
        ix = np.asarray(task_data.indices)
        y = task_data.labels[ix]
        m = self.cfg.coreset.size // task_data.n_seen
        rng = np.random.default_rng([task_data.seed, task, 0xC05E])
        feats = None
        if self.cfg.coreset.selection == "herding":
            t = run.train
            variables = {"params": t.params, "batch_stats": t.batch_stats}
            x = np.asarray(task_data.normalize(task_data.images[ix]))
            feats = batched_apply(self._features, variables, x, self.cfg.coreset.feature_batch)
        out = {}
        for c in np.unique(y):
            members = np.flatnonzero(y == c)
            if feats is None:
                pick = random_selection(len(members), m, rng)
            else:
                pick = herding_selection(feats[members], m)
            out[int(c)] = np.asarray(task_data.images[ix[members[pick]]], np.uint8)
        return out

    def update_coreset(self, run, task, task_data) -> dict:
        """Old classes trimmed to `size // n_seen` exemplars each, the new classes' added."""
        m = self.cfg.coreset.size // task_data.n_seen
        per_class = {c: ex[:m] for c, ex in coreset_by_class(run.extras["coreset"]).items()}
        per_class.update(self.select_exemplars(run, task, task_data))
        return pack_coreset(per_class, self.cfg.coreset.size, self.image_shape,
                            self.holdout_fraction())

    def end_task(self, run, task, task_data):
        return run.replace(extras={**run.extras,
                                   "coreset": self.update_coreset(run, task, task_data)})

    # ------------------------------------------------------------------------ in the step
    def coreset_batch(self, ctx, n: int):
        """`n` coreset images drawn uniformly from the training part, augmented and normalised
        like the real batch, with their labels."""
        if ctx.augment is None:
            raise ValueError("coreset learners need the step's augmentation (StepContext.augment)")
        cs = ctx.extras["coreset"]
        k_ix, k_aug = jax.random.split(jax.random.fold_in(ctx.rng, 0xC05E))
        ix = jax.random.randint(k_ix, (n,), 0, jnp.maximum(cs["count"], 1))
        return ctx.augment(cs["images"][ix], k_aug), cs["labels"][ix]

    def with_coreset(self, images, labels, ctx):
        """The real batch followed by a coreset batch (`coreset.batch_size`, 0: as many)."""
        n = self.cfg.coreset.batch_size or images.shape[0]
        x_c, y_c = self.coreset_batch(ctx, n)
        return jnp.concatenate([images, x_c]), jnp.concatenate([labels, y_c])

    def first_task_loss_fn(self, model, params, batch_stats, images, labels, ctx):
        """Task 1 (the coreset is empty): CE over the seen classes on real data."""
        return plain_ce_loss(model, params, batch_stats, images, labels, ctx, self.loss_terms)


@register
class NaiveRehearsal(CoresetMethod):
    """Naive Rehearsal (the ABD paper's coreset row): CE over the seen classes on real + coreset."""

    name = "naive_rehearsal"

    def loss_fn(self, model, params, batch_stats, images, labels, ctx):
        """CE(seen classes) on the real batch and a coreset batch."""
        x, y = self.with_coreset(images, labels, ctx)
        _, logits, stats = student_forward(model, params, batch_stats, x)
        ce = seen_ce(logits, y, ctx.task.n_seen).mean()
        return ce, (stats, {"ce": ce})


class DistillingCoresetMethod(CoresetMethod):
    """Coreset learners with CE + KD(T) from the frozen previous model on real + coreset."""

    loss_terms = ("ce", "kd")

    @classmethod
    def default_config(cls):
        cfg = super().default_config()
        cfg.temperature = 2.0
        return cfg

    def validate(self):
        super().validate()
        if self.cfg.temperature <= 0:
            raise ValueError(f"config.method.temperature={self.cfg.temperature} must be > 0")

    def ce_kd(self, model, params, batch_stats, images, labels, ctx, logits_fn=None):
        """(labels, student logits, new batch_stats, CE over seen, KD over old) on real+coreset."""
        x, y = self.with_coreset(images, labels, ctx)
        _, logits, stats = student_forward(model, params, batch_stats, x)
        _, t_logits = teacher_forward(model, ctx.teacher, x)
        if logits_fn is not None:
            logits, t_logits = logits_fn(logits), logits_fn(t_logits)
        ce = seen_ce(logits, y, ctx.task.n_seen).mean()
        kd = kd_old_classes(logits, t_logits, ctx.task.n_old, self.cfg.temperature).mean()
        return y, logits, stats, ce, kd


@register
class LwFCoreset(DistillingCoresetMethod):
    """LwF + coreset (Li & Hoiem 2017 with replay; the ABD paper's row): CE + mu * KD(T=2) over
    the old classes, both on real + coreset."""

    name = "lwf_coreset"

    @classmethod
    def default_config(cls):
        cfg = super().default_config()
        cfg.mu = 1.0
        return cfg

    def validate(self):
        super().validate()
        if self.cfg.mu < 0:
            raise ValueError(f"config.method.mu={self.cfg.mu} must be >= 0")

    def loss_fn(self, model, params, batch_stats, images, labels, ctx):
        """CE(seen classes) + mu * KD_T(old classes) on the real batch and a coreset batch."""
        _, _, stats, ce, kd = self.ce_kd(model, params, batch_stats, images, labels, ctx)
        return ce + self.cfg.mu * kd, (stats, {"ce": ce, "kd": kd})


@register
class E2E(DistillingCoresetMethod):
    """End-to-End Incremental Learning (Castro et al., ECCV 2018): CE + KD(T=2) on real + coreset
    (Eq. 1-3), then balanced fine-tuning with a small learning rate (Sec. 3.3)."""

    name = "e2e"

    @classmethod
    def default_config(cls):
        cfg = super().default_config()
        # E2E Sec. 4: 30 epochs of balanced fine-tuning at lr 0.01, /10 every 10 epochs.
        cfg.balanced_epochs = 30
        cfg.balanced_lr = 0.01
        return cfg

    def validate(self):
        super().validate()
        if not isinstance(self.cfg.balanced_epochs, int) or self.cfg.balanced_epochs < 0:
            raise ValueError(f"config.method.balanced_epochs={self.cfg.balanced_epochs!r} must be "
                             "an integer >= 0")
        if self.cfg.balanced_lr <= 0:
            raise ValueError(f"config.method.balanced_lr={self.cfg.balanced_lr} must be > 0")

    def phases(self, train_cfg, task):
        """`config.train`; after the first task, + balanced fine-tuning (lr /10 at 1/3 and 2/3)."""
        phases = default_phases(train_cfg, task, True)
        e = self.cfg.balanced_epochs
        if task == 0 or e == 0:
            return phases
        ms = tuple(sorted({int(round(f * e)) for f in (1 / 3, 2 / 3)} - {0}))
        return phases + [Phase("balanced_ft", e, self.cfg.balanced_lr, ms, 0.1, None,
                               "balanced_ft")]

    def loss_fn(self, model, params, batch_stats, images, labels, ctx):
        """E2E Eq. 3: CE over the seen classes + KD_T over the old classes, real + coreset."""
        _, _, stats, ce, kd = self.ce_kd(model, params, batch_stats, images, labels, ctx)
        return ce + kd, (stats, {"ce": ce, "kd": kd})

    def balanced_ft_loss_fn(self, model, params, batch_stats, images, labels, ctx):
        """E2E Sec. 3.3, balanced fine-tuning: CE weighted 1/count per class in the batch (a
        class-balanced sample of real + coreset) + KD_T over the old classes."""
        y, logits, stats, _, kd = self.ce_kd(model, params, batch_stats, images, labels, ctx)
        ce = class_balanced_ce(logits, y, ctx.task.n_seen)
        return ce + kd, (stats, {"ce": ce, "kd": kd})


@register
class BiC(DistillingCoresetMethod):
    """BiC, Large Scale Incremental Learning (Wu et al., CVPR 2019): lambda * KD + (1 - lambda) *
    CE on real + coreset training parts (Eq. 4, lambda = n_old / n_seen), then a bias-correction
    layer q_k = alpha * o_k + beta on the new classes' logits (Eq. 5) fitted by CE on a held-out,
    class-balanced validation split (Eq. 6)."""

    name = "bic"

    @classmethod
    def default_config(cls):
        cfg = super().default_config()
        cfg.val_fraction = 0.1  # of each class's exemplars held out (and as many per new class)
        cfg.bias_steps = 500  # full-batch Adam steps fitting (alpha, beta)
        cfg.bias_lr = 0.01
        return cfg

    def validate(self):
        super().validate()
        if not 0 < self.cfg.val_fraction < 1:
            raise ValueError(f"config.method.val_fraction={self.cfg.val_fraction} must be in (0, 1)")
        if not isinstance(self.cfg.bias_steps, int) or self.cfg.bias_steps <= 0:
            raise ValueError(f"config.method.bias_steps={self.cfg.bias_steps!r} must be an "
                             "integer > 0")
        if self.cfg.bias_lr <= 0:
            raise ValueError(f"config.method.bias_lr={self.cfg.bias_lr} must be > 0")

    def holdout_fraction(self) -> float:
        return float(self.cfg.val_fraction)

    def init_extras(self, model, rng, sample_images):
        extras = super().init_extras(model, rng, sample_images)
        t = max(self.num_tasks, 1)
        # One (alpha, beta) per task, applied to that task's classes; task 1's stays (1, 0).
        extras["bias"] = {"alpha": jnp.ones((t,), jnp.float32), "beta": jnp.zeros((t,), jnp.float32)}
        self._logits = jax.jit(lambda v, x: model.apply(v, x, False))
        return extras

    # ------------------------------------------------------------------------ the bias layer
    def task_of_class(self, num_classes: int) -> jax.Array:
        return jnp.arange(num_classes) // max(num_classes // max(self.num_tasks, 1), 1)

    def inference_state(self, extras):
        return extras["bias"]

    def inference_logits(self, logits, state):
        """BiC Eq. 5 for every task so far: logits of task i's classes -> alpha_i * o + beta_i."""
        tc = jnp.minimum(self.task_of_class(logits.shape[-1]), state["alpha"].shape[0] - 1)
        return logits * state["alpha"][tc] + state["beta"][tc]

    # ------------------------------------------------------------------------ training
    def training_subset(self, task, indices, labels, seed):
        """Task 2 onward: each new class holds out as many examples as an old class keeps in the
        coreset's validation part (BiC's balanced validation split)."""
        held = self.heldout(task, indices, labels, seed)
        return np.setdiff1d(indices, held, assume_unique=True) if len(held) else indices

    def heldout(self, task, indices, labels, seed) -> np.ndarray:
        if task == 0:
            return np.zeros((0,), indices.dtype)
        n_old = task * (self.num_classes // self.num_tasks)
        k = holdout_count(self.holdout_fraction(), self.cfg.coreset.size // n_old)
        rng = np.random.default_rng([seed, task, 0xB1C])
        y = labels[indices]
        return np.sort(np.concatenate([
            rng.permutation(indices[y == c])[:k] for c in np.unique(y)]))

    def loss_fn(self, model, params, batch_stats, images, labels, ctx):
        """BiC Eq. 4: lambda * KD_T(old) + (1 - lambda) * CE(seen), lambda = n_old / n_seen, on
        bias-corrected logits (earlier tasks' layers, frozen) of real + coreset."""
        bias = ctx.extras["bias"]
        _, _, stats, ce, kd = self.ce_kd(model, params, batch_stats, images, labels, ctx,
                                         lambda z: self.inference_logits(z, bias))
        lam = ctx.task.n_old / ctx.task.n_seen
        return lam * kd + (1.0 - lam) * ce, (stats, {"ce": ce, "kd": kd})

    # ------------------------------------------------------------------------ end of a task
    def validation_split(self, run, task, task_data):
        """(uint8 images, labels): the coreset's held-out exemplars of the old classes and the
        held-out examples of the new ones."""
        cs = jax.device_get(run.extras["coreset"])
        n, v = int(cs["count"]), int(cs["val_count"])
        held = self.heldout(task, np.asarray(task_data.indices), task_data.labels, task_data.seed)
        x = np.concatenate([np.asarray(cs["images"][n:n + v]), task_data.images[held]])
        y = np.concatenate([np.asarray(cs["labels"][n:n + v]), task_data.labels[held]])
        return x, y.astype(np.int32)

    def fit_bias(self, run, task, task_data) -> dict:
        """BiC stage 2: (alpha, beta) of this task's classes minimising CE (Eq. 6) of the
        corrected logits over the seen classes on the validation split; the network is fixed."""
        x, y = self.validation_split(run, task, task_data)
        if len(y) == 0:  # a coreset too small to hold anything out: no correction
            return run.extras["bias"]
        t = run.train
        variables = {"params": t.params, "batch_stats": t.batch_stats}
        logits = batched_apply(self._logits, variables, np.asarray(task_data.normalize(x)),
                               self.cfg.coreset.feature_batch)
        per_task = self.num_classes // self.num_tasks
        alpha, beta = fit_bias_layer(jnp.asarray(logits), jnp.asarray(y), run.extras["bias"],
                                     task, task * per_task, task_data.n_seen,
                                     self.cfg.bias_steps, self.cfg.bias_lr,
                                     self.task_of_class(logits.shape[-1]))
        self.last_bias_fit = {"task": task, "alpha": float(alpha), "beta": float(beta),
                              "val_size": len(y)}
        log.info("BiC task %d: bias layer alpha=%.4f beta=%.4f on %d held-out images", task,
                 float(alpha), float(beta), len(y))
        b = run.extras["bias"]
        return {"alpha": b["alpha"].at[task].set(alpha), "beta": b["beta"].at[task].set(beta)}

    def end_task(self, run, task, task_data):
        extras = dict(run.extras)
        if task > 0:
            extras["bias"] = self.fit_bias(run, task, task_data)
        run = run.replace(extras=extras)
        return run.replace(extras={**extras, "coreset": self.update_coreset(run, task, task_data)})


def fit_bias_layer(logits, labels, bias, task, n_old, n_seen, steps: int, lr: float,
                   task_of_class):
    """(alpha, beta) for task `task`'s classes [n_old, n_seen): full-batch Adam on BiC Eq. 6 (CE
    over the seen classes), earlier tasks' corrections applied and fixed."""
    return _fit_bias_layer(logits, labels, bias, jnp.asarray(task), jnp.asarray(n_old),
                           jnp.asarray(n_seen), task_of_class, steps, lr)


@functools.partial(jax.jit, static_argnums=(7, 8))
def _fit_bias_layer(logits, labels, bias, task, n_old, n_seen, task_of_class, steps, lr):
    new = class_range_mask(logits.shape[-1], n_old, n_seen)
    tc = jnp.minimum(task_of_class, bias["alpha"].shape[0] - 1)
    base = logits * bias["alpha"][tc] + bias["beta"][tc]  # earlier tasks' layers

    def loss(p):
        z = jnp.where(new, p[0] * logits + p[1], base)
        return optax.softmax_cross_entropy_with_integer_labels(mask_logits(z, 0, n_seen),
                                                               labels).mean()

    opt = optax.adam(lr)
    p0 = jnp.stack([bias["alpha"][task], bias["beta"][task]])

    def body(carry, _):
        p, s = carry
        g = jax.grad(loss)(p)
        u, s = opt.update(g, s, p)
        return (optax.apply_updates(p, u), s), None

    (p, _), _ = jax.lax.scan(body, (p0, opt.init(p0)), None, length=steps)
    return p[0], p[1]
