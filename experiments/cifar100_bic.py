"""BiC (Bias Correction) on CIFAR-100, ResNet-32, ABD schedule, 2,000 stored images chosen by herding
(a coreset baseline: it keeps real images, the labelled exception to the data-free rule): lambda-
weighted KD + CE on real + coreset with 10% of the coreset held out, then a bias layer (alpha, beta
on the new task's logits) fitted on the held-out split and applied at evaluation.

    python -m experiments.run --config=experiments/cifar100_bic.py:tasks=10,seed=0 --workdir=DIR

Expected A_N (ABD Table 1, mean over the 3 "abd" orders): 53.7 / 45.9 / 37.5 (5 / 10 / 20 tasks);
Omega 87.5 / 81.9 / 71.7. Wall-clock: not measured yet (needs the CIFAR-100 TFDS data and an
accelerator). `:smoke` runs in seconds on generated cifar100-format data.
"""

from experiments.cifar100_base import get_cifar100_config


def get_config(arg=None):
    return get_cifar100_config(arg, "bic")
