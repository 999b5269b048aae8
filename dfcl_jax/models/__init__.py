"""Backbones exposed as ordered lists of blocks, the block classifier and the model registry."""

from dfcl_jax.models.blocks import BlockClassifier, bn_moments, forward_blocks
from dfcl_jax.models.registry import MODELS, build_model

__all__ = ["BlockClassifier", "MODELS", "bn_moments", "build_model", "forward_blocks"]
