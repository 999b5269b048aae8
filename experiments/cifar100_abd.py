"""ABD (Always Be Dreaming) on CIFAR-100, ResNet-32, ABD schedule; generator inverted after every task
(10,000 Adam steps of batch 128, lr 1e-3, eps=0.8 BatchNorm quirk kept), real 128 + synthetic 128
per student step, FT-CE over the seen classes (`--config.method.ft_all_logits=True` reproduces the
reference's all-logits FT-CE, about 3 points lower A_N at 10 tasks per the reference tracker).

    python -m experiments.run --config=experiments/cifar100_abd.py:tasks=10,seed=0 --workdir=DIR

Expected A_N (ABD Table 1, mean +- std over the 3 "abd" orders): 5 tasks 43.9 +- 0.9,
10 tasks 33.7 +- 1.2, 20 tasks 20.0 +- 1.4; Omega 78.6 / 69.6 / 52.5. Wall-clock: not measured
yet. `:smoke` runs in seconds on generated cifar100-format data.
"""

from experiments.cifar100_base import get_cifar100_config


def get_config(arg=None):
    return get_cifar100_config(arg, "abd")
