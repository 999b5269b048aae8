"""LwF + coreset on CIFAR-100, ResNet-32, ABD schedule, 2,000 stored images chosen by herding (a
coreset baseline: it keeps real images, the labelled exception to the data-free rule): CE + KD (T=2)
from the previous model on real + coreset batches.

    python -m experiments.run --config=experiments/cifar100_lwf_coreset.py:tasks=10,seed=0 --workdir=DIR

Expected A_N (ABD Table 1, mean over the 3 "abd" orders): 39.4 / 27.4 / 16.6 (5 / 10 / 20 tasks);
Omega 79.0 / 69.4 / 54.2. Wall-clock: not measured yet (needs the CIFAR-100 TFDS data and an
accelerator). `:smoke` runs in seconds on generated cifar100-format data.
"""

from experiments.cifar100_base import get_cifar100_config


def get_config(arg=None):
    return get_cifar100_config(arg, "lwf_coreset")
