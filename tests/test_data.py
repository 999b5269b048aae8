"""Class orders, IDX reading, task splits, batching and augmentation."""

import gzip

import jax
import numpy as np
import pytest

from dfcl_jax.data import idx
from dfcl_jax.data.augment import Augmentation, random_crop
from dfcl_jax.data.batching import eval_batches, train_batches
from dfcl_jax.data.class_orders import abd_task_seed, class_order
from dfcl_jax.data.sources import fit_to_size
from dfcl_jax.data.tasks import TaskSplits


def test_abd_orders_match_the_published_goldens():
    assert class_order("abd", 100, 0)[:20] == [23, 8, 11, 7, 48, 13, 1, 91, 94, 54, 16, 63, 52,
                                               41, 80, 2, 47, 87, 78, 66]
    assert class_order("abd", 100, 1)[:20] == [53, 37, 65, 51, 4, 20, 38, 9, 10, 81, 44, 36, 84,
                                               50, 96, 90, 66, 16, 80, 33]
    assert class_order("abd", 100, 2)[:20] == [0, 76, 61, 63, 1, 71, 2, 6, 16, 19, 13, 24, 49, 12,
                                               75, 9, 83, 72, 5, 41]
    assert class_order("abd", 200, 0)[:4] == [131, 181, 22, 172]
    assert abd_task_seed(2, 3) == 203


def test_icarl_and_natural_orders():
    assert class_order("icarl1993", 100)[:12] == [68, 56, 78, 8, 23, 84, 90, 65, 74, 76, 40, 89]
    assert class_order("natural", 5) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="allowed: abd, icarl1993, natural"):
        class_order("random", 10)


@pytest.mark.parametrize("gz", [True, False])
def test_idx_round_trip(tmp_path, gz):
    images = np.random.default_rng(0).integers(0, 256, (7, 28, 28), dtype=np.uint8)
    path = str(tmp_path / ("x.idx" + (".gz" if gz else "")))
    idx.write_idx(path, images)
    np.testing.assert_array_equal(idx.read_idx(path), images)


def test_idx_rejects_bad_files(tmp_path):
    bad = tmp_path / "bad.gz"
    with gzip.open(bad, "wb") as f:
        f.write(b"\x01\x02\x03\x04garbage")
    with pytest.raises(ValueError, match="not an IDX file"):
        idx.read_idx(str(bad))


def test_task_splits_own_exactly_their_classes_with_contiguous_labels():
    order = class_order("abd", 100, 0)
    splits = TaskSplits(tuple(order), 10)
    labels = np.random.default_rng(1).integers(0, 100, 5000)
    remapped = splits.remap(labels)
    np.testing.assert_array_equal(np.asarray(order)[remapped], labels)  # remap inverts the order
    covered = []
    for t in range(10):
        ix = splits.indices(remapped, t)
        got = set(remapped[ix].tolist())
        assert got <= set(range(10 * t, 10 * t + 10))  # contiguous label range of task t
        assert set(labels[ix].tolist()) == set(order[10 * t: 10 * t + 10]) & set(labels.tolist())
        covered.append(ix)
    allix = np.concatenate(covered)
    assert len(allix) == len(labels) and len(np.unique(allix)) == len(labels)  # disjoint, total
    assert (splits.n_old(3), splits.n_seen(3)) == (30, 40)


def test_task_splits_reject_a_task_count_that_does_not_divide():
    with pytest.raises(ValueError, match="does not divide"):
        TaskSplits(tuple(range(10)), 3)


def test_training_batches_are_deterministic_and_cover_the_epoch_once():
    ix = np.arange(100, 200)
    a = train_batches(ix, 16, seed=0, task=1, epoch=2)
    b = train_batches(ix, 16, seed=0, task=1, epoch=2)
    c = train_batches(ix, 16, seed=0, task=1, epoch=3)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(np.concatenate(a), np.concatenate(c))
    flat = np.concatenate(a)
    assert len(a) == 6 and len(np.unique(flat)) == 96 and set(flat) <= set(ix)


def test_eval_batches_pad_with_a_validity_mask():
    batches = list(eval_batches(np.arange(10), 4))
    assert [b.shape for b, _ in batches] == [(4,)] * 3
    assert batches[-1][1].tolist() == [True, True, False, False]
    assert np.concatenate([b[v] for b, v in batches]).tolist() == list(range(10))


def test_fit_to_size_pads_28_to_32_centred():
    x = np.full((2, 28, 28, 1), 7, np.uint8)
    y = fit_to_size(x, 32)
    assert y.shape == (2, 32, 32, 1) and y[:, 2:30, 2:30].min() == 7 and y.sum() == x.sum()


def test_random_crop_is_a_shifted_window_of_the_zero_padded_image():
    x = jax.random.uniform(jax.random.key(0), (8, 32, 32, 3))
    y = np.asarray(random_crop(x, jax.random.key(1), 4))
    xp = np.pad(np.asarray(x), ((0, 0), (4, 4), (4, 4), (0, 0)))
    for i in range(8):
        matches = [(a, b) for a in range(9) for b in range(9)
                   if np.array_equal(xp[i, a:a + 32, b:b + 32], y[i])]
        assert matches


def test_augmentation_normalises_and_stays_in_range():
    aug = Augmentation(mean=(0.5,), std=(0.25,))
    x = np.random.default_rng(0).integers(0, 256, (16, 32, 32, 1), dtype=np.uint8)
    y = np.asarray(aug(x, jax.random.key(0)))
    assert y.shape == x.shape and y.min() >= -2.0 - 1e-6 and y.max() <= 2.0 + 1e-6
    np.testing.assert_allclose(np.asarray(aug.normalize(x)), (x / 255.0 - 0.5) / 0.25,
                               rtol=1e-5, atol=1e-6)
