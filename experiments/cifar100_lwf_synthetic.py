"""LwF with synthetic data on CIFAR-100, ResNet-32: ABD generator replay, CE on real data + LwF KD
(old-class softmax, T=2, mu=0.1) on real and synthetic.

    python -m experiments.run --config=experiments/cifar100_lwf_synthetic.py:tasks=10,seed=0 --workdir=DIR

The ABD paper reports this row in its ablations; no headline number is given in protocols.md.
Wall-clock: not measured yet. `:smoke` runs in seconds on generated cifar100-format data.
"""

from experiments.cifar100_base import get_cifar100_config


def get_config(arg=None):
    return get_cifar100_config(arg, "lwf_synthetic")
