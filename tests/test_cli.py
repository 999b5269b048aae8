"""The entry point as a user runs it: config arguments, overrides, summary, clean errors."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "experiments.run", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=400)


def test_cifar100_smoke_runs_through_the_tfds_path_with_overrides(tmp_path):
    wd = tmp_path / "wd"
    proc = run_cli("--config=experiments/cifar100_lwf_mc.py:smoke,seed=1", f"--workdir={wd}",
                   "--config.runtime.progress=False", "--config.train.epochs=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| final accuracy A_N |" in proc.stdout
    res = json.load(open(wd / "results.json"))
    cfg = json.load(open(wd / "config.json"))
    assert res["dataset"] == "cifar100" and res["method"] == "lwf_mc"
    assert cfg["train"]["epochs"] == 2 and cfg["data"]["order_seed"] == 1
    assert res["class_order"]["order"][:4] == [53, 37, 65, 51]  # "abd" trial 1
    assert len(res["accuracy_matrix"]) == 2


def test_bad_override_is_a_clean_error(tmp_path):
    proc = run_cli("--config=experiments/fashion_mnist.py:smoke", f"--workdir={tmp_path}",
                   "--config.train.lr=-1")
    assert proc.returncode != 0
    assert "error: config.train.lr=-1.0 must be > 0" in proc.stderr
    assert "Traceback" not in proc.stderr
