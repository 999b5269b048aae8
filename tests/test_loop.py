"""The continual loop: compile once, resume equals uninterrupted, metrics artefacts."""

import json
import os

import numpy as np
import pytest

from dfcl_jax.methods import METHODS
from dfcl_jax.methods.finetune import Finetune
from dfcl_jax.train import loop as loop_lib
from dfcl_jax.train.loop import ContinualRun, build_experiment, train_and_evaluate
from tests.conftest import tiny_config


class CountingFinetune(Finetune):
    """Fine-tune whose loss counts how often it is traced (Python runs only while tracing)."""

    name = "counting_finetune"
    traces = 0

    def loss_fn(self, *args):
        CountingFinetune.traces += 1
        return super().loss_fn(*args)


def test_train_step_compiles_once_across_three_tasks(idx_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(METHODS, CountingFinetune.name, CountingFinetune)
    CountingFinetune.traces = 0
    cfg = tiny_config(idx_dir, method="finetune", tasks=5, epochs=1)
    cfg.method.name = CountingFinetune.name
    cfg.data.num_tasks = 5
    run = ContinualRun(build_experiment(cfg, str(tmp_path)))
    monkeypatch.setattr(run, "T", 3)  # three of the five tasks: seen-class counts 2, 4, 6
    run.R = [[None] * 3 for _ in range(3)]
    run.seen_acc = [None] * 3
    results = run.run()
    assert results["tasks_done"] == 3
    assert CountingFinetune.traces == 1
    assert list(run.steps) == ["main"] and run.steps["main"]._cache_size() == 1
    assert run.eval_step._cache_size() == 1


def test_resumed_run_equals_uninterrupted_run(idx_dir, tmp_path, monkeypatch):
    cfg = tiny_config(idx_dir, method="lwf", tasks=2, epochs=2)
    full = train_and_evaluate(cfg, str(tmp_path / "full"))

    original = ContinualRun.train_epoch

    def crash_in_task_2(self, task, epoch, *args):
        if task == 1 and epoch == 1:
            raise KeyboardInterrupt("simulated preemption")
        return original(self, task, epoch, *args)

    monkeypatch.setattr(ContinualRun, "train_epoch", crash_in_task_2)
    with pytest.raises(KeyboardInterrupt):
        train_and_evaluate(cfg, str(tmp_path / "resumed"))
    partial = json.load(open(tmp_path / "resumed" / "results.json"))
    assert partial["tasks_done"] == 1
    monkeypatch.setattr(ContinualRun, "train_epoch", original)

    trained = []
    monkeypatch.setattr(ContinualRun, "train_epoch",
                        lambda self, t, e, *a: trained.append((t, e)) or original(self, t, e, *a))
    resumed = train_and_evaluate(cfg, str(tmp_path / "resumed"))
    assert trained == [(1, 1)]  # only the epoch after the mid-task checkpoint is redone
    assert resumed["accuracy_matrix"] == full["accuracy_matrix"]
    assert resumed["final_accuracy"] == full["final_accuracy"]


def test_finished_run_is_not_retrained_and_writes_its_artefacts(idx_dir, tmp_path, monkeypatch):
    cfg = tiny_config(idx_dir, method="finetune", tasks=2, epochs=1)
    first = train_and_evaluate(cfg, str(tmp_path))
    for name in ("config.json", "metrics.jsonl", "results.json", "accuracy_matrix.csv",
                 "summary.md", "accuracy.png"):
        assert os.path.getsize(tmp_path / name) > 0, name
    assert os.listdir(tmp_path / "tensorboard")
    res = json.load(open(tmp_path / "results.json"))
    assert res["accuracy_matrix"][1][0] is None and res["method"] == "finetune"
    assert res["class_order"]["name"] == "abd" and len(res["class_order"]["order"]) == 10
    assert 0 <= res["final_accuracy"] <= 1
    monkeypatch.setattr(ContinualRun, "train_epoch", lambda *a: pytest.fail("retrained"))
    assert train_and_evaluate(cfg, str(tmp_path))["accuracy_matrix"] == first["accuracy_matrix"]


def test_shared_first_task_model_is_reused(idx_dir, tmp_path, monkeypatch):
    cfg = tiny_config(idx_dir, method="finetune", tasks=2, epochs=1)
    a = train_and_evaluate(cfg, str(tmp_path / "a"))
    cfg_b = tiny_config(idx_dir, method="lwf", tasks=2, epochs=1,
                        first_task_from=str(tmp_path / "a"))
    trained = []
    original = ContinualRun.train_epoch
    monkeypatch.setattr(ContinualRun, "train_epoch",
                        lambda self, t, e, *x: trained.append(t) or original(self, t, e, *x))
    b = train_and_evaluate(cfg_b, str(tmp_path / "b"))
    assert 0 not in trained
    assert b["accuracy_matrix"][0][0] == a["accuracy_matrix"][0][0]


def test_data_free_learner_never_sees_past_task_images(idx_dir, tmp_path):
    exp = build_experiment(tiny_config(idx_dir, method="lwf", tasks=5), str(tmp_path))
    for t in range(5):
        got = np.unique(exp.splits.task_of(exp.train_labels[exp.training_indices(t)]))
        assert got.tolist() == [t]
    exp.method.trains_on = "seen"  # a data-free learner asking for old data must be stopped
    with pytest.raises(loop_lib.DataFreeViolation):
        exp.training_indices(2)


def _count_traces(monkeypatch, owner, name: str, counts: dict) -> None:
    """Wrap `owner.name` so that every trace (Python call) increments counts[name]."""
    fn = getattr(owner, name)

    def counted(*args, **kwargs):
        counts[name] = counts.get(name, 0) + 1
        return fn(*args, **kwargs)

    monkeypatch.setattr(owner, name, counted)


def test_generator_replay_step_compiles_once_across_three_tasks(idx_dir, tmp_path, monkeypatch):
    """ABD: one compiled first-task step (plain CE) and one replay step for every later task;
    each jitted function (train steps, eval step, generator chunk) is traced exactly once."""
    from dfcl_jax.inversion import generator as generator_lib
    from dfcl_jax.methods.abd import ABD
    from dfcl_jax.train import steps as steps_lib

    traces: dict = {}
    _count_traces(monkeypatch, ABD, "loss_fn", traces)
    _count_traces(monkeypatch, ABD, "first_task_loss_fn", traces)
    _count_traces(monkeypatch, generator_lib, "abd_generator_loss", traces)
    _count_traces(monkeypatch, steps_lib, "mask_logits", traces)  # used by the eval step only
    cfg = tiny_config(idx_dir, method="abd", tasks=5, epochs=1)
    cfg.method.generator.steps = 4
    cfg.method.generator.width = 8
    cfg.method.generator.batch_size = 16
    cfg.method.generator.z_dim = 16
    run = ContinualRun(build_experiment(cfg, str(tmp_path)))
    monkeypatch.setattr(run, "T", 3)
    run.R = [[None] * 3 for _ in range(3)]
    run.seen_acc = [None] * 3
    run.run()
    assert sorted(run.steps) == ["first", "main"]
    assert all(step._cache_size() == 1 for step in run.steps.values())
    assert run.exp.method.source.trainer.loop.compile_counts() == {4: 1}
    assert run.eval_step._cache_size() == 1
    assert traces == {"first_task_loss_fn": 1, "loss_fn": 1, "abd_generator_loss": 1,
                      "mask_logits": 1}
    # Diagnosis after task 2 and replay grids after every task but the last are in the workdir.
    diag = json.load(open(tmp_path / "diagnostics.json"))
    assert diag["after_task"] == 1 and diag["mid_real_old_vs_synthetic_old"] > 0
    assert json.load(open(tmp_path / "results.json"))["diagnostics"] == diag
    for name in ("embeddings_task2.png", "synthetic_after_task1.png", "synthetic_after_task2.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG", name
