"""Deep generative replay (DGR) on CIFAR-100, ResNet-32, ABD schedule: a convolutional VAE trained
after every task on real data plus its own replay; the classifier learns from real data and VAE
samples labelled by the previous model (r = 1/t for the new task).

    python -m experiments.run --config=experiments/cifar100_dgr.py:tasks=10,seed=0 --workdir=DIR

Expected A_N (ABD Table 1): 5 tasks 14.4 +- 0.4, 10 tasks 8.1 +- 0.1, 20 tasks 4.1 +- 0.3.
Wall-clock: not measured yet. `:smoke` runs in seconds on generated cifar100-format data.
"""

from experiments.cifar100_base import get_cifar100_config


def get_config(arg=None):
    return get_cifar100_config(arg, "dgr")
