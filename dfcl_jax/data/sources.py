"""Dataset sources (offline IDX directories, TFDS) producing in-memory uint8 image arrays."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from dfcl_jax.data import idx


class DataError(ValueError):
    """Missing or malformed data, with the way to get it."""


@dataclass
class ImageDataset:
    """Train/test uint8 NHWC images with their original class ids."""

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    num_classes: int
    class_names: tuple[str, ...] | None = None

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_images.shape[1:])


def fit_to_size(images: np.ndarray, size: int) -> np.ndarray:
    """Zero-pad smaller images to `size` x `size` (28x28 -> 32x32 for CIFAR ResNets, centred)."""
    h, w = images.shape[1:3]
    if (h, w) == (size, size) or size <= 0:
        return images
    if h > size or w > size:
        raise DataError(f"images are {h}x{w}, larger than config.data.image_size={size}")
    top, left = (size - h) // 2, (size - w) // 2
    pad = ((0, 0), (top, size - h - top), (left, size - w - left), (0, 0))
    return np.pad(images, pad)


# --------------------------------------------------------------------------------------- IDX
IDX_HELP = ("Fashion-MNIST: `apt-get install -y dataset-fashion-mnist` (files land in "
            "/usr/share/datasets/fashion-mnist), or set config.data.data_dir to a directory holding "
            "train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz] "
            "and t10k-labels-idx1-ubyte[.gz] (MNIST, KMNIST, ... work the same way)")


def check_idx_dir(data_dir: str) -> None:
    """Fail early, naming config.data.data_dir and how to get the files, if anything is missing."""
    if not os.path.isdir(data_dir):
        raise DataError(f"config.data.data_dir={data_dir!r} does not exist. {IDX_HELP}")
    for split in ("train", "test"):
        for stem in idx.IDX_FILES[split]:
            try:
                idx.find_idx_file(data_dir, stem)
            except FileNotFoundError as e:
                raise DataError(f"config.data.data_dir={data_dir!r}: {e}. {IDX_HELP}") from None


def stand_in_dir(cfg) -> str:
    """Where generated stand-in files for `cfg.name` are written (deterministic content)."""
    return os.path.join(tempfile.gettempdir(), "dfcl_jax_stand_in", f"{cfg.source}_{cfg.name}")


def load_idx(cfg) -> ImageDataset:
    """Any MNIST-format dataset; number of classes and image size are read from the files."""
    data_dir = cfg.data_dir
    if cfg.stand_in == "generated":
        from dfcl_jax.data.stand_in import write_idx_dataset

        data_dir = write_idx_dataset(stand_in_dir(cfg), num_classes=cfg.num_classes or 10)
    check_idx_dir(data_dir)
    train_x, train_y = idx.load_idx_split(data_dir, "train")
    test_x, test_y = idx.load_idx_split(data_dir, "test")
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    return ImageDataset(cfg.name, fit_to_size(train_x, cfg.image_size), train_y,
                        fit_to_size(test_x, cfg.image_size), test_y, num_classes)


# -------------------------------------------------------------------------------------- TFDS
def load_tfds(cfg) -> ImageDataset:
    """A prepared TFDS dataset read with `tfds.data_source` (array_record; no TensorFlow needed)."""
    from dfcl_jax.data import tfds_source

    return tfds_source.load(cfg)


SOURCES: dict[str, Callable[..., ImageDataset]] = {"idx": load_idx, "tfds": load_tfds}


def load_dataset(data_cfg) -> ImageDataset:
    """Load `config.data` through its source (generated stand-ins go through the same reader)."""
    if data_cfg.source not in SOURCES:
        raise DataError(f"config.data.source={data_cfg.source!r}; allowed: {', '.join(SOURCES)}")
    return SOURCES[data_cfg.source](data_cfg)
