"""ABD generator inversion (methods.md 3.2): train a generator so that a frozen classifier sees
its images as confident, diverse and BatchNorm-consistent."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax

from dfcl_jax.inversion import losses
from dfcl_jax.inversion.chunked import ChunkedLoop
from dfcl_jax.inversion.loop_defaults import with_loop_defaults
from dfcl_jax.models.blocks import apply_with_bn_moments
from dfcl_jax.models.generator import Generator
from dfcl_jax.train.mesh import constrain_batch, replicated


@dataclasses.dataclass(frozen=True)
class GeneratorConfig:
    """ABD reference values: batch 128, Adam 1e-3, 10,000 steps per task."""

    steps: int = 10_000
    batch_size: int = 128
    lr: float = 1e-3
    content: float = 1.0
    content_temperature: float = 1000.0
    diversity: float = 1.0
    bn: float = 50.0
    smoothness: float = 1e-3
    chunk: int | str = "auto"  # steps per jitted call; "auto": CPU 10, GPU/TPU 50 (loop_defaults)
    unroll: bool | str = "auto"  # unroll each chunk; "auto": on CPU only


def abd_generator_loss(gen: Generator, classifier, gen_vars, teacher_vars, z, n_seen,
                       cfg: GeneratorConfig):
    """ABD inversion loss: content(T) + diversity (Eq. 1) + 50 BN-KL ("kl_abd") + 1e-3 smoothness."""
    images, gen_state = gen.apply(gen_vars, z, True, mutable=["batch_stats"])
    logits, moments = apply_with_bn_moments(classifier, teacher_vars, images)
    terms = {"content": losses.content_loss(logits, n_seen, cfg.content_temperature),
             "diversity": losses.diversity_loss(logits, n_seen),
             "bn": losses.bn_kl_abd(moments),
             "smoothness": losses.smoothness_prior(images)}
    total = (cfg.content * terms["content"] + cfg.diversity * terms["diversity"]
             + cfg.bn * terms["bn"] + cfg.smoothness * terms["smoothness"])
    return total, (gen_state["batch_stats"], terms)


class GeneratorTrainer:
    """Trains an ABD generator against a frozen classifier; built once, reused after every task."""

    def __init__(self, gen: Generator, classifier, cfg: GeneratorConfig, mesh=None):
        """`mesh`: generator batches are laid along its "data" axis (each device makes and
        scores its share; BatchNorm statistics stay those of the global batch)."""
        cfg = with_loop_defaults(cfg, field="generator")
        self.gen, self.classifier, self.cfg, self.mesh = gen, classifier, cfg, mesh
        self.tx = optax.adam(cfg.lr)
        grad = jax.value_and_grad(
            lambda p, stats, *a: abd_generator_loss(gen, classifier, {"params": p,
                                                                      "batch_stats": stats},
                                                    *a, cfg), has_aux=True)

        def step(carry, i, teacher_vars, n_seen, rng):
            params, stats, opt_state = carry
            z = constrain_batch(jax.random.normal(jax.random.fold_in(rng, i),
                                                  (cfg.batch_size, gen.z_dim)), mesh)
            (loss, (stats, terms)), g = grad(params, stats, teacher_vars, z, n_seen)
            updates, opt_state = self.tx.update(g, opt_state, params)
            return (optax.apply_updates(params, updates), stats, opt_state), {"loss": loss, **terms}

        self.loop = ChunkedLoop(step, cfg.chunk, cfg.unroll)

    def init(self, rng) -> dict:
        """Generator variables and Adam state (persist across tasks: warm start)."""
        v = self.gen.init(rng, jnp.zeros((2, self.gen.z_dim)), False)
        return {"params": v["params"], "batch_stats": v["batch_stats"],
                "opt_state": self.tx.init(v["params"])}

    def train(self, state: dict, teacher_vars: Any, n_seen, rng, steps: int | None = None,
              progress: bool = True) -> tuple[dict, dict]:
        """Run `steps` generator steps against `teacher_vars`; returns (state, loss history)."""
        carry = (state["params"], state["batch_stats"], state["opt_state"])
        carry, history = self.loop.run(carry, steps or self.cfg.steps,
                                       (teacher_vars, jnp.asarray(n_seen, jnp.int32), rng),
                                       progress=progress, desc="ABD generator",
                                       carry_sharding=None if self.mesh is None else replicated(self.mesh))
        return dict(zip(("params", "batch_stats", "opt_state"), carry)), history

    def sample(self, state: dict, rng, n: int):
        """Images from the generator's running statistics (eval mode)."""
        z = constrain_batch(jax.random.normal(rng, (n, self.gen.z_dim)), self.mesh)
        return self.gen.apply({"params": state["params"], "batch_stats": state["batch_stats"]},
                              z, False)
