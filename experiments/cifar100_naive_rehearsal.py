"""Naive Rehearsal on CIFAR-100, ResNet-32, ABD schedule, 2,000 stored images chosen by herding (a
coreset baseline: it keeps real images, the labelled exception to the data-free rule): CE over the
seen classes on every real batch plus an equally large batch from the coreset.

    python -m experiments.run --config=experiments/cifar100_naive_rehearsal.py:tasks=10,seed=0 --workdir=DIR

Expected A_N (ABD Table 1, mean over the 3 "abd" orders): 34.0 / 24.0 / 14.9 (5 / 10 / 20 tasks);
Omega 73.4 / 64.6 / 51.4. Wall-clock: not measured yet (needs the CIFAR-100 TFDS data and an
accelerator). `:smoke` runs in seconds on generated cifar100-format data.
"""

from experiments.cifar100_base import get_cifar100_config


def get_config(arg=None):
    return get_cifar100_config(arg, "naive_rehearsal")
