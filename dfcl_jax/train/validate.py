"""Config validation, before any data is read or anything is compiled."""

from __future__ import annotations

import os

import jax

from dfcl_jax.data.class_orders import CLASS_ORDERS
from dfcl_jax.data.sources import SOURCES, check_idx_dir
from dfcl_jax.models.conv import CONV_IMPLS
from dfcl_jax.models.registry import MODELS


class ConfigError(ValueError):
    """A config field with a bad value; the message names the field and the allowed values."""


def _positive(config, *names, integer=False):
    for name in names:
        node = config
        for part in name.split("."):
            node = node[part]
        if integer and (not isinstance(node, int) or isinstance(node, bool)):
            raise ConfigError(f"config.{name}={node!r} must be a positive integer")
        if not node > 0:
            raise ConfigError(f"config.{name}={node!r} must be > 0")


def validate_config(config, workdir: str | None = None) -> None:
    """Raise ConfigError naming the first bad field (static checks, cheap)."""
    from dfcl_jax.methods import METHODS, get_method

    if config.method.name not in METHODS:
        raise ConfigError(f"config.method.name={config.method.name!r}; allowed: "
                          f"{', '.join(sorted(METHODS))}")
    try:
        get_method(config.method)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    d = config.data
    if d.source not in SOURCES:
        raise ConfigError(f"config.data.source={d.source!r}; allowed: {', '.join(SOURCES)}")
    if d.class_order not in CLASS_ORDERS:
        raise ConfigError(f"config.data.class_order={d.class_order!r}; allowed: "
                          f"{', '.join(CLASS_ORDERS)}")
    if d.stand_in not in ("", "generated"):
        raise ConfigError(f"config.data.stand_in={d.stand_in!r}; allowed: '' (real data), "
                          "'generated'")
    if d.num_classes and d.num_classes % d.num_tasks:
        raise ConfigError(f"config.data.num_tasks={d.num_tasks} does not divide the "
                          f"{d.num_classes} classes of {d.name}")
    _positive(config, "data.num_tasks", integer=True)
    if d.train_per_class < 0:
        raise ConfigError(f"config.data.train_per_class={d.train_per_class} must be >= 0 (0: all)")
    if config.model.name not in MODELS:
        raise ConfigError(f"config.model.name={config.model.name!r}; allowed: "
                          f"{', '.join(MODELS)}")
    if config.model.get("conv_impl", "auto") not in CONV_IMPLS:
        raise ConfigError(f"config.model.conv_impl={config.model.conv_impl!r}; allowed: "
                          f"{', '.join(CONV_IMPLS)}")
    t = config.train
    _positive(config, "train.epochs", "train.batch_size", "train.eval_batch_size", integer=True)
    _positive(config, "train.lr")
    if t.first_task_epochs < 0 or t.first_task_lr < 0:
        raise ConfigError("config.train.first_task_epochs and first_task_lr must be >= 0 "
                          "(0: same as later tasks)")
    if t.weight_decay < 0 or not 0 <= t.momentum < 1:
        raise ConfigError(f"config.train.weight_decay={t.weight_decay} must be >= 0 and "
                          f"config.train.momentum={t.momentum} in [0, 1)")
    if not 0 < t.lr_decay <= 1:
        raise ConfigError(f"config.train.lr_decay={t.lr_decay} must be in (0, 1]")
    _positive(config, "checkpoint.every_epochs", "checkpoint.max_to_keep", integer=True)
    if d.source == "idx" and not d.stand_in:
        try:
            check_idx_dir(d.data_dir)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    if d.source == "tfds" and not d.stand_in:
        from dfcl_jax.data.tfds_source import check_prepared

        try:
            check_prepared(d)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    for field in ("upper_bound_workdir", "first_task_from"):
        path = config[field]
        if path and not os.path.isdir(path):
            raise ConfigError(f"config.{field}={path!r} is not a directory (a finished run's "
                              "workdir)")
    if config.upper_bound_workdir and not os.path.exists(
            os.path.join(config.upper_bound_workdir, "results.json")):
        raise ConfigError(f"config.upper_bound_workdir={config.upper_bound_workdir!r} has no "
                          "results.json (run the `joint` method there first)")
    if workdir is not None:
        check_workdir(workdir)


def check_workdir(workdir: str) -> None:
    try:
        os.makedirs(workdir, exist_ok=True)
        # One probe per process: processes of one job share the workdir.
        probe = os.path.join(workdir, f".write_test.{jax.process_index()}.{os.getpid()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise ConfigError(f"--workdir={workdir!r} is not writable: {e.strerror}") from None
