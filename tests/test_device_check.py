"""`benchmarks/device_check.sh --tiny` runs every section on the CPU and writes its summary."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_device_check_tiny_runs_on_cpu(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(["bash", "benchmarks/device_check.sh", "--tiny", "--out", str(out),
                           "--budget-s", "3600"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    s = json.loads((out / "device_check.json").read_text())
    assert s["errors"] == {} and s["skipped"] == []
    env_ = s["environment"]
    assert env_["platform"] == "cpu" and env_["versions"]["jax"] and env_["python"]
    assert env_["loop_defaults"] == {"unroll": True, "chunk": 10}

    eq = s["equivalence"]
    assert eq["ok"] and eq["precision"] == "highest" and eq["rtol"] == 1e-3
    assert [r["check"] for r in eq["rows"]] == ["train", "pmi_block"]
    for r in eq["rows"]:  # CPU vs CPU: the same program on the same device, bit for bit
        assert math.isfinite(r["cpu"]) and r["cpu"] == r["device"] and r["rel_diff"] == 0.0

    pmi = s["pmi_run"]
    m, x = pmi["measured"], pmi["extrapolated"]
    assert {(e["task"], e["phase"]) for e in m["epochs"]} == {
        (0, "train"), (1, "head"), (1, "last_stage"), (1, "all"), (1, "head_ft")}
    assert len(m["epochs"]) == 5 * pmi["timed_epochs_per_phase"]
    assert [i["micro_batches"] for i in m["inversion"]] == [1]  # the timed run inverts one
    assert x["tasks"] == 2 and x["micro_batches"] == [2]  # the smoke run's 32 targets in 16s
    assert all(math.isfinite(v) and v >= 0 for v in x["parts"].values())
    assert math.isclose(x["total_s"], sum(x["parts"].values()))
    # Training: the reference epochs (smoke: 1 per phase) times the fastest timed epoch.
    assert math.isclose(x["parts"]["train_s"], sum(e["s"] for e in x["per_epoch"]))
    assert "total = setup + compile" in x["formula"]

    rows = s["suite"]["rows"]
    assert [r["benchmark"] for r in rows] == ["eval", "pmi_block"]
    assert all(math.isfinite(r["median_ms"]) and r["median_ms"] > 0 for r in rows)
    assert json.loads((out / "suite.json").read_text())["rows"] == rows
    torch_rows = s["torch"].get("rows")
    if env_["torch"] is None:
        assert s["torch"] == {"skipped": "torch is not importable"}
    else:
        assert [r["benchmark"] for r in torch_rows] == ["pmi_block"]
        assert all(r["ratio"] > 0 for r in torch_rows)

    md = (out / "device_check.md").read_text()
    for heading in ("## CPU vs cpu (matmul precision highest, rtol 0.001)", "## PMI run, 2 tasks",
                    "## Benchmark suite", "| train | loss after one SGD update | 8 |"):
        assert heading in md
    assert md.strip() in proc.stdout  # the summary is printed too
