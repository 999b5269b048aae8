"""PMI class-wise feature modelling with contrastive feature selection, "CFS" (methods.md section 4).

Per class: a diagonal Gaussian N(mu_c, sigma_c^2) of the pooled penultimate feature, and a small
contrastive encoder trained on that class's real features. Targets for class c are Gaussian draws
picked round by round to be least cosine-similar (in the encoder's embedding) to those already
accepted, then moment-matched back to (mu_c, sigma_c). Encoders of all classes live in one stacked
pytree (leading axis = class id), trained together with `jax.vmap`. Standard deviations are unbiased
(ddof=1, like torch.std's default).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

STD_EPS = 1e-8  # in the moment re-matching denominator (reference value)


@dataclasses.dataclass(frozen=True)
class FeatureModelConfig:
    """Encoder training and CFS selection hyperparameters (PMI Sec. 4); defaults are the reference's."""

    encoder_epochs: int = 200
    encoder_lr: float = 0.01
    encoder_batch: int = 64
    tau: float = 1.0
    select_fraction: int = 40  # b = max(n // select_fraction, 2)
    candidate_ratio: float = 0.5  # candidates per round = b / candidate_ratio
    # The reference re-matches with x <- (x + (mu - mean_sel)) * sigma / std_sel, whose mean is
    # mu * sigma / std_sel, not mu. Default: the centred form (x - mean_sel) * sigma / std_sel + mu.
    rematch_quirk: bool = False

    def validate(self) -> None:
        for field in dataclasses.fields(self):
            if field.type != "bool" and getattr(self, field.name) <= 0:
                raise ValueError(f"feature_model.{field.name}={getattr(self, field.name)} must be > 0")


_torch_kernel_init = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")  # nn.Linear default


def _torch_bias_init(key, shape, dtype=jnp.float32):
    """nn.Linear's bias init U(+-1/sqrt(fan_in)); fan_in == features for the square d -> d layers."""
    bound = 1.0 / math.sqrt(shape[-1])
    return jax.random.uniform(key, shape, dtype, -bound, bound)


class ContrastiveEncoder(nn.Module):
    """Two [Linear(d,d) + BatchNorm1d + LeakyReLU] layers, L2-normalised output (PMI Sec. 4)."""

    features: int

    @nn.compact
    def __call__(self, x, train: bool, mask=None):
        for _ in range(2):
            x = nn.Dense(self.features, kernel_init=_torch_kernel_init, bias_init=_torch_bias_init)(x)
            x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)(
                x, mask=None if mask is None else mask[:, None])
            x = nn.leaky_relu(x, 0.01)
        norm = jnp.linalg.norm(x, axis=-1, keepdims=True)
        return x / jnp.maximum(norm, 1e-12)  # torch F.normalize


def contrastive_loss(z, tau=1.0, valid=None):
    """mean_i log(mean_j exp(z_i . z_j / tau)) over the valid rows, j including i (PMI Sec. 4)."""
    valid = jnp.ones(z.shape[0], bool) if valid is None else valid
    sim = jnp.where(valid[None, :], z @ z.T / tau, -jnp.inf)
    n = jnp.maximum(valid.sum(), 1)
    per_row = jax.nn.logsumexp(sim, axis=1) - jnp.log(n)
    return jnp.sum(jnp.where(valid, per_row, 0.0)) / n


def class_statistics(features, labels, classes):
    """Per-class mean and unbiased per-dimension std of `features`, rows in `classes` order (PMI Sec. 4)."""
    x = jnp.asarray(features, jnp.float32)
    onehot = (jnp.asarray(labels)[None, :] == jnp.asarray(classes)[:, None]).astype(jnp.float32)
    count = onehot.sum(axis=1, keepdims=True)
    mean = onehot @ x / jnp.maximum(count, 1.0)
    sq = jnp.einsum("kn,knd->kd", onehot, jnp.square(x[None] - mean[:, None]))
    return mean, jnp.sqrt(sq / jnp.maximum(count - 1.0, 1.0))  # < 2 examples: std 0


def init_encoders(rng, num_classes, dim):
    """Stacked {"params", "batch_stats"} of `num_classes` fresh encoders, axis 0 = class (PMI Sec. 4)."""
    model = ContrastiveEncoder(dim)
    init = lambda key: model.init(key, jnp.zeros((2, dim), jnp.float32), train=False)
    return jax.vmap(init)(jax.random.split(rng, num_classes))


@functools.partial(jax.jit, static_argnames=("cfg", "batch"))
def _train_padded(rng, x, counts, cfg, batch):
    """vmapped over classes: x (K, n_max, d) padded rows, counts (K,) valid rows per class."""
    n_max, dim = x.shape[1:]
    steps = -(-n_max // batch)
    model, tx = ContrastiveEncoder(dim), optax.adam(cfg.encoder_lr)

    def train_one(key, xc, count):
        k_init, k_epochs = jax.random.split(key)
        variables = model.init(k_init, jnp.zeros((2, dim), jnp.float32), train=False)
        state = (variables["params"], variables["batch_stats"], tx.init(variables["params"]))

        def step(state, idx_mask):
            params, stats, opt = state
            idx, mask = idx_mask

            def loss_fn(p):
                z, upd = model.apply({"params": p, "batch_stats": stats}, xc[idx], train=True, mask=mask,
                                     mutable=["batch_stats"])
                return contrastive_loss(z, cfg.tau, mask), upd["batch_stats"]

            (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
            updates, new_opt = tx.update(grads, opt, params)
            new = (optax.apply_updates(params, updates), new_stats, new_opt)
            keep = mask.any()  # an all-padding batch (class smaller than n_max) is skipped entirely
            return jax.tree.map(lambda a, b: jnp.where(keep, a, b), new, state), (loss, keep)

        def epoch(carry, key):
            state, best_vars, best_loss = carry
            # This class's own permutation of its valid rows (padding sorts last), cut into batches.
            order = jnp.argsort(jnp.where(jnp.arange(n_max) < count, jax.random.uniform(key, (n_max,)), 2.0))
            idx = jnp.pad(order, (0, steps * batch - n_max)).reshape(steps, batch)
            mask = (jnp.arange(steps * batch) < count).reshape(steps, batch)
            state, (losses, kept) = jax.lax.scan(step, state, (idx, mask))
            loss = jnp.where(kept.any(), jnp.sum(losses * kept) / jnp.maximum(kept.sum(), 1), jnp.inf)
            better = loss < best_loss
            vars_now = {"params": state[0], "batch_stats": state[1]}
            best_vars = jax.tree.map(lambda a, b: jnp.where(better, a, b), vars_now, best_vars)
            return (state, best_vars, jnp.minimum(loss, best_loss)), None

        keys = jax.random.split(k_epochs, cfg.encoder_epochs)
        (_, best_vars, best_loss), _ = jax.lax.scan(epoch, (state, variables, jnp.inf), keys)
        return best_vars, best_loss

    return jax.vmap(train_one)(jax.random.split(rng, x.shape[0]), x, counts)


def train_encoders(rng, features, labels, classes, dim, cfg):
    """One contrastive encoder per class in `classes`, all at once, each at its best epoch (PMI Sec. 4)."""
    cfg.validate()
    features, labels = np.asarray(features, np.float32), np.asarray(labels)
    if features.ndim != 2 or features.shape[1] != dim:
        raise ValueError(f"features must be (N, {dim}); got {features.shape}")
    rows = [features[labels == c] for c in np.asarray(classes).tolist()]
    counts = np.array([len(r) for r in rows], np.int32)
    if counts.min() == 0:
        raise ValueError(f"no features for classes {np.asarray(classes)[counts == 0].tolist()}")
    n_max = int(counts.max())
    x = np.stack([np.pad(r, ((0, n_max - len(r)), (0, 0))) for r in rows])
    return _train_padded(rng, jnp.asarray(x), jnp.asarray(counts), cfg, min(cfg.encoder_batch, n_max))


def scatter_encoders(all_vars, class_ids, new_vars):
    """Write rows `class_ids` of the stacked encoder variables (PMI Sec. 4)."""
    ids = jnp.asarray(class_ids)
    return jax.tree.map(lambda a, b: a.at[ids].set(b), all_vars, new_vars)


def _rematch(x, mean, std, count=None, quirk: bool = False):
    """Moment re-matching of the selection to (mu, sigma) over its first `count` rows (PMI Sec. 4)."""
    count = x.shape[0] if count is None else count
    valid = (jnp.arange(x.shape[0]) < count)[:, None]
    m = jnp.sum(jnp.where(valid, x, 0.0), axis=0) / jnp.maximum(count, 1)
    s = jnp.sqrt(jnp.sum(jnp.where(valid, jnp.square(x - m), 0.0), axis=0) / jnp.maximum(count - 1, 1))
    scale = std / (s + STD_EPS)
    matched = (x + (mean - m)) * scale if quirk else (x - m) * scale + mean
    return jnp.where(count >= 2, matched, x)  # one sample: left as drawn


def _cfs_raw(rng, mean, std, encoder_vars, n, cfg):
    """CFS selection before moment re-matching: (n, d) rows in acceptance order."""
    if n < 1:
        raise ValueError(f"cfs_select needs n >= 1; got {n}")
    b = max(n // cfg.select_fraction, 2)
    cands, rounds = int(b / cfg.candidate_ratio), max(-(-(n - b) // b), 0)
    if cands < b:
        raise ValueError(f"feature_model.candidate_ratio={cfg.candidate_ratio} must be <= 1")
    embed = lambda x: ContrastiveEncoder(mean.shape[0]).apply(encoder_vars, x, train=False)
    draw = lambda key, k: mean + std * jax.random.normal(key, (k, mean.shape[0]), mean.dtype)
    size = b * (rounds + 1)
    k0, k_rounds = jax.random.split(rng)
    first = draw(k0, b)
    xs = jnp.zeros((size, mean.shape[0]), mean.dtype).at[:b].set(first)
    zs = jnp.zeros_like(xs).at[:b].set(embed(first))

    def round_(r, carry):
        xs, zs = carry
        accepted = b * (r + 1)
        cand = draw(jax.random.fold_in(k_rounds, r), cands)
        zc = embed(cand)
        sim = jnp.where(jnp.arange(size)[None, :] < accepted, zc @ zs.T, 0.0).sum(axis=1) / accepted
        _, pick = jax.lax.top_k(-sim, b)  # the b least similar, least similar first
        xs = jax.lax.dynamic_update_slice(xs, cand[pick], (accepted, 0))
        return xs, jax.lax.dynamic_update_slice(zs, zc[pick], (accepted, 0))

    xs, _ = jax.lax.fori_loop(0, rounds, round_, (xs, zs))
    return xs[:n]


def cfs_select(rng, mean, std, encoder_vars, n, cfg):
    """n contrastively selected targets of one class, moment-matched to (mean, std) (PMI Sec. 4)."""
    return _rematch(_cfs_raw(rng, mean, std, encoder_vars, n, cfg), mean, std, quirk=cfg.rematch_quirk)


def sample_targets(rng, labels, means, stds, encoders, cfg, use_cfs=True, *, classes=None, max_count=None):
    """Feature targets for `labels`, CFS-selected per class (or plain Gaussian) (PMI Sec. 4).

    `classes` (the distinct ids) and `max_count` (>= every class's count) default to values read from
    concrete `labels`; under jit with traced labels pass `max_count` (and `classes`, else all table rows).
    """
    labels = jnp.asarray(labels)
    if not use_cfs:
        noise = jax.random.normal(rng, (labels.shape[0], means.shape[1]), means.dtype)
        return means[labels] + stds[labels] * noise
    concrete = not isinstance(labels, jax.core.Tracer)
    if classes is None:
        classes = np.unique(np.asarray(labels)) if concrete else np.arange(means.shape[0])
    classes = np.sort(np.asarray(classes))
    if max_count is None:
        if not concrete:
            raise ValueError("sample_targets under jit with traced labels needs a static max_count")
        max_count = int(np.bincount(np.asarray(labels)).max())
    cls = jnp.asarray(classes)
    sel = jax.vmap(functools.partial(_cfs_raw, n=max_count, cfg=cfg))(
        jax.random.split(rng, len(classes)), means[cls], stds[cls], jax.tree.map(lambda a: a[cls], encoders))
    counts = jnp.sum(labels[None, :] == cls[:, None], axis=1)
    rematch = functools.partial(_rematch, quirk=cfg.rematch_quirk)
    sel = jax.vmap(rematch)(sel, means[cls], stds[cls], counts)
    # Position i takes row `rank_i` (its order among equal labels) of its class's selection.
    order = jnp.argsort(labels, stable=True)
    sorted_labels = labels[order]
    rank_sorted = jnp.arange(labels.shape[0]) - jnp.searchsorted(sorted_labels, sorted_labels, side="left")
    rank = jnp.zeros_like(labels).at[order].set(rank_sorted)
    return sel[jnp.searchsorted(cls, labels), rank]
