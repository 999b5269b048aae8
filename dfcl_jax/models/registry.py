"""Model registry: `config.model.name` -> a BlockClassifier builder."""

from __future__ import annotations

from collections.abc import Callable

from dfcl_jax.models.blocks import BlockClassifier
from dfcl_jax.models.conv import CONV_IMPLS
from dfcl_jax.models.resnet import cifar_resnet, resnet18


def _cifar_resnet(cfg, num_classes: int, class_names=None) -> BlockClassifier:
    return cifar_resnet(num_classes, depth=cfg.depth, widths=tuple(cfg.widths), variant=cfg.variant,
                        conv_impl=cfg.get("conv_impl", "auto"))


def _resnet18(cfg, num_classes: int, class_names=None) -> BlockClassifier:
    return resnet18(num_classes, small_input=cfg.small_input, width=cfg.widths[0],
                    conv_impl=cfg.get("conv_impl", "auto"))


def _clip(cfg, num_classes: int, class_names=None) -> BlockClassifier:
    """CLIP ViT image encoder with adapters; text prototypes of `class_names` (label order)."""
    from dfcl_jax.models.clip import CLIPSpec, build_clip

    if "clip" not in cfg:
        raise ValueError("config.model.name='clip' needs config.model.clip (source, num_experts, "
                         "bottleneck, top_k, templates); see experiments/cifar100_clip_pmi.py")
    c = cfg.clip
    spec = CLIPSpec(source=c.source, num_experts=c.num_experts, bottleneck=c.bottleneck,
                    top_k=c.top_k, templates=tuple(c.templates))
    return build_clip(spec, num_classes, class_names)


MODELS: dict[str, Callable] = {"cifar_resnet": _cifar_resnet, "resnet18": _resnet18, "clip": _clip}


def build_model(model_config, num_classes: int, class_names=None) -> BlockClassifier:
    """Build `model_config.name` with a head for all `num_classes` classes of the benchmark
    (`class_names` in label order: CLIP's text prototypes; other models ignore them)."""
    if model_config.name not in MODELS:
        raise ValueError(f"config.model.name={model_config.name!r}; allowed: {', '.join(MODELS)}")
    impl = model_config.get("conv_impl", "auto")
    if impl not in CONV_IMPLS:
        raise ValueError(f"config.model.conv_impl={impl!r}; allowed: {', '.join(CONV_IMPLS)}")
    return MODELS[model_config.name](model_config, num_classes, class_names)
