"""Privacy / data-free audit of a run: `python -m experiments.audit --workdir=DIR [--data-free-check]`.

(a) Scans every checkpoint and artefact of the run in DIR for per-sample real images (exact or
near copies of real training images) and reports what persisted; exit status 1 when a data-free
learner persisted any (coreset baselines store real images by design: the labelled exception,
exit 0), or, with `--data-free-check`, when the run persisted any real image at all.
(b) For synthetic images (the learner's replay sampler, stored synthetic buffers), the distance to
the nearest real training image versus the typical real-to-real nearest distance (memorisation
ratio), with the closest pairs as PNGs. Writes DIR/audit/audit.{json,md} and prints the Markdown.
"""

from __future__ import annotations

import argparse
import logging
import sys


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.audit", description=__doc__.split("\n")[0])
    p.add_argument("--workdir", required=True, help="the run's workdir (with config.json)")
    p.add_argument("--data-free-check", "--data_free_check", dest="strict", action="store_true",
                   help="fail (exit 1) whenever real images persisted, coreset baselines included")
    p.add_argument("--num-synthetic", "--num_synthetic", dest="num_synthetic", type=int,
                   default=256, help="synthetic images drawn from the learner's sampler")
    p.add_argument("--near-tol", "--near_tol", dest="near_tol", type=float, default=0.02,
                   help="RMS pixel distance in [0, 1] up to which a row counts as a real image")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.num_synthetic <= 0:
        p.error(f"--num-synthetic={args.num_synthetic} must be > 0")
    if args.near_tol < 0:
        p.error(f"--near-tol={args.near_tol} must be >= 0")
    logging.getLogger("absl").setLevel(logging.WARNING)

    from dfcl_jax.data.sources import DataError
    from dfcl_jax.metrics.audit import audit_run, format_report
    from dfcl_jax.train.checkpoint import CheckpointError
    from dfcl_jax.train.validate import ConfigError

    try:
        report = audit_run(args.workdir, strict=args.strict, num_synthetic=args.num_synthetic,
                           near_tol=args.near_tol, seed=args.seed)
    except (ConfigError, DataError, CheckpointError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_report(report))
    return 1 if report["verdict"] == "fail" else 0


if __name__ == "__main__":
    sys.exit(main())
