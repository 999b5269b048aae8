"""The base config: every field defined once; experiment configs override a few.

Config arguments follow big_vision: `--config=experiments/fashion_mnist.py:method=lwf_mc,seed=1`
is a comma-separated `key=value` list; a bare word is a boolean flag (`smoke`).
"""

from __future__ import annotations

import ast

import ml_collections

from dfcl_jax.methods import method_config

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
    """Parse `k=v,flag` into a ConfigDict over `defaults` (values typed like their defaults)."""
    out = ml_collections.ConfigDict(dict(defaults))
    for item in filter(None, (arg or "").split(",")):
        key, eq, value = item.partition("=")
        key = key.strip()
        if key not in defaults:
            raise ValueError(f"unknown config argument {key!r}; allowed: {', '.join(defaults)}")
        if not eq:
            out[key] = True
            continue
        default = defaults[key]
        if isinstance(default, bool):
            out[key] = value.lower() in ("1", "true", "yes")
        elif isinstance(default, (int, float)):
            out[key] = type(default)(ast.literal_eval(value))
        else:
            out[key] = value
    return out


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Defaults: CIFAR-100-shaped ResNet-32 with the ABD reference schedule (methods.md sec. 6)."""
    del arg
    c = ml_collections.ConfigDict()
    c.seed = 0

    c.data = ml_collections.ConfigDict()
    c.data.source = "tfds"  # "tfds" (prepared TFDS datasets) or "idx" (MNIST-format directory)
    c.data.name = "cifar100"
    c.data.data_dir = ""  # TFDS data_dir ("" = TFDS default) or the IDX directory
    c.data.split_train = "train"
    c.data.split_test = "test"
    c.data.num_classes = 100  # 0: read from the data (IDX)
    c.data.image_size = 32  # smaller images are zero-padded to this size
    c.data.mean = (0.5071, 0.4865, 0.4409)
    c.data.std = (0.2673, 0.2564, 0.2762)
    c.data.class_order = "abd"
    c.data.order_seed = 0  # the trial r of the "abd" order
    c.data.num_tasks = 10
    c.data.train_per_class = 0  # 0: every training image; >0: a fixed subset (CPU budgets)
    c.data.stand_in = ""  # "generated": stand-in data in the real format (smoke runs, tests)

    c.augment = ml_collections.ConfigDict(
        {"crop_padding": 4, "hflip": True, "brightness": 63 / 255, "contrast": 0.8})

    c.model = ml_collections.ConfigDict(
        {"name": "cifar_resnet", "depth": 32, "widths": (16, 32, 64), "variant": "abd",
         "small_input": False,
         # Convolution backward: "auto" (materialized on CPU, XLA's own elsewhere), "xla",
         # "materialized" (same numbers; see dfcl_jax/models/conv.py).
         "conv_impl": "auto"})

    c.train = ml_collections.ConfigDict()
    c.train.epochs = 250
    c.train.first_task_epochs = 0  # 0: same as later tasks
    c.train.batch_size = 128
    c.train.eval_batch_size = 256
    c.train.lr = 0.1
    c.train.first_task_lr = 0.0  # 0: same as later tasks
    c.train.first_task_milestones = ()  # (): same as later tasks
    c.train.momentum = 0.9
    c.train.weight_decay = 2e-4
    c.train.lr_milestones = (100, 150, 200)
    c.train.lr_decay = 0.1

    c.method = method_config("finetune")

    c.checkpoint = ml_collections.ConfigDict({"every_epochs": 10, "max_to_keep": 2})
    c.first_task_from = ""  # workdir of a run whose trained first-task model this run starts from
    c.upper_bound_workdir = ""  # workdir of a finished `joint` run: enables Omega

    # Fields that do not change results; they may differ when a run is resumed.
    c.runtime = ml_collections.ConfigDict(
        {"log_every_steps": 50, "progress": True, "num_devices": 0})
    return c


def set_method(config: ml_collections.ConfigDict, name: str) -> None:
    """Replace `config.method` by learner `name` with its own default fields."""
    config.method = method_config(name)


def shrink_to_smoke(config: ml_collections.ConfigDict) -> None:
    """Seconds on a CPU: tiny ResNet, generated stand-in data in the real format, 1 epoch."""
    config.data.stand_in = "generated"
    config.data.num_tasks = min(config.data.num_tasks, 2) if config.data.num_classes == 0 else 2
    config.data.train_per_class = 20
    config.model.depth = 8
    config.model.widths = (4, 8, 16)
    config.train.epochs = 1
    config.train.first_task_epochs = 0
    config.train.batch_size = 16
    config.train.eval_batch_size = 32
    config.train.lr_milestones = ()
    config.checkpoint.every_epochs = 1
    config.runtime.log_every_steps = 5
    if "generator" in config.method:  # generator replay: a tiny generator for a few steps
        config.method.generator.update({"steps": 4, "width": 8, "batch_size": 16, "z_dim": 16})
    if "pmi" in config.method:  # PMI inversion: a few steps per block, a few dozen targets
        config.method.pmi.update({"block_steps": 3, "full_steps": 4, "full_warmup": 1,
                                  "full_milestones": (2, 3), "targets_base": 24,
                                  "targets_per_task": 8, "micro_batch": 16,
                                  "chunk": 4})
        config.method.feature_model.encoder_epochs = 2
    if "head_epochs" in config.method:  # R-DFCIL stages: one epoch each
        for stage in ("head", "last_stage", "all", "head_ft"):
            config.method[f"{stage}_epochs"] = 1
    if "coreset" in config.method:  # coreset baselines: a 40-image buffer (trimmed each task)
        config.method.coreset.size = 40
        if "balanced_epochs" in config.method:
            config.method.balanced_epochs = 1
        if "bias_steps" in config.method:
            config.method.bias_steps = 50
    if "vae" in config.method:  # deep generative replay: a tiny VAE for a few steps
        config.method.vae.update({"steps": 4, "width": 8, "batch_size": 16, "z_dim": 8})
