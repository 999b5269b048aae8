"""LwF.MC (sigmoid/BCE distillation, iCaRL without exemplars) on CIFAR-100, ResNet-32, ABD schedule.

    python -m experiments.run --config=experiments/cifar100_lwf_mc.py:tasks=10,seed=0 --workdir=DIR

Expected A_N (ABD Table 1): 5 tasks 32.5 +- 1.0, 10 tasks 17.1 +- 0.1, 20 tasks 7.7 +- 0.5.
Wall-clock: not measured yet. `:smoke` runs in seconds on generated cifar100-format data:
    python -m experiments.run --config=experiments/cifar100_lwf_mc.py:smoke --workdir=/tmp/smoke
"""

from experiments.cifar100_base import get_cifar100_config


def get_config(arg=None):
    return get_cifar100_config(arg, "lwf_mc")
