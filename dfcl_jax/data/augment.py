"""On-device augmentation and normalisation, run inside the jitted steps (methods.md section 6)."""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp


@dataclass(frozen=True)
class Augmentation:
    """RandomCrop(pad), HFlip, ColorJitter(brightness, contrast), then normalisation."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_padding: int = 4
    hflip: bool = True
    brightness: float = 63 / 255
    contrast: float = 0.8

    def normalize(self, images_uint8: jnp.ndarray) -> jnp.ndarray:
        """uint8 NHWC -> float32 normalised with the dataset's mean/std."""
        x = images_uint8.astype(jnp.float32) / 255.0
        return (x - jnp.asarray(self.mean, jnp.float32)) / jnp.asarray(self.std, jnp.float32)

    def denormalize(self, x: jnp.ndarray) -> jnp.ndarray:
        """Normalised images -> [0, 1] (for image grids)."""
        return jnp.clip(x * jnp.asarray(self.std) + jnp.asarray(self.mean), 0.0, 1.0)

    def __call__(self, images_uint8: jnp.ndarray, rng: jax.Array) -> jnp.ndarray:
        """Augment a uint8 batch and normalise it."""
        x = images_uint8.astype(jnp.float32) / 255.0
        k_crop, k_flip, k_b, k_c = jax.random.split(rng, 4)
        if self.crop_padding:
            x = random_crop(x, k_crop, self.crop_padding)
        if self.hflip:
            flip = jax.random.bernoulli(k_flip, 0.5, (x.shape[0], 1, 1, 1))
            x = jnp.where(flip, x[:, :, ::-1, :], x)
        if self.brightness or self.contrast:
            x = color_jitter(x, k_b, k_c, self.brightness, self.contrast)
        return (x - jnp.asarray(self.mean, jnp.float32)) / jnp.asarray(self.std, jnp.float32)


def random_crop(x: jnp.ndarray, rng: jax.Array, padding: int) -> jnp.ndarray:
    """torchvision RandomCrop(size, padding): zero-pad, then crop a random window per image."""
    n, h, w, _ = x.shape
    padded = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    offsets = jax.random.randint(rng, (n, 2), 0, 2 * padding + 1)

    def crop(img, off):
        return jax.lax.dynamic_slice(img, (off[0], off[1], 0), (h, w, img.shape[-1]))

    return jax.vmap(crop)(padded, offsets)


def color_jitter(x, k_brightness, k_contrast, brightness: float, contrast: float):
    """torchvision ColorJitter(brightness, contrast) on [0, 1] images (fixed order: b then c)."""
    n = x.shape[0]
    if brightness:
        f = jax.random.uniform(k_brightness, (n, 1, 1, 1), minval=max(0.0, 1 - brightness),
                               maxval=1 + brightness)
        x = jnp.clip(x * f, 0.0, 1.0)
    if contrast:
        f = jax.random.uniform(k_contrast, (n, 1, 1, 1), minval=max(0.0, 1 - contrast),
                               maxval=1 + contrast)
        gray = _grayscale(x).mean(axis=(1, 2, 3), keepdims=True)
        x = jnp.clip(f * x + (1 - f) * gray, 0.0, 1.0)
    return x


def _grayscale(x):
    if x.shape[-1] == 3:
        return (0.299 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2])[..., None]
    return x
