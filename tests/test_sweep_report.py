"""The sweep (grid order, first-task sharing, Omega links, resumption) and the report's numbers."""

import csv
import json
import os
import threading
import time

import pytest

from experiments import report, sweep

FMNIST = "experiments/fashion_mnist.py:smoke"


def fake_results(workdir, method, seed, seen_acc, R, tasks_done=None, dataset="fake"):
    os.makedirs(workdir, exist_ok=True)
    T = len(R)
    r = {"method": method, "dataset": dataset, "num_tasks": T,
         "tasks_done": T if tasks_done is None else tasks_done,
         "class_order": {"name": "abd", "seed": seed, "order": []},
         "accuracy_matrix": R, "final_accuracy": sum(row[-1] for row in R) / T,
         "average_incremental_accuracy": sum(seen_acc) / T, "forgetting": None,
         "seen_accuracy": seen_acc}
    with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump(r, f)


def test_report_means_stds_and_omega_by_hand(tmp_path):
    root = tmp_path / "root"
    # joint: A_t = (1.0, 0.8) and (0.9, 0.6); finetune: (0.8, 0.4) and (0.9, 0.3).
    fake_results(root / "joint_s0", "joint", 0, [1.0, 0.8], [[1.0, 0.8], [None, 0.8]])
    fake_results(root / "joint_s1", "joint", 1, [0.9, 0.6], [[0.9, 0.6], [None, 0.6]])
    fake_results(root / "finetune_s0", "finetune", 0, [0.8, 0.4], [[0.8, 0.0], [None, 0.8]])
    fake_results(root / "finetune_s1", "finetune", 1, [0.9, 0.3], [[0.9, 0.2], [None, 0.4]])
    fake_results(root / "abd_s0", "abd", 0, [0.8, 0.5], [[0.8, 0.4], [None, 0.6]],
                 tasks_done=1)  # unfinished: listed, not averaged
    rows = report.write_report(str(root))
    by = {r["method"]: r for r in rows}
    assert set(by) == {"joint", "finetune"}
    # A_N: finetune (0.0 + 0.8) / 2 = 0.4 and (0.2 + 0.4) / 2 = 0.3 -> 35.00 +- 5.00
    assert by["finetune"]["final_accuracy"] == pytest.approx((0.35, 0.05))
    # Omega: seed 0 (0.8/1.0 + 0.4/0.8) / 2 = 0.65, seed 1 (0.9/0.9 + 0.3/0.6) / 2 = 0.75
    assert by["finetune"]["omega"] == pytest.approx((0.70, 0.05))
    assert by["joint"]["omega"] is None
    md = (root / "report.md").read_text()
    assert "| Base (fine-tune) | yes | 0,1 | 35.00 +- 5.00 | 70.00 +- 5.00 |" in md
    assert "abd_s0 (1/2 tasks)" in md
    with open(root / "report.csv") as f:
        csv_rows = {r["method"]: r for r in csv.DictReader(f)}
    assert float(csv_rows["finetune"]["omega_mean"]) == pytest.approx(70.0)
    assert float(csv_rows["finetune"]["final_accuracy_std"]) == pytest.approx(5.0)
    assert (root / "report_accuracy.png").stat().st_size > 0


def test_report_keeps_task_counts_and_orders_apart(tmp_path):
    root = tmp_path / "root2"
    fake_results(root / "joint_s0", "joint", 0, [1.0, 0.5], [[1.0, 0.5], [None, 0.5]])
    # Same method and seed, 3 tasks: no 3-task joint run, so no Omega; its own table.
    fake_results(root / "lwf_T3_s0", "lwf", 0, [0.9, 0.6, 0.3],
                 [[0.9, 0.5, 0.2], [None, 0.7, 0.3], [None, None, 0.4]])
    fake_results(root / "lwf_T2_s0", "lwf", 0, [0.9, 0.25], [[0.9, 0.2], [None, 0.3]])
    rows = report.write_report(str(root))
    lwf = {r["num_tasks"]: r for r in rows if r["method"] == "lwf"}
    assert lwf[3]["omega"] is None and lwf[3]["final_accuracy"] == pytest.approx((0.3, 0.0))
    assert lwf[2]["omega"] == pytest.approx(((0.9 + 0.5) / 2, 0.0))
    md = (root / "report.md").read_text()
    assert "## fake, 2 tasks" in md and "## fake, 3 tasks" in md


class FakeRunner:
    """Stands in for `experiments.run`: finishes a cell, or is interrupted at a given call."""

    def __init__(self, interrupt_at=None):
        self.calls, self.interrupt_at = [], interrupt_at

    def __call__(self, cell, links, overrides, log_path, single_thread=False):
        self.calls.append((cell.name, dict(links)))
        if len(self.calls) == self.interrupt_at:
            with open(os.path.join(cell.workdir, "config.json"), "w") as f:
                json.dump(links, f)  # the real run writes its config before training
            raise KeyboardInterrupt
        with open(os.path.join(cell.workdir, "config.json"), "w") as f:
            json.dump(links, f)
        with open(os.path.join(cell.workdir, "first_task_model.json"), "w") as f:
            json.dump({}, f)
        fake_results(cell.workdir, cell.method, cell.seed, [1.0, 0.5], [[1.0, 0.5], [None, 0.5]],
                     dataset="fashion_mnist")
        return 0


def test_sweep_order_sharing_and_resume_after_interruption(tmp_path, monkeypatch):
    root = str(tmp_path / "sw")
    first = FakeRunner(interrupt_at=4)
    monkeypatch.setattr(sweep, "run_cell", first)
    with pytest.raises(KeyboardInterrupt):
        sweep.sweep(FMNIST, ["finetune", "joint", "lwf_mc"], [None], [0, 1], root, report=False)
    names = [n for n, _ in first.calls]
    # joint first, then each method over every seed.
    assert names == ["joint_T2_s0", "joint_T2_s1", "finetune_T2_s0", "finetune_T2_s1"]
    links = dict(first.calls)
    assert links["finetune_T2_s0"]["upper_bound_workdir"].endswith("joint_T2_s0")
    # Same first-task signature (CE, same data/model/schedule): task 1 from the joint cell.
    assert links["finetune_T2_s0"]["first_task_from"].endswith("joint_T2_s0")
    assert links["joint_T2_s1"]["first_task_from"] == ""

    again = FakeRunner()
    monkeypatch.setattr(sweep, "run_cell", again)
    state = sweep.sweep(FMNIST, ["finetune", "joint", "lwf_mc"], [None], [0, 1], root,
                        report=False)
    # Finished cells are not redone; the interrupted one resumes with the links it started with.
    assert [n for n, _ in again.calls] == ["finetune_T2_s1", "lwf_mc_T2_s0", "lwf_mc_T2_s1"]
    assert dict(again.calls)["finetune_T2_s1"] == links["finetune_T2_s1"]
    # LwF.MC trains its first task with BCE: it shares with no CE cell.
    assert dict(again.calls)["lwf_mc_T2_s0"]["first_task_from"] == ""
    assert dict(again.calls)["lwf_mc_T2_s1"]["first_task_from"] == ""
    assert all(v["status"] == "done" for v in state["cells"].values())
    assert len(state["cells"]) == 6


def test_sweep_rejects_bad_arguments_before_running(tmp_path, monkeypatch):
    runner = FakeRunner()
    monkeypatch.setattr(sweep, "run_cell", runner)
    with pytest.raises(ValueError, match="unknown config argument 'bogus'"):
        sweep.sweep("experiments/fashion_mnist.py:bogus=1", ["finetune"], [None], [0],
                    str(tmp_path / "x"), report=False)
    with pytest.raises(SystemExit, match="--methods: unknown nope"):
        sweep.main([f"--config={FMNIST}", "--methods=finetune,nope", f"--root={tmp_path}"])
    assert runner.calls == []


class SlowRunner(FakeRunner):
    """FakeRunner that takes a moment and records which cells ran at the same time."""

    def __init__(self):
        super().__init__()
        self.active, self.overlaps, self.lock = set(), [], threading.Lock()

    def __call__(self, cell, links, overrides, log_path, single_thread=False):
        assert single_thread  # parallel cells run XLA on one thread each
        with self.lock:
            self.active.add(cell.name)
            self.overlaps.append(sorted(self.active))
        time.sleep(0.3)
        rc = super().__call__(cell, links, overrides, log_path, single_thread)
        with self.lock:
            self.active.discard(cell.name)
        return rc


def test_parallel_sweep_links_like_the_sequential_one(tmp_path, monkeypatch):
    methods = ["finetune", "joint", "lwf_mc", "lwf"]
    serial, parallel = FakeRunner(), SlowRunner()
    monkeypatch.setattr(sweep, "run_cell", serial)
    sweep.sweep(FMNIST, methods, [None], [0, 1], str(tmp_path / "a"), report=False)
    monkeypatch.setattr(sweep, "run_cell", parallel)
    state = sweep.sweep(FMNIST, methods, [None], [0, 1], str(tmp_path / "b"), report=False,
                        jobs=2)
    assert all(v["status"] == "done" for v in state["cells"].values())

    def rel(calls, root):
        return {n: {k: os.path.relpath(v, root) if v else "" for k, v in links.items()}
                for n, links in calls}

    assert rel(parallel.calls, tmp_path / "b") == rel(serial.calls, tmp_path / "a")
    # Two cells did run at once, and no cell ran beside its own seed's joint cell.
    assert max(len(a) for a in parallel.overlaps) == 2
    for active in parallel.overlaps:
        for name in active:
            seed = name.rsplit("_s", 1)[1]
            assert name.startswith("joint") or f"joint_T2_s{seed}" not in active
