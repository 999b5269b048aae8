"""One job on two processes (jax.distributed on localhost, 2 fake CPU devices each) gives the
results of one process with the same 4 devices and writes each artefact once; a run stopped by
SIGTERM (in the middle of an inversion, then in the middle of an epoch) and resumed gives the
results of an uninterrupted run."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEVICES = 4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def job(method: str, workdir, idx_dir: str, processes: int = 1, preempt_at: int = 0) -> list:
    """Run one smoke job of `method` on `processes` processes sharing DEVICES CPU devices;
    returns the processes' (returncode, stdout + stderr)."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["XLA_FLAGS"] = (f"--xla_force_host_platform_device_count={DEVICES // processes} "
                        "--xla_cpu_collective_call_terminate_timeout_seconds=60")
    if preempt_at:
        env["DFCL_PREEMPT_AT_POINT"] = str(preempt_at)
    cmd = [sys.executable, "-m", "experiments.run",
           f"--config=experiments/fashion_mnist.py:smoke,method={method}", f"--workdir={workdir}",
           "--config.data.stand_in=", f"--config.data.data_dir={idx_dir}",
           "--config.runtime.progress=False"]
    if method == "pmi":  # one step per chunk: safe points inside every inversion solve
        cmd.append("--config.method.pmi.chunk=1")
    if processes > 1:
        cmd += ["--multihost", f"--coordinator_address=127.0.0.1:{free_port()}",
                f"--num_processes={processes}"]
    procs = [subprocess.Popen(cmd + ([f"--process_id={i}"] if processes > 1 else []), cwd=ROOT,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for i in range(processes)]
    return [(p.wait(timeout=600), p.stdout.read()) for p in procs]


def results(workdir) -> dict:
    r = json.load(open(os.path.join(workdir, "results.json")))
    return {k: r[k] for k in ("accuracy_matrix", "final_accuracy", "seen_accuracy",
                              "class_order")}


def logged(workdir, kind: str) -> list[dict]:
    return [r for r in map(json.loads, open(os.path.join(workdir, "metrics.jsonl")))
            if r["kind"] == kind]


def final_state(workdir) -> list:
    """Every array of the run's last checkpoint (params, optimiser, teacher, extras)."""
    import jax
    import orbax.checkpoint as ocp

    ckpt = os.path.join(workdir, "checkpoints")
    last = max(int(d) for d in os.listdir(ckpt) if d.isdigit())
    path = os.path.join(ckpt, str(last), "state")
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    with ocp.StandardCheckpointer() as c:
        meta = c.metadata(path)
        meta = getattr(meta, "item_metadata", meta)  # newer orbax wraps the tree
        target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                              meta)
        return [np.asarray(a) for a in jax.tree.leaves(c.restore(path, target))]


@pytest.fixture(scope="module")
def reference(idx_dir, tmp_path_factory):
    """`reference(method)`: the workdir of an uninterrupted one-process run on the 4 devices
    (run once per method, when first asked for)."""
    done = {}

    def get(method):
        if method not in done:
            wd = tmp_path_factory.mktemp(f"ref_{method}")
            [(rc, log)] = job(method, wd, idx_dir)
            assert rc == 0, log[-3000:]
            done[method] = wd
        return done[method]

    return get


@pytest.mark.parametrize("method", ["pmi", "abd"])
def test_two_processes_equal_one_and_write_each_artefact_once(method, reference, idx_dir,
                                                              tmp_path):
    outcomes = job(method, tmp_path, idx_dir, processes=2)
    for rc, log in outcomes:
        assert rc == 0, log[-4000:]
    assert "process 1 of 2" in outcomes[1][1]
    assert "| final accuracy A_N |" in outcomes[0][1]  # the chief prints the summary
    assert "| final accuracy A_N |" not in outcomes[1][1]
    ref = reference(method)
    assert results(tmp_path) == results(ref)
    assert logged(tmp_path, "eval") == logged(ref, "eval")
    # The same program on the same 4 devices: only the order of the cross-process sums differs.
    # Task 1's losses agree to float32 rounding; after an inversion (which amplifies rounding)
    # to 1 %.
    two, one = logged(tmp_path, "train"), logged(ref, "train")
    assert [r["step"] for r in two] == [r["step"] for r in one]
    for a, b in zip(two, one):
        np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-5 if a["task"] == 0 else 1e-2)
    # Written once: as many log lines as the one-process run, one TensorBoard event file.
    assert len(open(tmp_path / "metrics.jsonl").readlines()) == len(
        open(os.path.join(ref, "metrics.jsonl")).readlines())
    assert len(os.listdir(tmp_path / "tensorboard")) == 1
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".write_test")]
    assert (tmp_path / "synthetic_after_task1.png").read_bytes()[:4] == b"\x89PNG"


def test_sigterm_saves_and_the_resumed_run_equals_an_uninterrupted_one(reference, idx_dir,
                                                                       tmp_path):
    # Stop 1: inside the PMI inversion after task 1 (safe points 1-5 are task 1's train steps).
    [(rc, log)] = job("pmi", tmp_path, idx_dir, preempt_at=12)
    assert rc == 143, log[-3000:]
    assert "preempted" in log and not (tmp_path / "results.json").exists()
    # Stop 2: the resumed run redoes the inversion (22 safe points) and stops inside task 2.
    [(rc, log)] = job("pmi", tmp_path, idx_dir, preempt_at=30)
    assert rc == 143, log[-3000:]
    assert "resumed" in log and "task 0 epoch 1 batch 0" in log
    [(rc, log)] = job("pmi", tmp_path, idx_dir)
    assert rc == 0, log[-3000:]
    assert "resumed" in log and "task 1 epoch" in log
    assert results(tmp_path) == results(reference("pmi"))
    assert logged(tmp_path, "eval") == logged(reference("pmi"), "eval")
    # The very same arrays at the end: weights, optimiser state, teacher, PMI's statistics,
    # encoders and synthetic set.
    for a, b in zip(final_state(tmp_path), final_state(reference("pmi")), strict=True):
        np.testing.assert_array_equal(a, b)
