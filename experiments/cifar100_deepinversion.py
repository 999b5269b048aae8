"""DeepInversion distillation (ABD Eq. 8-9) on CIFAR-100, ResNet-32: ABD generator replay, CE on real
data + KD(T=2, mu=1) on real and synthetic with zero-padded teacher probabilities.

    python -m experiments.run --config=experiments/cifar100_deepinversion.py:tasks=10,seed=0 --workdir=DIR

Expected A_N (ABD Table 1): 5 tasks 18.8 +- 0.3, 10 tasks 10.9 +- 0.6, 20 tasks 5.7 +- 0.3.
Wall-clock: not measured yet. `:smoke` runs in seconds on generated cifar100-format data.
"""

from experiments.cifar100_base import get_cifar100_config


def get_config(arg=None):
    return get_cifar100_config(arg, "deepinversion")
