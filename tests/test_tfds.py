"""The TFDS path: stand-ins written by TFDS's own cifar100 builder and read back without TF."""

import numpy as np
import pytest

from dfcl_jax.data import tfds_source
from dfcl_jax.data.sources import DataError, load_dataset
from dfcl_jax.data.stand_in import balanced_labels, class_images
from experiments import cifar100_lwf_mc


def test_cifar100_stand_in_round_trips_through_the_real_tfds_format(tmp_path):
    cfg = cifar100_lwf_mc.get_config("smoke").data
    cfg.stand_in = ""
    cfg.data_dir = str(tmp_path)
    tfds_source.write_stand_in("cifar100", str(tmp_path), train_per_class=3, test_per_class=1)
    data = load_dataset(cfg)
    assert data.num_classes == 100 and data.image_shape == (32, 32, 3)
    assert np.bincount(data.train_labels, minlength=100).tolist() == [3] * 100
    labels = balanced_labels(100, 3, 0)
    want = class_images(labels, (32, 32, 3), 100, 0, noise_seed=1)
    # TFDS shuffles records: compare as sets of (label, image bytes); PNG is lossless.
    got = {(int(y), x.tobytes()) for x, y in zip(data.train_images, data.train_labels)}
    assert got == {(int(y), x.tobytes()) for x, y in zip(want, labels)}


def test_unprepared_tfds_dataset_says_how_to_prepare_it(tmp_path):
    cfg = cifar100_lwf_mc.get_config().data
    cfg.data_dir = str(tmp_path)
    with pytest.raises(DataError, match=r"no prepared split.*download_and_prepare.*stand_in"):
        tfds_source.check_prepared(cfg)
    cfg.name = "no_such_dataset"
    with pytest.raises(DataError, match="is not a TFDS dataset"):
        tfds_source.check_prepared(cfg)
