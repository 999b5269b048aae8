"""The local Tiny-ImageNet TFDS builder, prepared from small generated archives in the official layout."""

import io
import os
import zipfile

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from dfcl_jax.data import tfds_source
from dfcl_jax.data import tiny_imagenet as ti

TRAIN_PER_CLASS, VAL_PER_CLASS, NUM_CLASSES = 4, 2, 3


def _manual_archive(data_dir, **kwargs) -> dict:
    manual = os.path.join(data_dir, "downloads", "manual")
    os.makedirs(manual, exist_ok=True)
    return ti.write_fake_archive(os.path.join(manual, ti.ARCHIVE), **kwargs)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("tiny_imagenet"))
    fake = _manual_archive(data_dir, num_classes=NUM_CLASSES, train_per_class=TRAIN_PER_CLASS,
                           val_per_class=VAL_PER_CLASS)
    builder = ti.prepare(data_dir, num_classes=NUM_CLASSES)
    return data_dir, fake, builder


def _examples(source) -> list[dict]:
    return [source[i] for i in range(len(source))]


def test_fake_archive_has_the_official_layout(prepared):
    data_dir, fake, _ = prepared
    with zipfile.ZipFile(os.path.join(data_dir, "downloads", "manual", ti.ARCHIVE)) as zf:
        names = set(zf.namelist())
        listed = zf.read("tiny-imagenet-200/wnids.txt").decode().split()
        gray = zf.read(f"tiny-imagenet-200/train/{fake['wnids'][0]}/images/{fake['grayscale']}")
        annotation = zf.read("tiny-imagenet-200/val/val_annotations.txt").decode().splitlines()[0]
    assert sorted(listed) == fake["wnids"] == ti.wnids(zf.filename) and len(listed) == NUM_CLASSES
    for wnid in listed:
        assert f"tiny-imagenet-200/train/{wnid}/{wnid}_boxes.txt" in names
        assert f"tiny-imagenet-200/train/{wnid}/images/{wnid}_{TRAIN_PER_CLASS - 1}.JPEG" in names
    assert {"tiny-imagenet-200/words.txt", "tiny-imagenet-200/val/images/val_0.JPEG",
            "tiny-imagenet-200/test/images/test_0.JPEG"} <= names
    assert len(annotation.split("\t")) == 6 and annotation.startswith("val_")
    assert Image.open(io.BytesIO(gray)).mode == "L"


@pytest.mark.parametrize("split, per_class", [("train", TRAIN_PER_CLASS), ("validation", VAL_PER_CLASS)])
def test_splits_read_back_with_sorted_wnid_labels_and_class_pixels(prepared, split, per_class):
    data_dir, fake, builder = prepared
    assert builder.info.splits[split].num_examples == NUM_CLASSES * per_class
    examples = _examples(builder.as_data_source(split=split))
    assert len(examples) == NUM_CLASSES * per_class
    assert {ex["id"].decode() for ex in examples} == set(fake[split])
    for ex in examples:
        wnid, written = fake[split][ex["id"].decode()]
        label = int(ex["label"])
        assert label == fake["wnids"].index(wnid)
        image = np.asarray(ex["image"])
        assert image.shape == (64, 64, 3) and image.dtype == np.uint8
        # JPEG is lossy: compare channel means with the image written and with the class colour.
        means = image.reshape(-1, 3).mean(0)
        np.testing.assert_allclose(means, written.reshape(-1, 3).mean(0), atol=3)
        if ex["id"].decode() != fake["grayscale"]:
            np.testing.assert_allclose(means, ti.class_color(label, NUM_CLASSES), atol=6)
    assert np.bincount([int(ex["label"]) for ex in examples]).tolist() == [per_class] * NUM_CLASSES


def test_jpegs_are_stored_as_is_and_the_grayscale_one_as_rgb(prepared):
    data_dir, fake, builder = prepared
    source = builder.as_data_source(split="train", decoders={"image": tfds.decode.SkipDecoding()})
    stored = {ex["id"].decode(): ex["image"] for ex in _examples(source)}
    with zipfile.ZipFile(os.path.join(data_dir, "downloads", "manual", ti.ARCHIVE)) as zf:
        for file_name, (wnid, _) in fake["train"].items():
            original = zf.read(f"tiny-imagenet-200/train/{wnid}/images/{file_name}")
            assert Image.open(io.BytesIO(stored[file_name])).mode == "RGB"
            assert (stored[file_name] == original) == (file_name != fake["grayscale"])
    (ex,) = [ex for ex in _examples(builder.as_data_source(split="train"))
             if ex["id"].decode() == fake["grayscale"]]
    image = np.asarray(ex["image"]).astype(int)
    assert image.shape == (64, 64, 3) and int(ex["label"]) == 0
    assert np.abs(image - image[..., :1]).max() <= 3  # gray: channels (nearly) equal


def test_names_are_stored_with_the_dataset_and_other_readers_agree(prepared):
    data_dir, fake, _ = prepared
    fresh = ti.builder(data_dir, num_classes=NUM_CLASSES)
    assert fresh.info.features["label"].names == fake["wnids"]
    assert fresh.info.features["label"].num_classes == NUM_CLASSES
    assert fresh.data_dir.endswith(os.path.join("tiny_imagenet200", f"classes{NUM_CLASSES}", "1.0.0"))
    source = tfds.data_source(f"tiny_imagenet200/classes{NUM_CLASSES}", data_dir=data_dir, split="train",
                              download=False, builder_kwargs={"file_format": "array_record"})
    assert len(source) == NUM_CLASSES * TRAIN_PER_CLASS
    by_id = {ex["id"]: int(ex["label"]) for ex in _examples(source)}
    assert by_id == {ex["id"]: int(ex["label"]) for ex in _examples(fresh.as_data_source(split="train"))}


def test_project_loader_reads_it_with_validation_as_test_split(prepared):
    data_dir, fake, _ = prepared
    cfg = ml_collections.ConfigDict({"name": f"tiny_imagenet200/classes{NUM_CLASSES}", "data_dir": data_dir,
                                     "split_train": "train", "split_test": "validation",
                                     "image_size": 64, "stand_in": ""})
    data = tfds_source.load(cfg)
    assert data.num_classes == NUM_CLASSES and data.class_names == tuple(fake["wnids"])
    assert data.train_images.shape == (NUM_CLASSES * TRAIN_PER_CLASS, 64, 64, 3)
    assert data.test_images.shape == (NUM_CLASSES * VAL_PER_CLASS, 64, 64, 3)


def test_default_config_is_the_200_class_archive(tmp_path):
    fake = _manual_archive(str(tmp_path), num_classes=200, train_per_class=1, val_per_class=1, seed=1)
    ti.prepare(str(tmp_path))
    builder = tfds.builder("tiny_imagenet200", data_dir=str(tmp_path), file_format="array_record")
    assert builder.builder_config.name == "classes200"
    assert builder.info.features["label"].names == fake["wnids"]
    assert {s: builder.info.splits[s].num_examples for s in ("train", "validation")} == {
        "train": 200, "validation": 200}


def test_missing_archive_says_where_to_put_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"(?s)downloads/manual.*tiny-imagenet-200\.zip"):
        ti.prepare(str(tmp_path / "empty"), num_classes=NUM_CLASSES)
    manual = tmp_path / "manual"
    manual.mkdir()
    (manual / "other.zip").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"(?s)not found at .*manual/tiny-imagenet-200\.zip"):
        ti.prepare(str(tmp_path / "data"), manual_dir=str(manual), num_classes=NUM_CLASSES)


def test_class_count_must_match_the_config(tmp_path):
    _manual_archive(str(tmp_path), num_classes=2, train_per_class=1, val_per_class=1)
    with pytest.raises(ValueError, match="lists 2 wnids but config 'classes200'.*use config 'classes2'"):
        ti.prepare(str(tmp_path))
