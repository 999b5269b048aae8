"""TFDS datasets read with `tfds.data_source` (array_record, no TensorFlow), and stand-ins for them.

Preparing the standard image datasets (cifar100, ...) needs TensorFlow and network once:
`pip install -e .[tfds-prepare]`, then
`python -c "import tensorflow_datasets as tfds; tfds.builder('cifar100',
file_format='array_record').download_and_prepare()"`.
Reading them back here needs neither.
"""

from __future__ import annotations

import io
import os
from unittest import mock

import numpy as np

from dfcl_jax.data.sources import DataError, ImageDataset, stand_in_dir
from dfcl_jax.data.stand_in import balanced_labels, class_images

PREPARE_HELP = ("prepare it once on a machine with network: `pip install -e .[tfds-prepare]` and "
                "`python -c \"import tensorflow_datasets as tfds; tfds.builder('{name}', "
                "data_dir={data_dir!r}, file_format='array_record').download_and_prepare()\"` "
                "(manual-download datasets such as imagenet2012 need their archives in "
                "<data_dir>/downloads/manual first), or run with config.data.stand_in='generated'")


def _builder(name: str, data_dir: str | None):
    import tensorflow_datasets as tfds

    from dfcl_jax.data import tiny_imagenet  # noqa: F401  (registers "tiny_imagenet200")

    try:
        return tfds.builder(name, data_dir=data_dir, file_format="array_record")
    except Exception as e:  # DatasetNotFoundError and friends
        raise DataError(f"config.data.name={name!r} is not a TFDS dataset: {e}") from None


def check_prepared(cfg, data_dir: str | None = None):
    """The builder of config.data.name, or DataError saying how to prepare the dataset."""
    builder = _builder(cfg.name, data_dir or cfg.data_dir or None)
    missing = [s for s in (cfg.split_train, cfg.split_test) if s not in builder.info.splits]
    if missing:
        where = builder.data_dir
        raise DataError(f"TFDS dataset {cfg.name!r} has no prepared split(s) {missing} in {where} "
                        f"(config.data.data_dir={cfg.data_dir!r}); "
                        + PREPARE_HELP.format(name=cfg.name, data_dir=cfg.data_dir or None))
    return builder


def load(cfg) -> ImageDataset:
    """Read config.data.name's train/test splits into uint8 arrays (resized to image_size)."""
    data_dir = None
    if cfg.stand_in == "generated":
        data_dir = stand_in_dir(cfg)
        write_stand_in(cfg.name, data_dir, image_size=cfg.image_size)
    builder = check_prepared(cfg, data_dir)
    label = builder.info.features["label"]
    train_x, train_y = _read_split(builder, cfg.split_train, cfg.image_size)
    test_x, test_y = _read_split(builder, cfg.split_test, cfg.image_size)
    names = tuple(label.names) if getattr(label, "names", None) else None
    return ImageDataset(cfg.name, train_x, train_y, test_x, test_y, label.num_classes, names)


def _read_split(builder, split: str, image_size: int, chunk: int = 4096):
    source = builder.as_data_source(split=split)
    images, labels = [], []
    for start in range(0, len(source), chunk):
        for ex in source.__getitems__(list(range(start, min(start + chunk, len(source))))):
            images.append(_to_size(np.asarray(ex["image"]), image_size))
            labels.append(int(ex["label"]))
    return np.stack(images), np.asarray(labels, np.int32)


def _to_size(image: np.ndarray, size: int) -> np.ndarray:
    """Images of another size are resized (bilinear) to `size` x `size`."""
    if image.ndim == 2:
        image = image[..., None]
    if size <= 0 or image.shape[:2] == (size, size):
        return image
    from PIL import Image

    pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
    out = np.asarray(pil.resize((size, size), Image.BILINEAR))
    return out[..., None] if out.ndim == 2 else out


# ------------------------------------------------------------------------------- stand-ins
def write_stand_in(name: str, data_dir: str, image_size: int = 32, train_per_class: int = 20,
                   test_per_class: int = 5, seed: int = 0) -> None:
    """Prepare TFDS's own builder for `name` on generated images: the real features, files and
    reader, with no download and no TensorFlow (images are handed over PNG-encoded)."""
    import tensorflow_datasets as tfds

    builder = _builder(name, data_dir)
    if builder.info.splits and "train" in builder.info.splits:
        return
    features = builder.info.features
    num_classes = features["label"].num_classes
    shape = features["image"].shape
    hw = (shape[0] or image_size, shape[1] or image_size, shape[2] or 3)

    def examples(split, per_class, offset):
        labels = balanced_labels(num_classes, per_class, seed + offset)
        images = class_images(labels, hw, num_classes, seed, noise_seed=seed + offset + 1)
        for i, (img, lab) in enumerate(zip(images, labels)):
            yield f"{split}_{i}", _example(features, img, int(lab), f"{split}_{i}")

    def split_generators(self, dl_manager):
        return {"train": examples("train", train_per_class, 0),
                "test": examples("test", test_per_class, 7)}

    os.makedirs(data_dir, exist_ok=True)
    with mock.patch.object(type(builder), "_split_generators", split_generators):
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
            download_mode=tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS))


def _example(features, image: np.ndarray, label: int, key: str) -> dict:
    import tensorflow_datasets as tfds
    from PIL import Image

    out = {}
    for field, feature in features.items():
        if isinstance(feature, tfds.features.Image):
            buf = io.BytesIO()
            Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buf, "PNG")
            out[field] = buf.getvalue()
        elif isinstance(feature, tfds.features.ClassLabel):
            out[field] = label % feature.num_classes if field == "label" else 0
        elif isinstance(feature, tfds.features.Text):
            out[field] = key
        else:
            raise DataError(f"no stand-in for feature {field!r} ({type(feature).__name__})")
    return out
