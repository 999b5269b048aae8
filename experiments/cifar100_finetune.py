"""Base (fine-tune) on CIFAR-100, ResNet-32, ABD schedule (250 epochs/task, lr 0.1 -> x0.1 at 100/150/200).

    python -m experiments.run --config=experiments/cifar100_finetune.py:tasks=10,seed=0 --workdir=DIR

Expected A_N (ABD Table 1, mean +- std over the 3 "abd" orders): 5 tasks 16.4 +- 0.4,
10 tasks 8.8 +- 0.1, 20 tasks 4.4 +- 0.3. Wall-clock: not measured yet (needs network for the
data and an accelerator). `:smoke` runs in seconds on generated data in the cifar100 format.
"""

from experiments.cifar100_base import get_cifar100_config


def get_config(arg=None):
    return get_cifar100_config(arg, "finetune")
