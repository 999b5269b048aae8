"""The benchmark suite: compile time, ms per step, images/s, XLA FLOPs and memory of every hot path.

    python -m benchmarks.run [--only train,eval,...] [--json out.json] [--batch 128] [--steps 20]
                             [--devices N] [--conv-impl auto|xla|materialized|xla,materialized]

Benchmarks (see benchmarks/suite.py): train, eval, deepinversion, abd_generator, abd_student,
pmi_block, pmi_per_layer, pmi_full, cfs, feature_model. Each is compiled (timed), warmed up, then
timed over `--steps` steps blocking on every call (chunked inversion loops: per chunk of
`--chunk` steps; the PMI phases and feature-model fitting: `--phase-repeats` whole runs). With
several `--conv-impl` values the variants are timed interleaved, call by call, in this process.
`--devices N` fakes N CPU devices (XLA_FLAGS, set before JAX starts) and shards batches over them.
Prints a table and, with `--json`, writes every row.

    python -m benchmarks.run --vs-torch [--only train,deepinversion,abd_generator] [--json out.json]

`--vs-torch` (needs the `bench` extra, PyTorch CPU) times each benchmark's JAX step and the
PyTorch reference of the same operations (`benchmarks/torch_reference.py`: train,
deepinversion, abd_generator, abd_student, pmi_block, pmi_full) interleaved call by call in this
process, after warming both up, with torch on as many threads as XLA:CPU uses
(`--torch-threads`); it prints ms per step (median, p25-p75) of each side and the ratio
ours/PyTorch, and `--json` adds the date, machine, load averages and versions.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time

REFERENCE_NOTE = "PyTorch 2.13 CPU reference, 2 threads, batch 128 (issue 7)"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--only", default="", help="comma-separated benchmark names (default: all)")
    p.add_argument("--json", default="", help="write the results here")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=20, help="timed steps per benchmark")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls after compilation")
    p.add_argument("--chunk", type=int, default=10, help="unrolled steps per inversion chunk")
    p.add_argument("--devices", type=int, default=0, help="fake this many CPU devices (0: as is)")
    p.add_argument("--conv-impl", default="auto", help="auto, xla, materialized or a list")
    p.add_argument("--targets", type=int, default=0, help="PMI targets (default: --batch)")
    p.add_argument("--pmi-block", type=int, default=1, help="block of the one-block solve")
    p.add_argument("--pmi-block-steps", type=int, default=50, help="per-layer steps per block")
    p.add_argument("--pmi-full-steps", type=int, default=160, help="full-model phase steps")
    p.add_argument("--phase-repeats", type=int, default=2, help="timed runs of the long phases")
    p.add_argument("--classes", type=int, default=10, help="classes for CFS / feature fitting")
    p.add_argument("--per-class", type=int, default=500, help="features (targets) per class")
    p.add_argument("--encoder-epochs", type=int, default=20, help="contrastive encoder epochs")
    p.add_argument("--vs-torch", action="store_true",
                   help="time each step against its PyTorch reference, interleaved (bench extra)")
    p.add_argument("--torch-threads", type=int, default=0,
                   help="torch intra-op threads for --vs-torch (0: as XLA:CPU, the usable cores)")
    p.add_argument("--torch-channels-last", action="store_true",
                   help="--vs-torch: torch models and inputs in channels_last memory format")
    a = p.parse_args(argv)
    a.targets = a.targets or a.batch
    return a


def build_cases(name: str, a, mesh, impls: list[str]) -> tuple[list, list[str]]:
    """(cases, their convolution implementations) of benchmark `name`: one per implementation
    for the convolutional benchmarks, else one (named `name[impl]` when several are compared)."""
    from benchmarks import suite

    variants = impls if name in suite.CONV else impls[:1]
    cases = []
    for impl in variants:
        case = suite.BENCHMARKS[name](a, mesh, impl)
        if len(variants) > 1:
            case.name = f"{name}[{impl}]"
        cases.append(case)
    return cases, variants


def set_device_count(n: int) -> None:
    """Fake `n` CPU devices; must run before JAX initialises its backends."""
    if "jax" in sys.modules:
        from jax._src import xla_bridge
        if xla_bridge.backends_are_initialized():
            raise RuntimeError("--devices must be set before JAX starts (run benchmarks.run as main)")
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
             if not f.startswith("--xla_force_host_platform_device_count")]
    flags += [f"--xla_force_host_platform_device_count={n}",
              "--xla_cpu_collective_call_terminate_timeout_seconds=30"]
    os.environ["XLA_FLAGS"] = " ".join(flags)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")


def table(rows: list[dict], device: str) -> str:
    """A Markdown table of the result rows, with ratios to the PyTorch reference."""
    from benchmarks.suite import REFERENCE_BATCH, REFERENCE_MS

    head = ("| benchmark | batch | ms/step median (min-max) | images/s | GFLOP/step | GFLOP/s "
            "| compile s | memory MB | PyTorch ms | ratio |")
    lines = [f"Device: {device}", "", head, "|" + "---|" * 10]
    for r in rows:
        base = r["benchmark"].split("[")[0]
        ref = REFERENCE_MS.get(base) if r.get("batch") == REFERENCE_BATCH else None
        gf = r.get("gflop_per_step")
        ratio = f"{r['median_ms'] / ref:.2f}" if ref else "-"
        lines.append(
            f"| {r['benchmark']} | {r.get('batch', '')} | {r['median_ms']:.1f} "
            f"({r['min_ms']:.1f}-{r['max_ms']:.1f}) | {r['images_per_s']:.0f} "
            f"| {gf if gf is not None else '-'} | {r.get('gflop_per_s', '-')} "
            f"| {r['compile_s']:.1f} | {r.get('memory_mb') or '-'} "
            f"| {ref if ref else '-'} | {ratio} |")
    return "\n".join(lines)


TORCH_MISSING = ("--vs-torch needs PyTorch, which is not importable here ({err}). Install the "
                 "project's `bench` extra: pip install -e '.[bench]' (a CPU build of torch; with "
                 "a CUDA build pulled in instead, pip install torch==2.13.0 takes the CPU wheel "
                 "where one is on disk).")


def machine_info() -> dict:
    """nproc, usable cores and CPU model (/proc/cpuinfo) of this machine."""
    model = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f
                          if line.startswith("model name")), model)
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"nproc": os.cpu_count(), "usable_cores": usable, "cpu_model": model,
            "host": platform.node()}


def _spread(ms) -> dict:
    import numpy as np

    q = np.percentile(np.asarray(ms, float), [0, 25, 50, 75, 100])
    return dict(zip(("min_ms", "p25_ms", "median_ms", "p75_ms", "max_ms"),
                    (round(float(v), 2) for v in q)))


def vs_torch_table(rows: list[dict], header: list[str]) -> str:
    """A Markdown table of --vs-torch rows: ms per step of both sides and ours/PyTorch."""
    lines = header + ["", "| benchmark | batch | ours ms/step median (p25-p75) "
                      "| PyTorch ms/step median (p25-p75) | ratio ours/PyTorch "
                      "| per-call ratio median (p25-p75) | calls x steps |", "|" + "---|" * 7]
    for r in rows:
        o, t, p = r["ours"], r["torch"], r["paired_ratio"]
        lines.append(
            f"| {r['benchmark']} | {r['batch']} | {o['median_ms']:.1f} ({o['p25_ms']:.1f}-"
            f"{o['p75_ms']:.1f}) | {t['median_ms']:.1f} ({t['p25_ms']:.1f}-{t['p75_ms']:.1f}) "
            f"| {r['ratio']:.2f} | {p['median']:.2f} ({p['p25']:.2f}-{p['p75']:.2f}) "
            f"| {r['calls']} x {r['steps_per_call']} |")
    return "\n".join(lines)


def vs_torch(a) -> list[dict]:
    """`--vs-torch`: each JAX step and its PyTorch reference, interleaved in this process."""
    try:
        import torch
    except ImportError as e:
        raise SystemExit(TORCH_MISSING.format(err=e)) from None
    import jax
    import jaxlib
    import numpy as np

    from benchmarks import suite
    from benchmarks import torch_reference as ref
    from benchmarks.common import device_description, time_cases
    from dfcl_jax.train import mesh as mesh_lib

    names = [n for n in a.only.split(",") if n] or list(ref.BUILDERS)
    unknown = [n for n in names if n not in ref.BUILDERS]
    if unknown:
        raise SystemExit(f"no PyTorch reference for {unknown}; --vs-torch allows: "
                         f"{', '.join(ref.BUILDERS)}")
    if jax.default_backend() != "cpu":
        print(f"# note: JAX runs on {jax.default_backend()}, the PyTorch reference on the CPU",
              flush=True)
    threads = ref.set_threads(a.torch_threads or None)
    ref.CHANNELS_LAST = a.torch_channels_last
    memory = "channels_last" if a.torch_channels_last else "NCHW contiguous"
    impls = [i for i in a.conv_impl.split(",") if i]
    mesh = mesh_lib.make_mesh()
    if a.batch % mesh.size or a.targets % mesh.size:
        raise SystemExit(f"--batch {a.batch} and --targets {a.targets} must divide over "
                         f"{mesh.size} devices")
    machine, load_before = machine_info(), os.getloadavg()
    date = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    versions = {"jax": jax.__version__, "jaxlib": jaxlib.__version__, "torch": torch.__version__,
                "python": platform.python_version()}
    device = device_description()
    header = [f"Date: {date}; JAX device: {device}",
              f"Machine: {machine['nproc']} CPUs ({machine['usable_cores']} usable), "
              f"{machine['cpu_model']}",
              f"jax {versions['jax']}, torch {versions['torch']} with {threads} threads "
              f"(torch.set_num_threads; XLA:CPU uses {ref.xla_cpu_threads()}), torch memory "
              f"format {memory}, float32, interleaved call by call after warm-up",
              "Load average before: " + ", ".join(f"{v:.2f}" for v in load_before)]
    print("# " + "\n# ".join(header), flush=True)
    rows = []
    for name in names:
        load0 = os.getloadavg()
        cases, variants = build_cases(name, a, mesh, impls)
        per_call = cases[0].steps_per_call
        torch_case = ref.BUILDERS[name](a, per_call)
        calls = (a.phase_repeats if name in suite.PHASES
                 else max(math.ceil(a.steps / per_call), 3 if per_call > 1 else 1))
        times = time_cases(cases + [torch_case], calls, max(a.warmup, 1))
        theirs = times[torch_case.name]
        for case, impl in zip(cases, variants):
            ours = times[case.name]
            paired = np.asarray(ours) / np.asarray(theirs)
            q = np.percentile(paired, [25, 50, 75])
            row = {"benchmark": case.name, "conv_impl": impl, "calls": calls,
                   "steps_per_call": per_call,
                   "batch": a.targets if name.startswith("pmi") else a.batch,
                   "images_per_step": case.images_per_step, "ours": _spread(ours),
                   "torch": _spread(theirs),
                   "paired_ratio": {"p25": round(float(q[0]), 3), "median": round(float(q[1]), 3),
                                    "p75": round(float(q[2]), 3)},
                   "compile_s": round(case.compile_s, 2),
                   "ours_ms_per_call": [round(v, 2) for v in ours],
                   "torch_ms_per_call": [round(v, 2) for v in theirs],
                   "load_before": [round(v, 2) for v in load0],
                   "load_after": [round(v, 2) for v in os.getloadavg()]}
            row["ratio"] = round(row["ours"]["median_ms"] / row["torch"]["median_ms"], 3)
            rows.append(row)
            print(json.dumps(row), flush=True)
        del cases, torch_case
    load_after = os.getloadavg()
    header.append("Load average after: " + ", ".join(f"{v:.2f}" for v in load_after))
    print("\n" + vs_torch_table(rows, header))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"date": date, "device": device, "machine": machine,
                       "load_before": [round(v, 2) for v in load_before],
                       "load_after": [round(v, 2) for v in load_after], "versions": versions,
                       "torch_threads": threads, "xla_cpu_threads": ref.xla_cpu_threads(),
                       "torch_memory_format": memory,
                       "args": vars(a), "rows": rows}, f, indent=1)
    return rows


def main(argv=None) -> list[dict]:
    a = parse_args(argv)
    if a.devices:
        set_device_count(a.devices)
    if a.vs_torch:
        return vs_torch(a)
    import jax

    from benchmarks import suite
    from benchmarks.common import device_description, summarize, time_cases
    from dfcl_jax.train import mesh as mesh_lib

    names = [n for n in a.only.split(",") if n] or list(suite.BENCHMARKS)
    unknown = [n for n in names if n not in suite.BENCHMARKS]
    if unknown:
        raise SystemExit(f"unknown benchmarks {unknown}; allowed: {', '.join(suite.BENCHMARKS)}")
    impls = [i for i in a.conv_impl.split(",") if i]
    mesh = mesh_lib.make_mesh()
    if a.batch % mesh.size or a.targets % mesh.size:
        raise SystemExit(f"--batch {a.batch} and --targets {a.targets} must divide over "
                         f"{mesh.size} devices")
    device = device_description()
    print(f"# {device}; load average {os.getloadavg()}", flush=True)
    rows = []
    for name in names:
        load0 = os.getloadavg()[0]
        cases, variants = build_cases(name, a, mesh, impls)
        per_call = cases[0].steps_per_call
        calls = (a.phase_repeats if name in suite.PHASES
                 else max(math.ceil(a.steps / per_call), 3 if per_call > 1 else 1))
        times = time_cases(cases, calls, a.warmup if name not in suite.PHASES else 0)
        for case, impl in zip(cases, variants):
            row = summarize(case, times[case.name])
            batch = (a.targets if name.startswith("pmi") else
                     case.images_per_step if name in ("cfs", "feature_model") else a.batch)
            row.update(batch=batch,
                       conv_impl=impl, devices=jax.device_count(),
                       load_before=round(load0, 2), load_after=round(os.getloadavg()[0], 2))
            rows.append(row)
            print(json.dumps(row), flush=True)
        del cases
    out = table(rows, device)
    print("\n" + out)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"device": device, "time": time.strftime("%Y-%m-%d %H:%M:%S"),
                       "args": vars(a), "reference": REFERENCE_NOTE, "rows": rows}, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
