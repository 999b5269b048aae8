"""BatchNorm that can report the moments of its input, which every inversion loss matches."""

from __future__ import annotations

import jax.numpy as jnp
from flax import linen as nn

# Collection that BatchNorm writes its input moments to when the caller makes it mutable.
BN_STATS = "bn_stats"


class BatchNorm(nn.Module):
    """PyTorch-semantics BatchNorm (momentum 0.1 = Flax 0.9, unbiased running variance).

    Flax's `nn.BatchNorm` cannot report its input moments; inversion needs them, so this module
    computes them once and, when the `bn_stats` collection is mutable, sows
    `(batch_mean, batch_var, running_mean, running_var)` of its input (biased batch variance,
    running statistics as they were before this call).
    """

    momentum: float = 0.9
    epsilon: float = 1e-5
    use_scale: bool = True
    use_bias: bool = True
    scale_init: nn.initializers.Initializer = nn.initializers.ones

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        features = x.shape[-1]
        axes = tuple(range(x.ndim - 1))
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((features,), jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((features,), jnp.float32))
        report = self.is_mutable_collection(BN_STATS) and not self.is_initializing()
        if train or report:
            x32 = x.astype(jnp.float32)
            mean = jnp.mean(x32, axes)
            var = jnp.mean(jnp.square(x32 - mean), axes)
            if report:
                self.sow(BN_STATS, "moments", (mean, var, ra_mean.value, ra_var.value))
        if train:
            if not self.is_initializing():
                n = x.size // features
                unbiased = var * (n / max(n - 1, 1))
                ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
                ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * unbiased
        else:
            mean, var = ra_mean.value, ra_var.value
        y = (x - mean.astype(x.dtype)) * jnp.reciprocal(jnp.sqrt(var + self.epsilon)).astype(x.dtype)
        if self.use_scale:
            y = y * self.param("scale", self.scale_init, (features,), jnp.float32).astype(x.dtype)
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (features,), jnp.float32).astype(x.dtype)
        return y
