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
"""

from __future__ import annotations

import argparse
import json
import math
import os
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
    a = p.parse_args(argv)
    a.targets = a.targets or a.batch
    return a


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


def main(argv=None) -> list[dict]:
    a = parse_args(argv)
    if a.devices:
        set_device_count(a.devices)
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
        build = suite.BENCHMARKS[name]
        variants = impls if name in suite.CONV else impls[:1]
        load0 = os.getloadavg()[0]
        cases = []
        for impl in variants:
            case = build(a, mesh, impl)
            if len(variants) > 1:
                case.name = f"{name}[{impl}]"
            cases.append(case)
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
