"""Upper bound (joint training on all seen tasks) on CIFAR-100, ResNet-32, ABD schedule.

    python -m experiments.run --config=experiments/cifar100_joint.py:tasks=10,seed=0 --workdir=DIR

Expected A_N (ABD Table 1): 69.9 +- 0.2 for 5, 10 and 20 tasks. Its per-task seen-class
accuracies are Omega's denominators: pass `--config.upper_bound_workdir=DIR` to other runs.
Wall-clock: not measured yet. `:smoke` runs in seconds on generated cifar100-format data.
"""

from experiments.cifar100_base import get_cifar100_config


def get_config(arg=None):
    return get_cifar100_config(arg, "joint")
