"""The `pmi` learner end to end: CIFAR-100 smoke through the TFDS reader, what it keeps, and PMI
data replayed by another learner (ABD)."""

from __future__ import annotations

import jax
import numpy as np

from dfcl_jax.metrics.audit import audit_run
from dfcl_jax.train.loop import ContinualRun, build_experiment
from experiments import cifar100_pmi
from tests.conftest import tiny_config


def leaf_shapes(tree) -> list:
    return [(jax.tree_util.keystr(p), tuple(np.shape(x)))
            for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]]


def test_cifar100_pmi_smoke_runs_through_the_tfds_path(tmp_path):
    cfg = cifar100_pmi.get_config("smoke")
    cfg.runtime.progress = False
    run = ContinualRun(build_experiment(cfg, str(tmp_path)))
    assert run.exp.data.name == "cifar100" and len(run.exp.model.blocks) == 5  # pmi variant
    results = run.run()
    assert results["tasks_done"] == 2 and len(results["accuracy_matrix"]) == 2
    source = run.exp.method.source
    syn = jax.device_get(run.run_state.extras["synthetic"])
    # After task 1: one target per row, labels over the 50 classes of task 1 only.
    n = source.num_targets(0)
    assert int(syn["count"]) == n
    assert set(np.unique(syn["labels"][:n])) <= set(range(50))
    assert len(np.unique(syn["labels"][:n])) > 10
    assert np.isfinite(syn["images"][:n]).all() and syn["images"][:n].std() > 0.1
    # Per-class statistics exist for every class seen (both tasks), not for unseen ones.
    std = np.asarray(run.run_state.extras["feature_model"]["std"])
    assert (std.sum(1) > 0).sum() == 100
    assert (tmp_path / "synthetic_after_task1.png").exists()
    assert "diagnostics" in results


def test_pmi_keeps_only_statistics_encoders_and_synthetic_images(idx_dir, tmp_path):
    """Data-free: what outlives a task does not depend on how many real images it had."""
    kept = []
    for per_class in (40, 64):
        cfg = tiny_config(idx_dir, method="pmi", tasks=5, epochs=1)
        cfg.data.train_per_class = per_class
        cfg.method.pmi.update({"block_steps": 2, "full_steps": 2, "full_warmup": 1,
                               "full_milestones": (), "targets_base": 16, "targets_per_task": 8,
                               "micro_batch": 16, "chunk": 2})
        cfg.method.feature_model.encoder_epochs = 2
        exp = build_experiment(cfg, str(tmp_path / str(per_class)))
        (tmp_path / str(per_class) / "config.json").write_text(cfg.to_json_best_effort())
        run = ContinualRun(exp)
        run.T = 2  # task 1 leaves a synthetic set, task 2 (the last here) refreshes statistics
        run.R, run.seen_acc = [[None] * 2 for _ in range(2)], [None] * 2
        run.run()
        extras = jax.device_get(run.run_state.extras)
        assert sorted(extras) == ["feature_model", "synthetic"]
        assert sorted(extras["feature_model"]) == ["encoders", "mean", "std"]
        kept.append(leaf_shapes(extras))
        # No stored image is a copy of a real training image.
        real = exp.augmentation.normalize(exp.data.train_images[exp.train_pool])
        syn = extras["synthetic"]["images"][: int(extras["synthetic"]["count"])]
        d = ((np.asarray(real)[None] - syn[:, None]) ** 2).mean(axis=(2, 3, 4))
        assert d.min() > 0.05
    assert kept[0] == kept[1]
    # The audit reads every checkpoint and artefact of the run: no real image persisted, and the
    # stored synthetic set is no nearer the real images than they are to each other.
    report = audit_run(str(tmp_path / "64"), num_synthetic=32)
    assert report["verdict"] == "pass" and report["real_images_persisted"] == 0
    assert report["arrays_scanned"] > 50
    assert all(m["memorisation_ratio"] > 1.0 for m in report["memorisation"].values())
    assert report["memorisation"]


def test_abd_learner_replays_pmi_data(idx_dir, tmp_path):
    """"Compatible with various CL strategies": ABD's learner with PMI's synthetic data."""
    cfg = tiny_config(idx_dir, method="abd", tasks=5, epochs=1)
    cfg.method.synthesis = "pmi"
    cfg.method.pmi.update({"block_steps": 2, "full_steps": 2, "full_warmup": 1,
                           "full_milestones": (), "targets_base": 16, "targets_per_task": 8,
                           "micro_batch": 16, "chunk": 2})
    cfg.method.feature_model.encoder_epochs = 2
    run = ContinualRun(build_experiment(cfg, str(tmp_path)))
    (tmp_path / "config.json").write_text(cfg.to_json_best_effort())
    run.T = 2
    run.R, run.seen_acc = [[None] * 2 for _ in range(2)], [None] * 2
    results = run.run()
    assert results["tasks_done"] == 2
    x, y = run.exp.method.sample_synthetic(run.exp.model, run.run_state, jax.random.key(0), 8, 2)
    stored = np.asarray(run.run_state.extras["synthetic"]["images"])
    # Replayed images are rows of the PMI synthetic set, labelled by their target's class.
    assert all(np.any(np.all(np.isclose(stored, xi), axis=(1, 2, 3))) for xi in np.asarray(x))
    assert set(np.asarray(y).tolist()) <= set(range(4))
    report = audit_run(str(tmp_path), num_synthetic=32)
    assert report["method"] == "abd" and report["verdict"] == "pass"
    assert report["real_images_persisted"] == 0 and report["arrays_scanned"] > 50
