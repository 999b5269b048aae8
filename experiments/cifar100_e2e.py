"""E2E (End-to-End Incremental Learning) on CIFAR-100, ResNet-32, ABD schedule, 2,000 stored images
chosen by herding (a coreset baseline: it keeps real images, the labelled exception to the data-free
rule): CE + KD on real + coreset, then 30 epochs of class-balanced fine-tuning (lr 0.01).

    python -m experiments.run --config=experiments/cifar100_e2e.py:tasks=10,seed=0 --workdir=DIR

Expected A_N (ABD Table 1, mean over the 3 "abd" orders): 47.4 / 38.4 / 32.7 (5 / 10 / 20 tasks).
Wall-clock: not measured yet (needs the CIFAR-100 TFDS data and an accelerator). `:smoke` runs in
seconds on generated cifar100-format data.
"""

from experiments.cifar100_base import get_cifar100_config


def get_config(arg=None):
    return get_cifar100_config(arg, "e2e")
