"""Scaling over fake CPU devices: the train step and the PMI one-block solve on 1, 2, 4, 8 devices.

    python -m benchmarks.scaling [--devices 1,2,4,8] [--json out.json] [benchmarks.run flags]

Each device count runs in its own process (the count is fixed when JAX starts). The batch is
sharded over the devices; the results must agree: the loss after the first train step and after
the first PMI chunk may differ between device counts only by float32 reduction order (`--rtol`).
On a CPU host the fake devices share the same cores, so times show the cost of sharding, not a
speed-up.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--devices", default="1,2,4,8")
    p.add_argument("--only", default="train,pmi_block")
    p.add_argument("--json", default="")
    p.add_argument("--rtol", type=float, default=1e-4)
    a, rest = p.parse_known_args(argv)
    counts = [int(n) for n in a.devices.split(",")]
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in counts:
            path = os.path.join(tmp, f"{n}.json")
            cmd = [sys.executable, "-m", "benchmarks.run", "--only", a.only, "--devices", str(n),
                   "--json", path, *rest]
            print("#", " ".join(cmd), flush=True)
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            with open(path) as f:
                runs[n] = {r["benchmark"]: r for r in json.load(f)["rows"]}
    base = counts[0]
    lines = ["| benchmark | devices | ms/step median | images/s | check | rel. diff to "
             f"{base} device(s) |", "|---|---|---|---|---|---|"]
    agree = True
    for name in runs[base]:
        ref = runs[base][name].get("check")
        for n in counts:
            r = runs[n][name]
            diff = abs(r["check"] - ref) / max(abs(ref), 1e-12) if ref is not None else 0.0
            agree &= diff <= a.rtol
            lines.append(f"| {name} | {n} | {r['median_ms']:.1f} | {r['images_per_s']:.0f} "
                         f"| {r.get('check')} | {diff:.2e} |")
    print("\n".join(lines))
    print(f"results agree across device counts (rtol {a.rtol}): {agree}")
    out = {"runs": {str(n): list(v.values()) for n, v in runs.items()}, "agree": agree,
           "rtol": a.rtol}
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)
    if not agree:
        raise SystemExit("results differ between device counts")
    return out


if __name__ == "__main__":
    main()
