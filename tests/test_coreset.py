"""Coreset baselines and the data-free audit: herding, the buffer's contents, rehearsal against
fine-tuning, BiC's bias layer, and the audit flagging leaks, passing data-free runs and labelling
coreset runs."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dfcl_jax.data.augment import Augmentation
from dfcl_jax.data.stand_in import class_images
from dfcl_jax.methods import METHODS, get_method, method_config
from dfcl_jax.methods.coreset import coreset_by_class, fit_bias_layer, herding_selection
from dfcl_jax.methods.finetune import Finetune
from dfcl_jax.metrics.audit import RealImages, audit_run, image_rows, memorisation
from dfcl_jax.models.resnet import cifar_resnet
from dfcl_jax.train.loop import ContinualRun, TaskData, build_experiment, train_and_evaluate
from dfcl_jax.train.state import init_run_state
from experiments import audit as audit_cli
from experiments.base import get_config
from tests.conftest import tiny_config

CORESET_SIZE = 50  # 10 exemplars for each of 5 classes after task 1, 5 each after task 2


# ----------------------------------------------------------------------------- selection
def _mean_error(feats, ix):
    f = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    return float(np.linalg.norm(f.mean(0) - f[ix].mean(0)))


def test_herding_approximates_the_class_mean_better_than_random():
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((400, 16)) * np.linspace(0.2, 3.0, 16) + 1.0
    chosen = herding_selection(feats, 10)
    assert len(set(chosen.tolist())) == 10
    random_errors = [_mean_error(feats, rng.permutation(400)[:10]) for _ in range(100)]
    assert _mean_error(feats, chosen) < 0.5 * min(random_errors)
    # Priority order: the first exemplar is the single sample closest to the mean.
    assert _mean_error(feats, chosen[:1]) == pytest.approx(
        min(_mean_error(feats, [i]) for i in range(400)))


@pytest.mark.parametrize("selection", ["herding", "random"])
def test_coreset_is_bounded_balanced_and_holds_real_images_of_seen_classes(selection):
    cfg = method_config("naive_rehearsal")
    cfg.coreset.size, cfg.coreset.selection = 30, selection
    method = get_method(cfg)
    method.bind(10, 5)
    model = cifar_resnet(10, 8, (4, 8, 16))
    run = init_run_state(model, get_config().train, jax.random.key(0),
                         np.zeros((1, 32, 32, 1), np.float32), method)
    labels = np.repeat(np.arange(10), 20)
    images = class_images(labels, (32, 32, 1), 10)
    real = {img.tobytes(): int(y) for img, y in zip(images, labels)}
    norm = Augmentation((0.5,), (0.25,)).normalize
    previous = {}
    for task in range(3):
        n_seen = 2 * (task + 1)
        td = TaskData(images, labels, np.flatnonzero(labels // 2 == task), n_seen, False, 0,
                      False, norm)
        run = method.end_task(run, task, td)
        cs = jax.device_get(run.extras["coreset"])
        n, m = int(cs["count"]), 30 // n_seen
        assert int(cs["val_count"]) == 0 and n == m * n_seen <= 30
        stored, y = np.asarray(cs["images"][:n]), np.asarray(cs["labels"][:n])
        assert np.bincount(y, minlength=10).tolist() == [m] * n_seen + [0] * (10 - n_seen)
        assert all(real[img.tobytes()] == label for img, label in zip(stored, y))
        assert len({img.tobytes() for img in stored}) == n  # no exemplar twice
        by_class = coreset_by_class(run.extras["coreset"])
        for c, ex in previous.items():  # old classes are trimmed, never reselected
            np.testing.assert_array_equal(by_class[c], ex[:m])
        previous = by_class


def test_coreset_config_is_validated():
    cfg = method_config("bic")
    cfg.coreset.selection = "kmeans"
    with pytest.raises(ValueError, match=r"config.method.coreset.selection='kmeans'; allowed: "
                                         r"herding, random"):
        get_method(cfg)
    cfg = method_config("bic")
    cfg.val_fraction = 1.5
    with pytest.raises(ValueError, match=r"config.method.val_fraction=1.5"):
        get_method(cfg)
    cfg = method_config("naive_rehearsal")
    cfg.coreset.size = 5
    with pytest.raises(ValueError, match=r"config.method.coreset.size=5 must be >= the 10"):
        get_method(cfg).bind(10, 5)


# ----------------------------------------------------------------------------- BiC
def test_bic_bias_layer_changes_only_its_tasks_logits():
    method = get_method(method_config("bic"))
    method.bind(10, 5)
    state = {"alpha": jnp.asarray([1.0, 0.5, 1, 1, 1]), "beta": jnp.asarray([0.0, -2, 0, 0, 0])}
    z = jnp.asarray(np.random.default_rng(0).standard_normal((4, 10)), jnp.float32)
    out = np.asarray(method.inference_logits(z, state))
    z = np.asarray(z)
    np.testing.assert_allclose(out[:, 2:4], 0.5 * z[:, 2:4] - 2.0, rtol=1e-6)
    np.testing.assert_array_equal(np.delete(out, [2, 3], axis=1), np.delete(z, [2, 3], axis=1))


def test_bic_fit_removes_a_bias_towards_new_classes():
    """Validation logits favour the new classes by +3: the fitted layer lowers them."""
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 50)
    logits = rng.standard_normal((200, 10)) + 3.0 * np.eye(10)[y]
    logits[:, 2:4] += 3.0  # the new classes (task 2 of 5) are over-predicted
    logits, y = jnp.asarray(logits, jnp.float32), jnp.asarray(y)
    bias = {"alpha": jnp.ones(5), "beta": jnp.zeros(5)}
    tc = jnp.arange(10) // 2
    alpha, beta = fit_bias_layer(logits, y, bias, 1, 2, 4, 500, 0.05, tc)

    def corrected(a, b):
        return jnp.where((jnp.arange(10) >= 2) & (jnp.arange(10) < 4), a * logits + b,
                         logits)[:, :4]

    ce = [float(optax.softmax_cross_entropy_with_integer_labels(corrected(a, b), y).mean())
          for a, b in ((1.0, 0.0), (alpha, beta))]
    acc = [float(jnp.mean(jnp.argmax(corrected(a, b), -1) == y)) for a, b in ((1, 0),
                                                                                (alpha, beta))]
    assert float(beta) < -1.0 and ce[1] < 0.5 * ce[0] and acc[1] > acc[0] + 0.2


def test_bic_holds_out_a_balanced_part_of_each_new_class():
    method = get_method(method_config("bic"))  # size 2000, 10% held out
    method.bind(10, 5)
    labels = np.repeat(np.arange(10), 300)
    ix = np.flatnonzero(labels // 2 == 1)
    train = method.training_subset(1, ix, labels, seed=0)
    # 2 old classes keep 1000 exemplars each, 100 of them held out: 100 per new class too.
    assert np.bincount(labels[train], minlength=10)[2:4].tolist() == [200, 200]
    assert method.training_subset(0, ix, labels, seed=0) is ix
    np.testing.assert_array_equal(train, method.training_subset(1, ix, labels, seed=0))


# ----------------------------------------------------------------------------- runs
@pytest.fixture(scope="module")
def runs(idx_dir, tmp_path_factory):
    """Finetune and naive rehearsal (and BiC) from one shared first-task model, 2 tasks."""
    root = tmp_path_factory.mktemp("coreset_runs")
    out = {"root": root}

    def cfg(method, **kw):
        c = tiny_config(idx_dir, method=method, tasks=2, epochs=6, **kw)
        if "coreset" in c.method:
            c.method.coreset.size = CORESET_SIZE
        return c

    out["finetune"] = train_and_evaluate(cfg("finetune"), str(root / "finetune"))
    shared = {"first_task_from": str(root / "finetune")}
    out["naive_rehearsal"] = train_and_evaluate(cfg("naive_rehearsal", **shared),
                                                str(root / "naive_rehearsal"))
    bic = ContinualRun(build_experiment(cfg("bic", **shared), str(root / "bic")))
    out["bic"] = bic.run()
    out["bic_run"] = bic
    out["cfg"] = cfg
    return out


def test_naive_rehearsal_retains_more_of_task_1_than_finetune(runs):
    ft, nr = runs["finetune"]["accuracy_matrix"], runs["naive_rehearsal"]["accuracy_matrix"]
    print("finetune R", ft, "naive_rehearsal R", nr)
    assert ft[0][0] == nr[0][0] > 0.6  # the shared first-task model learned task 1 (chance 0.2)
    assert nr[0][1] > ft[0][1] + 0.2
    assert runs["naive_rehearsal"]["final_accuracy"] > runs["finetune"]["final_accuracy"]


def test_bic_fits_its_bias_layer_and_evaluation_applies_it(runs):
    run = runs["bic_run"]
    extras = run.run_state.extras
    alpha, beta = np.asarray(extras["bias"]["alpha"]), np.asarray(extras["bias"]["beta"])
    assert (alpha[0], beta[0]) == (1.0, 0.0) and (alpha[1], beta[1]) != (1.0, 0.0)
    cs = jax.device_get(extras["coreset"])
    assert int(cs["count"]) == 40 and int(cs["val_count"]) == 10  # 5 of 10 classes: 4 + 1 each
    # Evaluation predicts through the layer: pushing task 2's logits down hides its classes.
    assert run.eval_step._cache_size() == 1  # one compiled evaluation for both tasks
    exp = run.exp
    t = run.run_state.train
    variables = {"params": t.params, "batch_stats": t.batch_stats}
    ix = exp.splits.indices(exp.test_labels, [0, 1])[:64]
    images, labels = exp.data.test_images[ix], exp.test_labels[ix]
    correct = {}
    for name, b in (("fitted", beta), ("suppressed", beta - np.asarray([0.0, 1e4]))):
        state = {"alpha": jnp.asarray(alpha), "beta": jnp.asarray(b)}
        correct[name] = np.asarray(run.eval_step(variables, images, labels, np.int32(10), state))
    new = exp.splits.task_of(labels) == 1
    assert not correct["suppressed"][new].any()
    assert correct["fitted"][new].any()


# ----------------------------------------------------------------------------- audit
class LeakyFinetune(Finetune):
    """Claims to be data-free, but stashes real images (normalised) in its extras; also keeps a
    buffer of noise "synthetic" images."""

    name = "leaky_test"

    def init_extras(self, model, rng, sample_images):
        shape = sample_images.shape[1:]
        return {"stash": jnp.zeros((8, *shape)), "fake": jnp.zeros((16, *shape))}

    def end_task(self, run, task, task_data):
        real = task_data.normalize(task_data.images[task_data.indices[:8]])
        noise = jax.random.uniform(jax.random.key(task), run.extras["fake"].shape)
        return run.replace(extras={"stash": real, "fake": noise})


def test_audit_flags_a_leaky_data_free_method(runs, monkeypatch, capsys):
    monkeypatch.setitem(METHODS, LeakyFinetune.name, LeakyFinetune)
    c = runs["cfg"]("finetune", first_task_from=str(runs["root"] / "finetune"))
    c.method.name = LeakyFinetune.name
    workdir = str(runs["root"] / "leaky")
    train_and_evaluate(c, workdir)
    report = audit_run(workdir)
    assert report["verdict"] == "fail" and report["data_free"]
    leaks = [f for f in report["image_shaped_arrays"] if f["real_tasks"]]
    assert {f["key"] for f in leaks} == {"['extras']['stash']"}
    assert all(f["exact_real"] == 8 and f["encoding"] == "normalised" for f in leaks)
    assert {tuple(f["real_tasks"]) for f in leaks} == {(0,), (1,)}  # both checkpoints
    # (b): the noise buffer is synthetic, far from real images; its closest pairs are drawn.
    m = report["memorisation"]["stored ['extras']['fake']"]
    assert m["num_synthetic"] == 16 and m["memorisation_ratio"] > 1.0
    assert os.path.getsize(os.path.join(workdir, m["closest_pairs_png"])) > 0
    assert audit_cli.main([f"--workdir={workdir}"]) == 1
    assert "Verdict: **fail**" in capsys.readouterr().out


def test_audit_passes_a_data_free_run_and_labels_a_coreset_run(runs):
    ft = audit_run(str(runs["root"] / "finetune"))
    assert ft["verdict"] == "pass" and ft["real_images_persisted"] == 0
    assert ft["arrays_scanned"] > 100  # every checkpoint (state, first-task model) was read
    nr = audit_run(str(runs["root"] / "naive_rehearsal"))
    assert nr["verdict"] == "exception" and "labelled exception" in nr["exception"]
    final = [f for f in nr["image_shaped_arrays"] if f["real_tasks"] == [0, 1]]
    assert final and final[0]["exact_real"] == CORESET_SIZE
    assert audit_run(str(runs["root"] / "naive_rehearsal"), strict=True)["verdict"] == "fail"
    assert audit_cli.main([f"--workdir={runs['root'] / 'naive_rehearsal'}"]) == 0
    assert audit_cli.main([f"--workdir={runs['root'] / 'naive_rehearsal'}",
                           "--data-free-check"]) == 1
    saved = json.load(open(runs["root"] / "naive_rehearsal" / "audit" / "audit.json"))
    assert saved["verdict"] == "fail" and saved["strict"]


def test_memorisation_ratio_separates_copies_from_novel_images():
    labels = np.repeat(np.arange(5), 40)
    images = class_images(labels, (32, 32, 1), 5)
    real = RealImages(images)
    rng = np.random.default_rng(0)
    copies = images[:20].astype(np.float32) / 255 + rng.normal(0, 0.005, (20, 32, 32, 1))
    novel = rng.uniform(0, 1, (20, 32, 32, 1)).astype(np.float32)
    mem_copy = memorisation(copies.astype(np.float32), real, rng)
    mem_novel = memorisation(novel, real, rng)
    assert mem_copy["memorisation_ratio"] < 0.2 < 1.0 < mem_novel["memorisation_ratio"]
    np.testing.assert_array_equal(mem_copy["_nearest"], np.arange(20))


def test_image_shaped_arrays_are_recognised_and_kernels_are_not():
    shape = (32, 32, 1)
    assert image_rows(np.zeros((5, 32, 32, 1)), shape).shape == (5, 32, 32, 1)
    assert image_rows(np.zeros((2, 3, 32, 32, 1)), shape).shape == (6, 32, 32, 1)
    assert image_rows(np.zeros((5, 32, 32)), shape).shape == (5, 32, 32, 1)
    assert image_rows(np.zeros((5, 1024), np.uint8), shape).shape == (5, 32, 32, 1)
    for not_images in ((3, 3, 32, 32), (32, 32), (1024,), (10, 32)):
        assert image_rows(np.zeros(not_images), shape) is None
