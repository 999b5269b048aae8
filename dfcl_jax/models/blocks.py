"""A classifier built from an ordered list of blocks, so inversion can address any block alone."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import linen as nn

from dfcl_jax.models.batchnorm import BN_STATS

# Kaiming-normal (fan_in) as PyTorch's `kaiming_normal_`, used by convolutions and heads.
kaiming_normal = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


class BlockClassifier(nn.Module):
    """`head(pool(block_L(... block_1(x))))`; blocks are Flax modules called as `block(x, train)`.

    The head is sized for every class of the benchmark; callers mask logits beyond the seen classes,
    so shapes never change between tasks.
    """

    blocks: Sequence[nn.Module]
    num_classes: int
    pool: str = "avg"  # "avg": global average over spatial axes; "none": last block emits features.

    def setup(self):
        self.head = nn.Dense(self.num_classes, kernel_init=kaiming_normal, name="head")

    def __call__(self, x, train: bool = False):
        return self.head(self.features(x, train))

    def features(self, x, train: bool = False):
        """Penultimate (pooled) feature of `x`."""
        return self.pool_features(self.run_blocks(x, 0, len(self.blocks), train))

    def features_from(self, x, start: int, train: bool = False):
        """Penultimate feature of `x` given as the input of block `start` (a Python int)."""
        return self.pool_features(self.run_blocks(x, start, len(self.blocks), train))

    def run_blocks(self, x, start: int, stop: int, train: bool = False):
        """Compose blocks `start .. stop-1` (Python ints: each range compiles on its own)."""
        for block in self.blocks[start:stop]:
            x = block(x, train)
        return x

    def pool_features(self, h):
        if self.pool == "avg":
            return jnp.mean(h, axis=tuple(range(1, h.ndim - 1)))
        return h

    def classify(self, features):
        """Head applied to penultimate features."""
        return self.head(features)

    def features_and_logits(self, x, train: bool = False):
        f = self.features(x, train)
        return f, self.head(f)


def forward_blocks(model: BlockClassifier, variables, x, start: int, stop: int, train=False):
    """Apply blocks `start .. stop-1` of `model` with frozen statistics (eval mode) to `x`."""
    return model.apply(variables, x, start, stop, train, method=BlockClassifier.run_blocks)


class BNMoments(NamedTuple):
    """Moments of one BatchNorm input: batch mean/var (biased) and the running mean/var."""

    mean: jnp.ndarray
    var: jnp.ndarray
    running_mean: jnp.ndarray
    running_var: jnp.ndarray


def bn_moments(bn_stats: Any) -> list[BNMoments]:
    """Flatten a sown `bn_stats` collection into BNMoments in forward (execution) order."""
    leaves_with_path = jax.tree_util.tree_flatten_with_path(
        bn_stats, is_leaf=lambda n: isinstance(n, tuple) and len(n) == 4
    )[0]
    # Sown values live in per-module tuples `moments: ((mean, var, rm, rv),)`; the path order of
    # dicts is alphabetical, so order by the module's position instead (blocks_i, then layer name).
    entries = [(_execution_key(path), BNMoments(*leaf)) for path, leaf in leaves_with_path]
    return [m for _, m in sorted(entries, key=lambda e: e[0])]


def _execution_key(path) -> tuple:
    key = []
    for p in path:
        name = str(getattr(p, "key", getattr(p, "idx", p)))
        head, _, tail = name.rpartition("_")
        key.append((head, int(tail)) if tail.isdigit() else (name, -1))
    return tuple(key)


def apply_with_bn_moments(model: nn.Module, variables, *args, method=None, **kwargs):
    """Run `model` in eval mode and return (output, BNMoments of every BatchNorm input in order)."""
    variables = {k: v for k, v in variables.items() if k != BN_STATS}
    out, state = model.apply(variables, *args, method=method, mutable=[BN_STATS], **kwargs)
    return out, bn_moments(state.get(BN_STATS, {}))
