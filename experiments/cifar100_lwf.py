"""LwF (mu = 1, KD temperature 2) on CIFAR-100, ResNet-32, ABD schedule.

    python -m experiments.run --config=experiments/cifar100_lwf.py:tasks=10,seed=0 --workdir=DIR

Expected A_N (ABD Table 1): 5 tasks 17.0 +- 0.1, 10 tasks 9.2 +- 0.0, 20 tasks 4.7 +- 0.1.
Wall-clock: not measured yet. `:smoke` runs in seconds on generated cifar100-format data.
"""

from experiments.cifar100_base import get_cifar100_config


def get_config(arg=None):
    return get_cifar100_config(arg, "lwf", mu=1.0, temperature=2.0)
