"""DeepInversion and ABD generator steps: `python -m benchmarks.run --only deepinversion,abd_generator`
(kept as a shortcut).

    python -m benchmarks.inversion_step [--batch 128] [--steps 20] [--chunk 10] [--only di|abd]
"""

from __future__ import annotations

import sys

from benchmarks import run

NAMES = {"": "deepinversion,abd_generator", "di": "deepinversion", "abd": "abd_generator"}


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    only = ""
    if "--only" in argv:
        i = argv.index("--only")
        only = argv[i + 1]
        del argv[i:i + 2]
    if only not in NAMES:
        raise SystemExit(f"--only {only!r}; allowed: di, abd")
    return run.main(["--only", NAMES[only], *argv])


if __name__ == "__main__":
    main()
