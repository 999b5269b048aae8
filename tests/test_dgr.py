"""Deep generative replay: the VAE learns the task's images and feeds replay to the classifier."""

import json

import jax
import numpy as np

from dfcl_jax.train.loop import ContinualRun, build_experiment
from tests.conftest import tiny_config


def test_dgr_trains_its_vae_and_replays_it(idx_dir, tmp_path):
    cfg = tiny_config(idx_dir, method="dgr", tasks=2, epochs=1)
    cfg.method.vae.update({"steps": 60, "batch_size": 32, "width": 8, "z_dim": 8, "lr": 3e-3})
    run = ContinualRun(build_experiment(cfg, str(tmp_path)))
    results = run.run()
    losses = run.exp.method.last_vae_losses  # the VAE trained after task 1
    assert losses.shape == (60,) and losses[-10:].mean() < 0.8 * losses[:10].mean()
    # Task 2 replayed VAE samples: the diagnosis compares them with real task-1 features.
    assert results["diagnostics"]["after_task"] == 1
    assert json.load(open(tmp_path / "diagnostics.json"))["mmd_real_old_vs_synthetic_old"] > 0
    # Data-free: besides weights, only the VAE and its optimiser persist (no per-sample arrays).
    extras = run.run_state.extras
    assert set(extras) == {"vae", "vae_opt"}
    n_train = len(run.exp.training_indices(0))
    assert all(leaf.shape[:1] != (n_train,) for leaf in jax.tree.leaves(extras))
    assert np.isfinite(results["final_accuracy"])
