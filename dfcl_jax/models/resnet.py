"""CIFAR ResNets (ResNet-32 and tiny variants) and ResNet-18, each an ordered list of blocks."""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
from flax import linen as nn

from dfcl_jax.models.batchnorm import BatchNorm
from dfcl_jax.models.blocks import BlockClassifier
from dfcl_jax.models.conv import Conv


def conv(features: int, kernel: int, stride: int = 1, name: str | None = None,
         impl: str | None = None) -> Conv:
    """Bias-free k x k convolution with padding k // 2 (Kaiming-normal init)."""
    return Conv(features, kernel, stride, impl=impl, name=name)


class StemBlock(nn.Module):
    """conv(k, stride) + BN + ReLU (+ 3x3/2 max-pool for the ImageNet stem)."""

    features: int
    kernel: int = 3
    stride: int = 1
    max_pool: bool = False
    conv_impl: str | None = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = conv(self.features, self.kernel, self.stride, name="conv_0", impl=self.conv_impl)(x)
        x = nn.relu(BatchNorm(name="bn_0")(x, train))
        if self.max_pool:
            x = nn.max_pool(x, (3, 3), (2, 2), padding=[(1, 1), (1, 1)])
        return x


class BasicBlock(nn.Module):
    """conv3x3(stride)-BN-ReLU-conv3x3-BN + shortcut, then ReLU (unless `last_relu=False`).

    Shortcut on a shape change: "A" subsamples and zero-pads channels (CIFAR ResNets, parameter
    free), "B" is a strided 1x1 conv + BN (ResNet-18).
    """

    features: int
    stride: int = 1
    shortcut: str = "A"
    last_relu: bool = True
    zero_init_residual: bool = False
    conv_impl: str | None = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        residual = x
        y = conv(self.features, 3, self.stride, name="conv_0", impl=self.conv_impl)(x)
        y = nn.relu(BatchNorm(name="bn_0")(y, train))
        y = conv(self.features, 3, 1, name="conv_1", impl=self.conv_impl)(y)
        gamma_init = nn.initializers.zeros if self.zero_init_residual else nn.initializers.ones
        y = BatchNorm(name="bn_1", scale_init=gamma_init)(y, train)
        if self.stride != 1 or x.shape[-1] != self.features:
            if self.shortcut == "A":
                residual = x[:, :: self.stride, :: self.stride, :]
                extra = self.features - residual.shape[-1]
                residual = jnp.pad(residual, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))
            else:
                residual = conv(self.features, 1, self.stride, name="conv_2",
                                impl=self.conv_impl)(x)
                residual = BatchNorm(name="bn_2")(residual, train)
        y = y + residual
        return nn.relu(y) if self.last_relu else y


def cifar_resnet_blocks(depth: int = 32, widths: Sequence[int] = (16, 32, 64),
                        variant: str = "abd", conv_impl: str | None = None) -> list[nn.Module]:
    """Blocks of a CIFAR ResNet of `depth` = 6n + 2: stem + 3 stages of n BasicBlocks.

    variant "abd": ABD's ResNet-32. variant "pmi": PODNet/iCaRL flavour used by PMI (zero-init
    residual gamma, no ReLU after the last residual sum of a stage, and a 4th stage of one block).
    `conv_impl`: see `dfcl_jax.models.conv` (None: the backend's default).
    """
    if (depth - 2) % 6 != 0 or depth < 8:
        raise ValueError(f"CIFAR ResNet depth must be 6n+2 with n >= 1, got {depth}")
    if variant not in ("abd", "pmi"):
        raise ValueError(f"unknown CIFAR ResNet variant {variant!r}; allowed: abd, pmi")
    n = (depth - 2) // 6
    pmi = variant == "pmi"
    blocks: list[nn.Module] = [StemBlock(widths[0], conv_impl=conv_impl)]
    for stage, width in enumerate(widths):
        for i in range(n):
            blocks.append(BasicBlock(width, stride=2 if (i == 0 and stage > 0) else 1,
                                     last_relu=not (pmi and i == n - 1), zero_init_residual=pmi,
                                     conv_impl=conv_impl))
    if pmi:
        blocks.append(BasicBlock(widths[-1], last_relu=False, zero_init_residual=True,
                                 conv_impl=conv_impl))
    return blocks


def cifar_resnet(num_classes: int, depth: int = 32, widths: Sequence[int] = (16, 32, 64),
                 variant: str = "abd", conv_impl: str | None = None) -> BlockClassifier:
    """CIFAR ResNet classifier (ResNet-32 by default: 16 blocks, 31 BatchNorms, ~0.47 M params)."""
    return BlockClassifier(blocks=tuple(cifar_resnet_blocks(depth, widths, variant, conv_impl)),
                           num_classes=num_classes)


def resnet18(num_classes: int, small_input: bool = False, width: int = 64,
             conv_impl: str | None = None) -> BlockClassifier:
    """ResNet-18 (ImageNet layout: 7x7/2 stem + max-pool; `small_input` uses a 3x3/1 stem)."""
    if small_input:
        blocks: list[nn.Module] = [StemBlock(width, kernel=3, stride=1, conv_impl=conv_impl)]
    else:
        blocks = [StemBlock(width, kernel=7, stride=2, max_pool=True, conv_impl=conv_impl)]
    for stage in range(4):
        w = width * 2**stage
        blocks.append(BasicBlock(w, stride=1 if stage == 0 else 2, shortcut="B",
                                 conv_impl=conv_impl))
        blocks.append(BasicBlock(w, shortcut="B", conv_impl=conv_impl))
    return BlockClassifier(blocks=tuple(blocks), num_classes=num_classes)
