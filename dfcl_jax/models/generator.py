"""ABD's image generator (methods.md 3.2): z -> image in the classifier's normalised input space."""

from __future__ import annotations

import jax.numpy as jnp
from flax import linen as nn

from dfcl_jax.models.batchnorm import BatchNorm
from dfcl_jax.models.conv import Conv

_lecun = nn.initializers.lecun_normal()  # nn.Conv's default kernel init


def upsample_nearest(x, factor: int = 2):
    return jnp.repeat(jnp.repeat(x, factor, axis=1), factor, axis=2)


class Generator(nn.Module):
    """Linear(z -> 128 x s x s) - BN - [up x2 - conv3x3 - BN - LeakyReLU(0.2)] x n - conv3x3 - tanh
    - BN(no affine), with s = image_size / 2^n.

    32x32 (CIFAR) and 64x64 (Tiny-ImageNet): n = 2 up-sampling stages (128 -> 128 -> 64 channels),
    ~8.4 M parameters at 32x32 with z_dim 1000. 224x224: n = 5 (s = 7). `bn_eps_quirk=True` keeps the
    reference's eps=0.8 in the hidden BatchNorms (a positional argument meant as momentum).
    """

    image_size: int = 32
    channels: int = 3
    z_dim: int = 1000
    width: int = 128
    bn_eps_quirk: bool = True
    conv_impl: str | None = None  # see dfcl_jax.models.conv

    @property
    def stages(self) -> int:
        return 5 if self.image_size >= 224 else 2

    @nn.compact
    def __call__(self, z, train: bool = False):
        s = self.image_size // 2**self.stages
        eps = 0.8 if self.bn_eps_quirk else 1e-5
        x = nn.Dense(self.width * s * s, name="fc")(z).reshape(z.shape[0], s, s, self.width)
        x = BatchNorm(name="bn_in")(x, train)
        for i in range(self.stages):
            out = self.width // 2 if i == self.stages - 1 else self.width
            x = Conv(out, 3, use_bias=True, impl=self.conv_impl, kernel_init=_lecun,
                     name=f"conv_{i}")(upsample_nearest(x))
            x = nn.leaky_relu(BatchNorm(epsilon=eps, name=f"bn_{i}")(x, train), 0.2)
        x = jnp.tanh(Conv(self.channels, 3, use_bias=True, impl=self.conv_impl, kernel_init=_lecun,
                         name="conv_out")(x))
        return BatchNorm(use_scale=False, use_bias=False, name="bn_out")(x, train)
