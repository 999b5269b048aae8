"""Generated stand-in data in a dataset's real on-disk format, for smoke runs and tests.

Each class gets a smooth random template; samples are shifted, noisy copies, so a small network
learns them in a few steps while old classes are still forgotten without replay.
"""

from __future__ import annotations

import os

import numpy as np

from dfcl_jax.data import idx


def class_images(labels: np.ndarray, shape: tuple[int, int, int], num_classes: int,
                 seed: int = 0, noise_seed: int = 1) -> np.ndarray:
    """uint8 images (N, H, W, C) whose content depends on the label (templates from `seed`)."""
    h, w, c = shape
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 1, (num_classes, 4, 4, c))
    templates = np.kron(coarse, np.ones((1, (h + 3) // 4, (w + 3) // 4, 1)))[:, :h, :w, :]
    sample_rng = np.random.default_rng(noise_seed)
    images = templates[labels]
    shifts = sample_rng.integers(-2, 3, (len(labels), 2))
    images = np.stack([np.roll(img, tuple(s), axis=(0, 1)) for img, s in zip(images, shifts)])
    images = 0.7 * images + 0.3 * sample_rng.uniform(0, 1, images.shape)
    return (255 * images).astype(np.uint8)


def balanced_labels(num_classes: int, per_class: int, seed: int) -> np.ndarray:
    labels = np.repeat(np.arange(num_classes), per_class)
    return np.random.default_rng(seed).permutation(labels).astype(np.uint8)


def write_idx_dataset(directory: str, num_classes: int = 10, image_hw: int = 28,
                      train_per_class: int = 60, test_per_class: int = 20, seed: int = 0) -> str:
    """MNIST-format stand-in: gzipped IDX files as in Debian's dataset-fashion-mnist."""
    os.makedirs(directory, exist_ok=True)
    for split, per_class, offset in (("train", train_per_class, 0), ("test", test_per_class, 7)):
        labels = balanced_labels(num_classes, per_class, seed + offset)
        images = class_images(labels, (image_hw, image_hw, 1), num_classes, seed,
                              noise_seed=seed + offset + 1)[..., 0]
        image_stem, label_stem = idx.IDX_FILES[split]
        idx.write_idx(os.path.join(directory, image_stem + ".gz"), images)
        idx.write_idx(os.path.join(directory, label_stem + ".gz"), labels)
    return directory
