"""Reader for the MNIST IDX file format (MNIST, Fashion-MNIST, KMNIST, ...), gzipped or plain."""

from __future__ import annotations

import gzip
import os

import numpy as np

IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def find_idx_file(directory: str, stem: str) -> str:
    """Path of `stem` or `stem.gz` in `directory`; FileNotFoundError naming both if neither exists."""
    for candidate in (stem + ".gz", stem):
        path = os.path.join(directory, candidate)
        if os.path.exists(path):
            return path
    raise FileNotFoundError(f"neither {stem}.gz nor {stem} found in {directory}")


def read_idx(path: str) -> np.ndarray:
    """Decode one IDX file (magic: two zero bytes, a dtype code, the number of dimensions)."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number {raw[:4]!r})")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=_DTYPES[raw[2]], offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says shape {shape} but holds {data.size} values")
    return data.reshape(shape)


def load_idx_split(directory: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, H, W, 1) uint8 and labels (N,) int32 of one split of an IDX dataset directory."""
    image_stem, label_stem = IDX_FILES[split]
    images = read_idx(find_idx_file(directory, image_stem))
    labels = read_idx(find_idx_file(directory, label_stem)).astype(np.int32)
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{directory} {split}: {images.shape[0]} images but {labels.shape[0]} labels")
    if images.ndim == 3:
        images = images[..., None]
    return np.ascontiguousarray(images), labels


def write_idx(path: str, array: np.ndarray) -> None:
    """Write `array` (uint8) as an IDX file, gzipped when `path` ends in .gz (for tests and stand-ins)."""
    array = np.asarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(header + array.tobytes())
