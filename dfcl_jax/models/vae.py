"""A small convolutional VAE: the generator of deep generative replay (DGR)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn


class ConvVAE(nn.Module):
    """conv(4, /2) x2 -> z (Gaussian) -> dense -> conv-transpose(4, x2) x2; images normalised NHWC."""

    image_size: int = 32
    channels: int = 3
    z_dim: int = 64
    width: int = 32

    def setup(self):
        s = self.image_size // 4
        self.enc = [nn.Conv(self.width, (4, 4), 2, name="enc_0"),
                    nn.Conv(2 * self.width, (4, 4), 2, name="enc_1")]
        self.to_stats = nn.Dense(2 * self.z_dim, name="enc_stats")
        self.from_z = nn.Dense(2 * self.width * s * s, name="dec_in")
        self.dec = [nn.ConvTranspose(self.width, (4, 4), (2, 2), name="dec_0"),
                    nn.ConvTranspose(self.channels, (4, 4), (2, 2), name="dec_1")]

    def encode(self, x):
        for conv in self.enc:
            x = nn.relu(conv(x))
        mean, log_var = jnp.split(self.to_stats(x.reshape(x.shape[0], -1)), 2, axis=-1)
        return mean, log_var

    def decode(self, z):
        s = self.image_size // 4
        x = nn.relu(self.from_z(z)).reshape(z.shape[0], s, s, 2 * self.width)
        return self.dec[1](nn.relu(self.dec[0](x)))

    def __call__(self, x, rng):
        mean, log_var = self.encode(x)
        z = mean + jnp.exp(0.5 * log_var) * jax.random.normal(rng, mean.shape)
        return self.decode(z), mean, log_var


def vae_loss(recon, x, mean, log_var):
    """Per-sample negative ELBO: squared error + KL(q(z|x) || N(0, I))."""
    rec = jnp.sum(jnp.square(recon - x), axis=(1, 2, 3))
    kl = -0.5 * jnp.sum(1 + log_var - jnp.square(mean) - jnp.exp(log_var), axis=-1)
    return rec + kl
