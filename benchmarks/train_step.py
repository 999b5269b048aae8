"""ResNet-32 train and eval steps: `python -m benchmarks.run --only train,eval` (kept as a shortcut).

    python -m benchmarks.train_step [--batch 128] [--steps 20] [any benchmarks.run flag]
"""

from __future__ import annotations

import sys

from benchmarks import run


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    return run.main(["--only", "train,eval", *argv])


if __name__ == "__main__":
    main()
