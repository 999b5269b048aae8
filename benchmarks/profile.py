"""Where a benchmark's time goes: per-operation times from a `jax.profiler` trace, and its HLO.

    python -m benchmarks.profile [--only train] [--conv-impl xla,materialized] [--calls 2]
                                 [--hlo-dir DIR] [benchmarks.run flags]

Builds the cases of `benchmarks.run`, traces `--calls` calls of each, and prints the time of every
XLA operation category (the fusion name without its number: `transpose_copy_fusion`,
`ynn_fusion` = YNNPACK convolutions and reductions, `convolution` = Eigen, ...) summed over the
XLA:CPU worker threads, in ms per call. Times are thread time (a call spread over 2 threads sums
both), so compare categories and variants, not against wall time.
"""

from __future__ import annotations

import collections
import glob
import os
import re
import sys
import tempfile


def op_times(trace_dir: str, calls: int) -> tuple[collections.Counter, collections.Counter]:
    """(ms per call by category, ms per call by operation) from the XLA:CPU worker threads."""
    from jax._src.lib import _profile_data  # the xplane reader jax.profiler writes for

    path = sorted(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True))[-1]
    data = _profile_data.ProfileData.from_file(path)
    by_cat, by_op = collections.Counter(), collections.Counter()
    for plane in data.planes:
        for line in plane.lines:
            if "Eigen" not in line.name:
                continue
            for ev in line.events:
                if ev.name.startswith(("ThunkExecutor", "Slinky", "ThreadpoolListener")):
                    continue
                ms = ev.duration_ns / 1e6 / calls
                by_cat[re.sub(r"\.\d+$", "", ev.name)] += ms
                by_op[ev.name] += ms
    return by_cat, by_op


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    calls, hlo_dir, top = 2, "", 15
    for flag in ("--calls", "--hlo-dir", "--top"):
        if flag in argv:
            i = argv.index(flag)
            value = argv[i + 1]
            del argv[i:i + 2]
            calls = int(value) if flag == "--calls" else calls
            top = int(value) if flag == "--top" else top
            hlo_dir = value if flag == "--hlo-dir" else hlo_dir
    from benchmarks import run

    a = run.parse_args(argv)
    if a.devices:
        run.set_device_count(a.devices)
    import jax

    from benchmarks import suite
    from dfcl_jax.train import mesh as mesh_lib

    mesh = mesh_lib.make_mesh()
    names = [n for n in a.only.split(",") if n] or ["train"]
    for name in names:
        for impl in [i for i in a.conv_impl.split(",") if i]:
            case = suite.BENCHMARKS[name](a, mesh, impl)
            jax.block_until_ready(case.call())
            with tempfile.TemporaryDirectory() as tmp:
                jax.profiler.start_trace(tmp)
                for _ in range(calls):
                    jax.block_until_ready(case.call())
                jax.profiler.stop_trace()
                by_cat, by_op = op_times(tmp, calls)
            print(f"\n{name} [{impl}]: {sum(by_cat.values()):.0f} thread-ms per call")
            for cat, ms in by_cat.most_common(top):
                print(f"  {ms:9.1f}  {cat}")
            print("  slowest operations:", ", ".join(f"{k} {v:.1f}" for k, v in
                                                   by_op.most_common(5)))
            if hlo_dir and case.compiled is not None:
                os.makedirs(hlo_dir, exist_ok=True)
                with open(os.path.join(hlo_dir, f"{name}_{impl}.hlo.txt"), "w") as f:
                    f.write(case.compiled.as_text())


if __name__ == "__main__":
    main()
