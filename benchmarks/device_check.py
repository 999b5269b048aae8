"""One accelerator check: environment, CPU-vs-device losses, the benchmark suite at batch 128, and a
10-task CIFAR-100 PMI run timed on its first task and extrapolated to the whole run.

    bash benchmarks/device_check.sh [--out DIR] [--budget-s 480] [--tiny]

Sections, in order (each failure is recorded and the next section still runs; exit status 1 if
any failed):
1. environment: Python, jax/jaxlib/flax/optax/orbax versions, devices, the backend's loop and
   convolution defaults, torch (and whether it sees a GPU) if importable;
2. equivalence: the ResNet-32 train step (`benchmarks.suite.train`: the loss after one update)
   and a PMI block solve (`suite.pmi_block`: the loss at Adam step 10; tiny: 2) built once on
   `jax.devices("cpu")[0]` and once on the default device, both under
   `jax.default_matmul_precision("highest")` (no TF32/bf16 matmul passes), must agree within
   `--rtol` (default 1e-3);
3. PMI run: `experiments/cifar100_pmi.py` (10 tasks, reference schedule) on generated
   CIFAR-100-format data (500 train / 100 test images per class, written in a background process
   while section 2 runs), with every training phase cut to `--pmi-epochs` epochs and the first
   task's targets to one micro-batch; it times the first task (training, end-of-task feature
   model + CFS, inversion, evaluation) and the second task's training phases, then stops and
   extrapolates the reference run (the formula and its terms are printed);
4. suite: `benchmarks.run` one benchmark at a time at `--batch` (128), while the time budget lasts;
5. torch: `benchmarks.run --vs-torch` (PyTorch reference, interleaved) if torch is importable and
   the budget lasts.
Writes device_check.json, device_check.md, suite.json and device_check.log to `--out`.

`--tiny`: the same sections on CPU (CI; mostly XLA:CPU compilation): batch 8, the suite's eval
and pmi_block only (torch: pmi_block), and the PMI run of `cifar100_pmi.py:smoke` (2 tasks, a
depth-8 ResNet, 20 images per class).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback

SECTIONS = ("equivalence", "pmi_run", "suite", "torch")
SUITE_TINY = ("eval", "pmi_block")  # the train step is built twice by the equivalence check
TORCH_ONLY, TORCH_ONLY_TINY = "train,deepinversion,abd_generator", "pmi_block"
STAND_IN_CODE = ("import sys; from dfcl_jax.data.tfds_source import write_stand_in; "
                 "write_stand_in('cifar100', sys.argv[1], 32, int(sys.argv[2]), int(sys.argv[3]))")


def parse_args(argv=None):
    """The command line, with the --tiny defaults filled in."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", default="", help="output directory (default: benchmarks/results/"
                                             "device_check_<platform>[_tiny])")
    p.add_argument("--tiny", action="store_true", help="tiny sizes: runs on CPU in CI")
    p.add_argument("--budget-s", type=float, default=480.0,
                   help="wall-clock budget; suite benchmarks and torch that do not fit are skipped")
    p.add_argument("--rtol", type=float, default=1e-3, help="CPU-vs-device loss tolerance")
    p.add_argument("--batch", type=int, default=0, help="suite batch (default 128; tiny: 8)")
    p.add_argument("--pmi-epochs", type=int, default=2,
                   help="timed epochs per training phase (the first includes compilation)")
    p.add_argument("--train-per-class", type=int, default=0,
                   help="generated training images per class (default 500; tiny: 20)")
    p.add_argument("--skip", default="", help="comma-separated sections to skip: "
                                              "equivalence, pmi_run, suite, torch")
    a = p.parse_args(argv)
    a.batch = a.batch or (8 if a.tiny else 128)
    a.train_per_class = a.train_per_class or (20 if a.tiny else 500)
    a.test_per_class = 5 if a.tiny else 100
    if a.pmi_epochs < 1:
        p.error(f"--pmi-epochs={a.pmi_epochs} must be >= 1")
    a.skip = {s for s in a.skip.split(",") if s}
    unknown = a.skip - set(SECTIONS)
    if unknown:
        p.error(f"--skip {sorted(unknown)}; allowed: {', '.join(SECTIONS)}")
    return a


def suite_argv(a, only: str) -> list[str]:
    """`benchmarks.run` arguments of the suite section (and of the equivalence cases)."""
    if a.tiny:
        return ["--only", only, "--batch", str(a.batch), "--steps", "2", "--chunk", "2",
                "--phase-repeats", "1"]
    return ["--only", only, "--batch", str(a.batch)]


# ------------------------------------------------------------------------------ environment
def environment() -> dict:
    """Versions, devices and the backend-resolved defaults of this process."""
    import importlib.metadata as md

    import jax

    from dfcl_jax.inversion.loop_defaults import backend_loop_defaults
    from dfcl_jax.models.conv import resolve_impl

    def version(name):
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return None

    names = ["jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "ml-collections",
             "tensorflow-datasets"]
    plugins = sorted({d.metadata["Name"] for d in md.distributions()
                      if (d.metadata["Name"] or "").lower().startswith(("jax-cuda", "jax_cuda",
                                                                         "libtpu"))})
    d0 = jax.devices()[0]
    stats = getattr(d0, "memory_stats", lambda: None)() or {}
    unroll, chunk = backend_loop_defaults()
    env = {"python": platform.python_version(), "host": platform.node(),
           "cpu_count": os.cpu_count(), "versions": {n: version(n) for n in names + plugins},
           "platform": jax.default_backend(), "device_kind": d0.device_kind,
           "devices": [str(d) for d in jax.devices()], "process_count": jax.process_count(),
           "device_memory_gb": round(stats["bytes_limit"] / 2**30, 1) if "bytes_limit" in stats
           else None, "loop_defaults": {"unroll": unroll, "chunk": chunk},
           "conv_impl": resolve_impl("auto"), "xla_flags": os.environ.get("XLA_FLAGS", "")}
    try:
        import torch

        cuda = torch.cuda.is_available()
        env["torch"] = {"version": torch.__version__, "cuda": cuda,
                        "device": torch.cuda.get_device_name(0) if cuda else "cpu"}
    except ImportError:
        env["torch"] = None
    return env


# ------------------------------------------------------------------------------ equivalence
def equivalence(a) -> dict:
    """The suite's train and pmi_block check losses on the CPU and on the default device."""
    import jax
    import numpy as np
    from jax.sharding import Mesh

    from benchmarks import run, suite

    bench_args = run.parse_args(suite_argv(a, "train"))
    devices = {"cpu": jax.devices("cpu")[0], "device": jax.devices()[0]}
    rows = []
    for name in ("train", "pmi_block"):
        losses = {}
        for where, dev in devices.items():
            with jax.default_device(dev), jax.default_matmul_precision("highest"):
                case = suite.BENCHMARKS[name](bench_args, Mesh(np.array([dev]), ("data",)), "auto")
            losses[where] = case.check
            del case
        diff = abs(losses["device"] - losses["cpu"]) / max(abs(losses["cpu"]), 1e-12)
        rows.append({"check": name, "what": ("loss after one SGD update" if name == "train" else
                                             f"loss at step {bench_args.chunk} of block "
                                             f"{bench_args.pmi_block}'s Adam solve"),
                     "batch": bench_args.batch, "cpu": losses["cpu"], "device": losses["device"],
                     "rel_diff": diff, "ok": bool(diff <= a.rtol)})
    return {"devices": {k: str(v) for k, v in devices.items()}, "precision": "highest",
            "rtol": a.rtol, "rows": rows, "ok": all(r["ok"] for r in rows)}


# -------------------------------------------------------------------------------- PMI run
class _StopRun(Exception):
    """Ends the timed run once it has measured what the extrapolation needs."""


def stand_in_dir(a) -> str:
    """Where the generated CIFAR-100 files of these sizes live (kept between runs)."""
    return os.path.join(tempfile.gettempdir(), "dfcl_jax_device_check",
                        f"cifar100_{a.train_per_class}_{a.test_per_class}")


def start_stand_in(a, log_path: str) -> subprocess.Popen:
    """Write the generated CIFAR-100 files in a background process (reused when present)."""
    with open(log_path, "a") as log:
        return subprocess.Popen([sys.executable, "-c", STAND_IN_CODE, stand_in_dir(a),
                                 str(a.train_per_class), str(a.test_per_class)],
                                stdout=log, stderr=subprocess.STDOUT)


def pmi_configs(a):
    """(reference config, timed config): the timed one has `--pmi-epochs` epochs per phase, one
    micro-batch of targets after the first task, and reads the generated files."""
    from experiments import cifar100_pmi

    arg = "tasks=10" + (",smoke" if a.tiny else "")
    ref, timed = cifar100_pmi.get_config(arg), cifar100_pmi.get_config(arg)
    timed.data.update({"stand_in": "", "data_dir": stand_in_dir(a)})
    timed.train.update({"epochs": a.pmi_epochs, "first_task_epochs": a.pmi_epochs})
    for key, value in timed.method.items():
        if key.endswith("_epochs") and isinstance(value, int) and value > 0:
            timed.method[key] = a.pmi_epochs
    p = timed.method.pmi
    p.targets_base = max(p.micro_batch - p.targets_per_task, 1)
    timed.runtime.progress = False
    timed.checkpoint.every_epochs = 10**6  # a checkpoint after each task only
    return ref, timed


def timed_pmi_run(config, workdir: str, stop_task: int = 1) -> dict:
    """Run `config` until task `stop_task`'s end of task, timing every epoch, end of task,
    inversion (its compilation apart: `PMIInverter.warmup`), evaluation and checkpoint."""
    from dfcl_jax.train.loop import ContinualRun, build_experiment
    from dfcl_jax.train.schedule import locate

    t0 = time.perf_counter()
    exp = build_experiment(config, workdir)
    run = ContinualRun(exp)
    rec = {"setup_s": time.perf_counter() - t0, "epochs": [], "end_task": [], "inversion": [],
           "evaluate": [], "save": []}
    source = exp.method.source
    inverter, train_epoch, evaluate, save, end_task = (
        source.inverter, run.train_epoch, run.evaluate, run.save, exp.method.end_task)
    invert = inverter.invert

    def timed_epoch(*args, **kw):
        phases = exp.method.phases(config.train, run.task)
        name = phases[locate(phases, run.epoch)[0]].name
        t = time.perf_counter()
        train_epoch(*args, **kw)
        rec["epochs"].append({"task": run.task, "phase": name, "s": time.perf_counter() - t})

    def timed_end_task(run_state, task, task_data):
        if task >= stop_task:
            raise _StopRun
        t = time.perf_counter()
        out = end_task(run_state, task, task_data)
        rec["end_task"].append({"task": task, "s": time.perf_counter() - t})
        return out

    def timed_invert(variables, z, image_shape, rng, progress=True):
        compile_s = 0.0 if rec["inversion"] else inverter.warmup(variables, z, image_shape)
        t = time.perf_counter()
        result = invert(variables, z, image_shape, rng, progress)
        rec["inversion"].append({"targets": int(z.shape[0]),
                                 "micro_batches": inverter.micro_batches(z.shape[0])[0],
                                 "compile_s": compile_s, "s": time.perf_counter() - t})
        return result

    def timed_evaluate(task):
        t = time.perf_counter()
        evaluate(task)
        rec["evaluate"].append({"task": task, "s": time.perf_counter() - t})

    def timed_save():
        t = time.perf_counter()
        save()
        rec["save"].append({"task": run.task, "s": time.perf_counter() - t})

    run.train_epoch, run.evaluate, run.save = timed_epoch, timed_evaluate, timed_save
    exp.method.end_task = timed_end_task
    inverter.invert = timed_invert
    try:
        run.run()
    except _StopRun:
        pass
    finally:
        run.logger.close()
        run.ckpt.close()
    rec["wall_s"] = time.perf_counter() - t0
    return rec


def extrapolate(ref, rec: dict) -> dict:
    """The reference run's wall clock from the timed first task (and second task's training).

    Per training phase, the fastest timed epoch (the first one includes compilation); tasks
    after the second train as fast as the second. The end-of-task feature model (class
    statistics, encoders, CFS) and the evaluation scale with the seen classes (task t: t + 1
    times the first task's); the inversion with its micro-batches (the first inversion's eager
    random draws still compile: seconds on XLA:CPU); one checkpoint per task."""
    from dfcl_jax.methods import get_method

    method = get_method(ref.method)
    T, p = ref.data.num_tasks, ref.method.pmi
    epoch_s: dict[tuple[int, str], list[float]] = {}
    for e in rec["epochs"]:
        epoch_s.setdefault((e["task"], e["phase"]), []).append(e["s"])
    per_epoch = {k: min(v) for k, v in epoch_s.items()}
    inv = rec["inversion"][0]
    g = inv["s"] / inv["micro_batches"]
    F = rec["end_task"][0]["s"] - inv["compile_s"] - inv["s"]
    E, C = rec["evaluate"][0]["s"], max(x["s"] for x in rec["save"])  # C: the slowest save
    train_terms = [{"task": t, "phase": ph.name, "epochs": ph.epochs,
                    "s_per_epoch": per_epoch[(min(t, 1), ph.name)]}
                   for t in range(T) for ph in method.phases(ref.train, t)]
    groups = [math.ceil((p.targets_base + p.targets_per_task * (t + 1)) / p.micro_batch)
              for t in range(T - 1)]
    seen = T * (T + 1) // 2  # sum over tasks of (t + 1): the seen classes in units of a task's
    parts = {"setup_s": rec["setup_s"],
             "compile_s": sum(v[0] - min(v) for v in epoch_s.values()) + inv["compile_s"],
             "train_s": sum(x["epochs"] * x["s_per_epoch"] for x in train_terms),
             "feature_model_s": seen * F, "inversion_s": sum(groups) * g,
             "evaluate_s": seen * E, "checkpoint_s": T * C}
    total = sum(parts.values())
    formula = "\n".join([
        "total = setup + compile + sum_t sum_phase epochs(t, phase) * s_epoch(min(t, 1), phase)"
        f" + sum_t (t + 1) F + sum_(t < {T - 1}) G_t g + sum_t (t + 1) E + {T} C",
        f"  F = {F:.2f} s (first end of task without the inversion), g = {g:.2f} s per inverted "
        f"micro-batch of {p.micro_batch}, G_t = ceil(({p.targets_base} + {p.targets_per_task} "
        f"(t + 1)) / {p.micro_batch}) = {groups}, E = {E:.2f} s (first evaluation), "
        f"C = {C:.2f} s per checkpoint (slowest timed), sum_t (t + 1) = {seen}",
        "  = " + " + ".join(f"{v:.0f}" for v in parts.values())
        + f" = {total:.0f} s = {total / 3600:.2f} h"])
    return {"tasks": T, "parts": parts, "total_s": total, "total_h": total / 3600,
            "per_epoch": [{"task": k[0], "phase": k[1], "s": v} for k, v in per_epoch.items()],
            "train_terms": train_terms, "inversion_per_micro_batch_s": g, "micro_batches": groups,
            "feature_model_s": F, "evaluate_s": E, "checkpoint_s": C, "formula": formula}


def pmi_run(a, stand_in: subprocess.Popen) -> dict:
    """Time the first task of the reference PMI run (and the second's training), extrapolate."""
    ref, timed = pmi_configs(a)
    t = time.perf_counter()
    if stand_in.wait() != 0:
        raise RuntimeError("writing the generated CIFAR-100 files failed (see device_check.log)")
    waited = time.perf_counter() - t
    with tempfile.TemporaryDirectory(prefix="dfcl_jax_device_check_run_") as workdir:
        rec = timed_pmi_run(timed, workdir)
    return {"config": "experiments/cifar100_pmi.py:tasks=10" + (",smoke" if a.tiny else ""),
            "timed_epochs_per_phase": a.pmi_epochs, "train_per_class": a.train_per_class,
            "waited_for_data_s": waited, "measured": rec, "extrapolated": extrapolate(ref, rec)}


# ---------------------------------------------------------------------------------- suite
def suite(a, deadline: float, log) -> dict:
    """`benchmarks.run` benchmark by benchmark at `a.batch` until the deadline."""
    from benchmarks import run
    from benchmarks import suite as suite_lib

    names = list(SUITE_TINY if a.tiny else suite_lib.BENCHMARKS)
    rows, skipped = [], []
    for name in names:
        if time.time() > deadline:
            skipped.append(name)
            continue
        print(f"  suite: {name}", flush=True)
        with contextlib.redirect_stdout(log):
            rows += run.main(suite_argv(a, name))
    return {"argv": suite_argv(a, ",".join(names)), "rows": rows, "skipped": skipped}


def torch_side_by_side(a, log) -> dict:
    """Hook for issue 17: `benchmarks.run --vs-torch` on this machine, when torch is importable."""
    from benchmarks import run

    if "vs_torch" not in vars(run):
        return {"skipped": "benchmarks.run has no --vs-torch"}
    try:
        import torch  # noqa: F401
    except ImportError:
        return {"skipped": "torch is not importable"}
    argv = ["--vs-torch", *suite_argv(a, TORCH_ONLY_TINY if a.tiny else TORCH_ONLY)]
    with contextlib.redirect_stdout(log):
        rows = run.main(argv)
    return {"argv": argv, "rows": rows}


# -------------------------------------------------------------------------------- summary
def markdown(summary: dict) -> str:
    """The human-readable summary of every section."""
    from benchmarks import run

    env = summary["environment"]
    v = env["versions"]
    lines = ["# Device check" + (" (tiny)" if summary["tiny"] else ""), "",
             f"{summary['time']}; {env['platform']}: {env['device_kind']} x{len(env['devices'])} "
             f"on {env['host']} ({env['cpu_count']} CPUs); wall {summary['wall_s']:.0f} s", "",
             "Python " + env["python"] + "; " + ", ".join(f"{k} {x}" for k, x in v.items() if x)
             + "; torch " + (f"{env['torch']['version']} ({env['torch']['device']})"
                             if env["torch"] else "absent"),
             f"Loop defaults (\"auto\"): unroll={env['loop_defaults']['unroll']}, "
             f"chunk={env['loop_defaults']['chunk']}; conv_impl={env['conv_impl']}"]
    eq = summary.get("equivalence")
    if eq:
        lines += ["", f"## CPU vs {env['platform']} (matmul precision {eq['precision']}, "
                      f"rtol {eq['rtol']:g})", "",
                  "| check | what | batch | CPU loss | device loss | rel. diff | ok |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {r['check']} | {r['what']} | {r['batch']} | {r['cpu']:.6f} "
                  f"| {r['device']:.6f} | {r['rel_diff']:.1e} | {'yes' if r['ok'] else 'NO'} |"
                  for r in eq["rows"]]
    pmi = summary.get("pmi_run")
    if pmi:
        x = pmi["extrapolated"]
        lines += ["", f"## PMI run, {x['tasks']} tasks ({pmi['config']}), extrapolated from "
                      f"{pmi['timed_epochs_per_phase']} timed epochs per phase", "",
                  "| part | s |", "|---|---|"]
        lines += [f"| {k[:-2]} | {s:.1f} |" for k, s in x["parts"].items()]
        lines += [f"| **total** | **{x['total_s']:.0f} ({x['total_h']:.2f} h)** |", "",
                  "| task | phase | s per epoch |", "|---|---|---|"]
        lines += [f"| {e['task'] + 1} | {e['phase']} | {e['s']:.2f} |" for e in x["per_epoch"]]
        lines += ["", "```", x["formula"], "```"]
    st = summary.get("suite")
    if st and st["rows"]:
        lines += ["", f"## Benchmark suite (`python -m benchmarks.run {' '.join(st['argv'])}`)",
                  "", run.table(st["rows"], summary["device"])]
        if st["skipped"]:
            lines += ["", "Skipped (time budget): " + ", ".join(st["skipped"])]
    tc = summary.get("torch")
    if tc:
        lines += ["", "## PyTorch side by side (the reference runs on the CPU)", "",
                  tc["skipped"] if "skipped" in tc else run.vs_torch_table(
                      tc["rows"], [f"`python -m benchmarks.run {' '.join(tc['argv'])}`"])]
    if summary["skipped"] or summary["errors"]:
        lines += ["", "## Not run", ""]
        lines += [f"- {k}: skipped" for k in summary["skipped"]]
        lines += [f"- {k}: {e.splitlines()[-1]}" for k, e in summary["errors"].items()]
    return "\n".join(lines)


def main(argv=None) -> int:
    a = parse_args(argv)
    start = time.time()
    deadline = start + a.budget_s
    import jax

    from benchmarks.common import device_description

    out = a.out or os.path.join("benchmarks", "results", f"device_check_{jax.default_backend()}"
                                + ("_tiny" if a.tiny else ""))
    os.makedirs(out, exist_ok=True)
    log_path = os.path.join(out, "device_check.log")
    open(log_path, "w").close()
    stand_in = start_stand_in(a, log_path) if "pmi_run" not in a.skip else None
    summary = {"time": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "tiny": a.tiny,
               "args": {k: sorted(v) if isinstance(v, set) else v for k, v in vars(a).items()},
               "device": device_description(), "environment": environment(),
               "skipped": [], "errors": {}}
    print(f"# device check on {summary['device']}", flush=True)
    with open(log_path, "a") as log:
        steps = {"equivalence": lambda: equivalence(a),
                 "pmi_run": lambda: pmi_run(a, stand_in),
                 "suite": lambda: suite(a, deadline, log),
                 "torch": lambda: torch_side_by_side(a, log)}
        for name in SECTIONS:
            if name in a.skip or (name == "torch" and time.time() > deadline):
                summary["skipped"].append(name)
                continue
            t = time.perf_counter()
            print(f"- {name} ...", flush=True)
            try:
                summary[name] = steps[name]()
            except (Exception, SystemExit):  # benchmarks.run exits on bad arguments
                summary["errors"][name] = traceback.format_exc()
                print(summary["errors"][name], file=sys.stderr, flush=True)
            print(f"  {name}: {time.perf_counter() - t:.1f} s", flush=True)
    if stand_in is not None and stand_in.poll() is None:  # pmi_run failed before using it
        stand_in.terminate()
    summary["wall_s"] = time.time() - start
    if "suite" in summary:
        with open(os.path.join(out, "suite.json"), "w") as f:
            json.dump({"device": summary["device"], **summary["suite"]}, f, indent=1)
    with open(os.path.join(out, "device_check.json"), "w") as f:
        json.dump(summary, f, indent=1)
    text = markdown(summary)
    with open(os.path.join(out, "device_check.md"), "w") as f:
        f.write(text + "\n")
    print("\n" + text)
    failed = summary["errors"] or not summary.get("equivalence", {"ok": True})["ok"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
