"""`invert()`: synthetic inputs from any frozen classifier, usable from a notebook.

    from dfcl_jax.inversion import invert
    result = invert(model, variables, labels=jnp.arange(16) % 10, image_shape=(32, 32, 3))

`model` is a Flax module whose BatchNorms are `dfcl_jax.models.batchnorm.BatchNorm` (every
backbone here, or any user model built with it), or a plain function `images -> (logits,
[BNMoments])` for models that report their BatchNorm statistics another way.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
from flax import linen as nn

from dfcl_jax.inversion.deepinversion import DeepInversionConfig, InversionResult, TeacherFn, deepinversion
from dfcl_jax.models.blocks import apply_with_bn_moments

ENGINES: dict[str, tuple[type, Callable]] = {
    "deepinversion": (DeepInversionConfig, deepinversion),
}


def as_teacher_fn(model, variables=None) -> TeacherFn:
    """A frozen (eval-mode) `images -> (logits, BNMoments)` function for `model`."""
    if isinstance(model, nn.Module):
        if variables is None:
            raise ValueError("invert(model=<flax module>) needs its `variables`")
        return lambda x: apply_with_bn_moments(model, variables, x)
    if callable(model):
        return model
    raise TypeError(f"cannot invert a {type(model).__name__}: pass a Flax module or a function "
                    "images -> (logits, [BNMoments])")


def invert(model, variables=None, *, labels, image_shape, engine: str = "deepinversion",
           config=None, rng=None, n_seen=None, progress: bool = True, **overrides
           ) -> InversionResult:
    """Synthesise one input per target label with `engine`; `overrides` patch the engine config."""
    if engine not in ENGINES:
        raise ValueError(f"engine={engine!r}; allowed: {', '.join(ENGINES)}")
    config_cls, run = ENGINES[engine]
    config = dataclasses.replace(config or config_cls(), **overrides)
    rng = jax.random.key(0) if rng is None else rng
    return run(as_teacher_fn(model, variables), labels, tuple(image_shape), rng, config,
               n_seen=n_seen, progress=progress)
