"""Tiny-ImageNet (200 classes, 64x64) as a local TFDS builder, prepared from the official archive.

TFDS ships no Tiny-ImageNet builder, so this module defines one, registered as "tiny_imagenet200"
once the module is imported. It reads `tiny-imagenet-200.zip` (http://cs231n.stanford.edu/
tiny-imagenet-200.zip) in place with `zipfile`, hands the JPEG bytes over unchanged (the few
grayscale JPEGs are re-encoded as RGB so every image is 64x64x3), and needs neither TensorFlow nor
network:

    from dfcl_jax.data import tiny_imagenet
    tiny_imagenet.prepare(data_dir)   # expects <data_dir>/downloads/manual/tiny-imagenet-200.zip

Splits: "train" (500 images per class) and "validation" (50 per class, labelled by
val/val_annotations.txt). The archive's test images carry no labels and are not exposed; TFDS split
names must be real, so there is no "test" alias either: train with
`config.data.name="tiny_imagenet200"`, `config.data.split_test="validation"` (and this module
imported, so that TFDS knows the name).

Class count and names. `_info` runs before the archive is seen, so it cannot read wnids.txt. The
number of classes is fixed by the builder config instead: "classes200" (the default, the real
archive) or "classes<N>" for an archive with N wnids (the small generated ones of the tests), made on
demand, e.g. `tfds.builder("tiny_imagenet200/classes3", ...)`. Each config prepares into its own
directory (`<data_dir>/tiny_imagenet200/classes<N>/1.0.0`), so a 3-class stand-in never shadows the
real dataset. Label ids are the positions of the wnids in sorted order. The names themselves are read
from wnids.txt while preparing and set on the ClassLabel then; TFDS stores them next to the dataset
(`label.labels.txt`) and restores them whenever the prepared dataset is opened, so
`builder.info.features["label"].names` is the sorted wnid list afterwards. `wnids(archive)` reads
the same list straight from an archive; an archive whose wnid count differs from the config's is
refused with a message naming the config to use.
"""

from __future__ import annotations

import functools
import io
import os
import re
import zipfile

import numpy as np
import tensorflow_datasets as tfds

NAME = "tiny_imagenet200"
ARCHIVE = "tiny-imagenet-200.zip"
ROOT = "tiny-imagenet-200"
NUM_CLASSES = 200
IMAGE_SHAPE = (64, 64, 3)
GRAYSCALE_INDEX = 0  # write_fake_archive stores train image 0 of the first wnid as grayscale

MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
Download {ARCHIVE} from the official Tiny-ImageNet site (http://cs231n.stanford.edu/{ARCHIVE},
linked from https://www.kaggle.com/c/tiny-imagenet) and place it, unextracted, in
`<data_dir>/downloads/manual/{ARCHIVE}` (or in the `manual_dir` given to
`dfcl_jax.data.tiny_imagenet.prepare` / `tfds.download.DownloadConfig`).
"""


class TinyImagenetConfig(tfds.core.BuilderConfig):
    """A config is a class count: "classes200" for the official archive, "classes<N>" for others."""

    def __init__(self, *, num_classes: int, **kwargs):
        kwargs.setdefault("name", f"classes{num_classes}")
        kwargs.setdefault("description", f"Tiny-ImageNet archive with {num_classes} wnids.")
        super().__init__(**kwargs)
        self.num_classes = int(num_classes)


@functools.cache
def config_for(num_classes: int) -> TinyImagenetConfig:
    """The one config object for `num_classes` (TFDS insists on identity with its own lookup)."""
    if num_classes == NUM_CLASSES:
        return TinyImagenet.BUILDER_CONFIGS[0]
    if num_classes < 1:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    return TinyImagenetConfig(num_classes=num_classes)


class TinyImagenet(tfds.core.GeneratorBasedBuilder):
    """Tiny-ImageNet-200 from the manually downloaded official zip (read in place)."""

    name = NAME
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Train and validation splits read from tiny-imagenet-200.zip."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
    BUILDER_CONFIGS = [TinyImagenetConfig(num_classes=NUM_CLASSES)]
    DEFAULT_BUILDER_CONFIG_NAME = f"classes{NUM_CLASSES}"

    @classmethod
    def get_builder_config(cls, name, version=None):
        """The registered config, or "classes<N>" made on demand for archives with N wnids."""
        config = super().get_builder_config(name, version)
        if config is None and (m := re.fullmatch(r"classes([1-9][0-9]*)", str(name))):
            config = config_for(int(m.group(1)))
        return config

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=IMAGE_SHAPE, encoding_format="jpeg"),
                # names: set from wnids.txt in _split_generators, stored as label.labels.txt
                "label": tfds.features.ClassLabel(num_classes=self.builder_config.num_classes),
                "id": tfds.features.Text(),
            }),
            supervised_keys=("image", "label"),
            homepage="https://www.kaggle.com/c/tiny-imagenet",
        )

    def _split_generators(self, dl_manager):
        archive = _archive_path(dl_manager)
        names = wnids(archive)
        want = self.builder_config.num_classes
        if len(names) != want:
            raise ValueError(f"{archive} lists {len(names)} wnids but config {self.builder_config.name!r} "
                             f"expects {want}: use config 'classes{len(names)}'")
        self.info.features["label"].names = names
        return {"train": self._generate_examples(archive, "train", names),
                "validation": self._generate_examples(archive, "validation", names)}

    def _generate_examples(self, archive: str, split: str, names: list[str]):
        label_of = {w: i for i, w in enumerate(names)}
        with zipfile.ZipFile(archive) as zf:
            for member, wnid in _members(zf, split):
                if wnid not in label_of:
                    raise ValueError(f"{archive}: {member} has wnid {wnid!r} missing from wnids.txt")
                file_name = member.rsplit("/", 1)[-1]
                yield file_name, {"image": _rgb_jpeg(zf.read(member), member),
                                  "label": label_of[wnid], "id": file_name}


def _archive_path(dl_manager) -> str:
    help_ = f"place {ARCHIVE} there. {MANUAL_DOWNLOAD_INSTRUCTIONS}"
    try:
        manual_dir = dl_manager.manual_dir
    except AssertionError as e:  # TFDS: manual dir missing or empty
        raise FileNotFoundError(f"{e}\nTiny-ImageNet: {help_}") from None
    path = os.path.join(os.fspath(manual_dir), ARCHIVE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Tiny-ImageNet archive not found at {path}: {help_}")
    return path


def wnids(archive: str) -> list[str]:
    """The archive's wnids (tiny-imagenet-200/wnids.txt) in sorted order: label i is wnids[i]."""
    with zipfile.ZipFile(archive) as zf:
        text = zf.read(f"{ROOT}/wnids.txt").decode()
    names = sorted({line.strip() for line in text.splitlines() if line.strip()})
    if not names:
        raise ValueError(f"{archive}: {ROOT}/wnids.txt lists no wnids")
    return names


def _members(zf: zipfile.ZipFile, split: str):
    """(member, wnid) for each JPEG of `split`, in archive order."""
    if split == "train":
        pattern = re.compile(rf"{ROOT}/train/([^/]+)/images/[^/]+\.jpe?g", re.IGNORECASE)
        for member in zf.namelist():
            if m := pattern.fullmatch(member):
                yield member, m.group(1)
        return
    annotations = zf.read(f"{ROOT}/val/val_annotations.txt").decode()
    for line in annotations.splitlines():
        if line.strip():
            file_name, wnid = line.split("\t")[:2]
            yield f"{ROOT}/val/images/{file_name.strip()}", wnid.strip()


def _rgb_jpeg(data: bytes, member: str) -> bytes:
    """The JPEG bytes as they are when RGB 64x64; grayscale (or CMYK) images re-encoded as RGB."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        if image.size != IMAGE_SHAPE[:2]:
            raise ValueError(f"{member}: image is {image.size}, expected {IMAGE_SHAPE[:2]}")
        if image.format == "JPEG" and image.mode == "RGB":
            return data
        buf = io.BytesIO()
        image.convert("RGB").save(buf, "JPEG", quality=95)
        return buf.getvalue()


def builder(data_dir: str | None = None, num_classes: int = NUM_CLASSES, **kwargs) -> TinyImagenet:
    """The builder (array_record files) for an archive with `num_classes` wnids."""
    kwargs.setdefault("file_format", "array_record")
    return TinyImagenet(data_dir=data_dir, config=config_for(num_classes), **kwargs)


def prepare(data_dir: str, manual_dir: str | None = None, num_classes: int = NUM_CLASSES) -> TinyImagenet:
    """Prepare the train/validation splits from `<manual_dir>/tiny-imagenet-200.zip` into `data_dir`.

    `manual_dir` defaults to `<data_dir>/downloads/manual`. Returns the prepared builder.
    """
    b = builder(data_dir, num_classes)
    b.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    return b


# ------------------------------------------------------------------------------ fake archive
def class_color(index: int, num_classes: int) -> np.ndarray:
    """The mean RGB colour of class `index` (of the sorted wnids) in write_fake_archive's images."""
    hue = index / max(num_classes, 1)
    k = np.array([0.0, 1 / 3, 2 / 3])
    rgb = 0.5 + 0.35 * np.cos(2 * np.pi * (hue - k))  # distinct, well inside (0, 255)
    return np.round(255 * rgb).astype(np.uint8)


def fake_image(index: int, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """A 64x64x3 uint8 image: class_color(index) plus a zero-mean stripe pattern and noise."""
    h, w, _ = IMAGE_SHAPE
    stripes = 12 * np.sin(2 * np.pi * (index + 1) * np.arange(w) / w)  # class-dependent frequency
    noise = rng.normal(0, 4, (h, w, 3))
    image = class_color(index, num_classes)[None, None, :] + stripes[None, :, None] + noise
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def write_fake_archive(path: str, num_classes: int = 3, train_per_class: int = 4, val_per_class: int = 2,
                       seed: int = 0, test_images: int = 2) -> dict:
    """Write a small zip in the official tiny-imagenet-200.zip layout, for tests.

    Files: tiny-imagenet-200/{wnids.txt, words.txt}, train/<wnid>/<wnid>_boxes.txt,
    train/<wnid>/images/<wnid>_<i>.JPEG, val/val_annotations.txt, val/images/val_<i>.JPEG and
    test/images/test_<i>.JPEG. wnids.txt is written unsorted (as in the real file); images of the
    class at sorted position c look like class_color(c); train image GRAYSCALE_INDEX of the first
    sorted wnid is a grayscale JPEG. Returns {"wnids": sorted wnids, "grayscale": its file name,
    "train"/"validation": {file name: (wnid, image array written, RGB)}}.
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    names = sorted({f"n{n:08d}" for n in rng.choice(10**8, size=num_classes, replace=False)})
    listed = [names[i] for i in rng.permutation(num_classes)]
    out = {"wnids": names, "grayscale": f"{names[0]}_{GRAYSCALE_INDEX}.JPEG", "train": {}, "validation": {}}

    def jpeg(image: np.ndarray, gray: bool = False) -> tuple[bytes, np.ndarray]:
        pil = Image.fromarray(image).convert("L") if gray else Image.fromarray(image)
        buf = io.BytesIO()
        pil.save(buf, "JPEG", quality=95)
        return buf.getvalue(), np.asarray(pil.convert("RGB"))

    def box() -> str:
        x0, y0 = rng.integers(0, 32, 2)
        x1, y1 = rng.integers(32, 64, 2)
        return f"{x0}\t{y0}\t{x1}\t{y1}"

    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        def mkdir(d: str):
            zf.writestr(f"{ROOT}/{d}/" if d else f"{ROOT}/", b"")

        mkdir("")
        zf.writestr(f"{ROOT}/wnids.txt", "".join(f"{w}\n" for w in listed))
        zf.writestr(f"{ROOT}/words.txt",
                    "".join(f"{w}\tthing {w}, object\n" for w in sorted({*names, "n00001740"})))
        mkdir("train")
        for wnid in listed:
            c = names.index(wnid)
            mkdir(f"train/{wnid}")
            mkdir(f"train/{wnid}/images")
            boxes = []
            for i in range(train_per_class):
                file_name = f"{wnid}_{i}.JPEG"
                data, image = jpeg(fake_image(c, num_classes, rng), gray=(c == 0 and i == GRAYSCALE_INDEX))
                zf.writestr(f"{ROOT}/train/{wnid}/images/{file_name}", data)
                boxes.append(f"{file_name}\t{box()}\n")
                out["train"][file_name] = (wnid, image)
            zf.writestr(f"{ROOT}/train/{wnid}/{wnid}_boxes.txt", "".join(boxes))
        mkdir("val")
        mkdir("val/images")
        val_classes = rng.permutation(np.repeat(np.arange(num_classes), val_per_class))
        annotations = []
        for i, c in enumerate(val_classes):
            file_name = f"val_{i}.JPEG"
            data, image = jpeg(fake_image(int(c), num_classes, rng))
            zf.writestr(f"{ROOT}/val/images/{file_name}", data)
            annotations.append(f"{file_name}\t{names[c]}\t{box()}\n")
            out["validation"][file_name] = (names[c], image)
        zf.writestr(f"{ROOT}/val/val_annotations.txt", "".join(annotations))
        mkdir("test")
        mkdir("test/images")
        for i in range(test_images):
            data, _ = jpeg(fake_image(int(rng.integers(num_classes)), num_classes, rng))
            zf.writestr(f"{ROOT}/test/images/test_{i}.JPEG", data)
    return out
