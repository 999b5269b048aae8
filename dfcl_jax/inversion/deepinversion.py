"""DeepInversion (Yin et al., CVPR 2020): optimise a batch of images against a frozen classifier.

The optimisation runs in jitted chunks of `chunk` Adam steps (a `lax.scan`); the carry stays on
device between chunks and the host reads the loss curve once per chunk (progress bar).

Measured on XLA:CPU (2 cores, ResNet-32 teacher, batch 128): a rolled `lax.scan`/`fori_loop`
(an XLA while loop) runs the step at ~3.2 s, the same scan fully unrolled at ~0.38 s. Hence
unrolled chunks of 10 steps on CPU; on GPU/TPU rolled chunks of 50 steps are the cheaper compile.
`unroll` and `chunk` default to "auto", resolved per backend in `loop_defaults`.
`python -m benchmarks.inversion_step` measures both.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dfcl_jax.inversion import losses
from dfcl_jax.inversion.chunked import ChunkedLoop
from dfcl_jax.inversion.loop_defaults import resolve_loop_options, with_loop_defaults

# A frozen classifier as inversion sees it: images -> (logits, BNMoments of every BN input).
TeacherFn = Callable[[jax.Array], tuple[jax.Array, list]]


@dataclasses.dataclass(frozen=True)
class DeepInversionConfig:
    """DeepInversion hyperparameters; defaults are the CIFAR recipe (methods.md 3.1)."""

    steps: int = 2000
    lr: float = 0.1
    b1: float = 0.9
    b2: float = 0.999
    warmup_steps: int = 0  # linear warm-up (ImageNet: 100)
    cosine: bool = False  # cosine decay after warm-up (ImageNet recipe)
    ce: float = 1.0  # class-conditional CE to the target labels
    r_feature: float = 10.0  # BN-statistics matching weight
    bn_loss: str = "l2_di"
    first_bn_scale: float = 1.0  # DeepInversion ImageNet: 10
    tv: float = 2.5e-5
    l2: float = 0.0
    jitter: int = 2  # random roll of +-jitter pixels (ImageNet: 30)
    flip: bool = False  # random horizontal flip (ImageNet)
    clip: tuple[float, float] | None = None  # clamp pixels (normalised space) after each step
    keep_best: bool = True
    chunk: int | str = "auto"  # steps per jitted call (progress granularity); "auto": CPU 10, else 50
    unroll: bool | str = "auto"  # unroll each chunk's scan; "auto": on CPU only (loop_defaults)

    def validate(self) -> None:
        resolve_loop_options(self.unroll, self.chunk, field="deepinversion")
        for field in ("steps", "lr"):
            if getattr(self, field) <= 0:
                raise ValueError(f"deepinversion.{field}={getattr(self, field)} must be > 0")
        if self.bn_loss not in losses.BN_MATCHINGS:
            raise ValueError(f"deepinversion.bn_loss={self.bn_loss!r}; allowed: "
                             f"{', '.join(losses.BN_MATCHINGS)}")


class InversionResult(NamedTuple):
    images: jax.Array  # the best (or last) iterate, normalised image space
    loss: float  # total loss of the returned images
    curve: np.ndarray  # total loss at every step
    terms: dict  # loss terms at the last step


def learning_rate_schedule(cfg: DeepInversionConfig) -> optax.Schedule:
    if not cfg.warmup_steps and not cfg.cosine:
        return optax.constant_schedule(cfg.lr)
    decay = (optax.cosine_decay_schedule(cfg.lr, max(cfg.steps - cfg.warmup_steps, 1))
             if cfg.cosine else optax.constant_schedule(cfg.lr))
    if not cfg.warmup_steps:
        return decay
    warm = optax.linear_schedule(cfg.lr / cfg.warmup_steps, cfg.lr, cfg.warmup_steps)
    return optax.join_schedules([warm, decay], [cfg.warmup_steps])


def jitter_and_flip(x: jax.Array, rng: jax.Array, jitter: int, flip: bool) -> jax.Array:
    """DeepInversion's augmentation: one random roll (and flip) for the whole batch."""
    k_roll, k_flip = jax.random.split(rng)
    if jitter:
        dx, dy = jax.random.randint(k_roll, (2,), -jitter, jitter + 1)
        x = jnp.roll(x, (dx, dy), axis=(1, 2))
    if flip:
        x = jnp.where(jax.random.bernoulli(k_flip), x[:, :, ::-1], x)
    return x


def deepinversion_loss(teacher_fn: TeacherFn, cfg: DeepInversionConfig, x, labels, n_seen, rng):
    """DeepInversion objective: CE(y) + r_feature * R_BN + tv * R_TV + l2 * R_l2 on jittered x."""
    logits, moments = teacher_fn(jitter_and_flip(x, rng, cfg.jitter, cfg.flip))
    bn_kw = {"first_layer_scale": cfg.first_bn_scale} if cfg.bn_loss == "l2_di" else {}
    terms = {"ce": losses.class_conditional_ce(logits, labels, n_seen),
             "bn": losses.bn_matching(cfg.bn_loss, moments, **bn_kw),
             "tv": losses.total_variation(x), "l2": losses.pixel_l2(x)}
    total = (cfg.ce * terms["ce"] + cfg.r_feature * terms["bn"] + cfg.tv * terms["tv"]
             + cfg.l2 * terms["l2"])
    return total, terms


def make_deepinversion_loop(teacher_fn: TeacherFn, cfg: DeepInversionConfig):
    """The optimiser and a ChunkedLoop of Adam steps on the images (keep-best in the carry)."""
    cfg = with_loop_defaults(cfg, field="deepinversion")
    tx = optax.adam(learning_rate_schedule(cfg), b1=cfg.b1, b2=cfg.b2)
    grad_fn = jax.value_and_grad(lambda x, *a: deepinversion_loss(teacher_fn, cfg, x, *a),
                                 has_aux=True)

    def one_step(carry, i, labels, n_seen, rng):
        x, opt_state, best_x, best_loss = carry
        (loss, terms), g = grad_fn(x, labels, n_seen, jax.random.fold_in(rng, i))
        if cfg.keep_best:
            better = loss < best_loss
            best_x = jnp.where(better, x, best_x)
            best_loss = jnp.where(better, loss, best_loss)
        else:
            best_x, best_loss = x, loss
        updates, opt_state = tx.update(g, opt_state, x)
        x = optax.apply_updates(x, updates)
        if cfg.clip is not None:
            x = jnp.clip(x, *cfg.clip)
        return (x, opt_state, best_x, best_loss), {"loss": loss, **terms}

    return tx, ChunkedLoop(one_step, cfg.chunk, cfg.unroll)


def deepinversion(teacher_fn: TeacherFn, labels, image_shape, rng, cfg: DeepInversionConfig,
                  n_seen=None, progress: bool = True) -> InversionResult:
    """Synthesise one image per label by DeepInversion; returns the best iterate and its curve."""
    cfg.validate()
    labels = jnp.asarray(labels, jnp.int32)
    k_init, k_steps = jax.random.split(rng)
    x = jax.random.normal(k_init, (labels.shape[0], *image_shape), jnp.float32)
    if n_seen is None:
        n_seen = jax.eval_shape(teacher_fn, x)[0].shape[-1]
    n_seen = jnp.asarray(n_seen, jnp.int32)
    tx, loop = make_deepinversion_loop(teacher_fn, cfg)
    carry = (x, tx.init(x), jnp.copy(x), jnp.asarray(jnp.inf))
    carry, history = loop.run(carry, cfg.steps, (labels, n_seen, k_steps), progress=progress,
                              desc="DeepInversion")
    x, _, best_x, best_loss = carry
    if cfg.keep_best:
        # The iterate after the last update has not been scored yet: score it once.
        last, _ = deepinversion_loss(teacher_fn, cfg, x, labels, n_seen,
                                     jax.random.fold_in(k_steps, cfg.steps))
        x = jnp.where(last < best_loss, x, best_x)
        best_loss = jnp.minimum(last, best_loss)
    terms = {k: float(v[-1]) for k, v in history.items() if k != "loss"}
    return InversionResult(x, float(best_loss), history["loss"], terms)
