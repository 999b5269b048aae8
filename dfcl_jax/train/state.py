"""Train state and the optimiser (SGD with momentum and PyTorch-style weight decay)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct
from flax.training import train_state


class TrainState(train_state.TrainState):
    """Flax TrainState plus BatchNorm running statistics."""

    batch_stats: Any = None


@struct.dataclass
class RunState:
    """Everything that persists across steps and tasks (and is checkpointed)."""

    train: TrainState
    teacher: Any  # frozen previous model {"params", "batch_stats"} (a copy of the init at task 0)
    extras: Any = None  # the learner's own state (generator, feature statistics, ...)


def sgd_weight_decay(learning_rate, momentum, weight_decay):
    """PyTorch SGD: weight decay added to the gradient before momentum."""
    return optax.chain(optax.add_decayed_weights(weight_decay),
                       optax.sgd(learning_rate, momentum=momentum))


# Parameter groups every learner can freeze or unfreeze by phase (R-DFCIL's gradual unfreezing):
# the classifier head (and any learner-owned heads), the last stage of the backbone, the rest.
PARAM_GROUPS = ("head", "last_stage", "backbone")
# Parameters a model never trains (e.g. pretrained CLIP weights beside its adapters): their updates
# are `optax.set_to_zero()`, so their gradients are never used (and XLA drops them).
FROZEN = "frozen"


def parameter_groups(params, model=None) -> dict:
    """A label from PARAM_GROUPS (or FROZEN) for every parameter leaf (the mask tree of
    `optax.partition`).

    A model with a `param_group(path) -> label` method labels its own parameters (learner-owned
    ones stay "head"). Otherwise the last stage is every block whose first convolution has the
    final block's width (one block for backbones without `conv_0`).
    """
    if model is not None and hasattr(model, "param_group"):
        def label(path, _):
            keys = tuple(str(getattr(k, "key", k)) for k in path)
            return "head" if keys[0] == "learner" else model.param_group(keys)
        return jax.tree_util.tree_map_with_path(label, dict(params))
    blocks = sorted((k for k in params if k.startswith("blocks_")), key=lambda k: int(k[7:]))

    def width(name):
        conv = params[name].get("conv_0") if isinstance(params[name], dict) else None
        return None if conv is None else conv["kernel"].shape[-1]

    last_width = width(blocks[-1]) if blocks else None
    last = {b for b in blocks if last_width is not None and width(b) == last_width}
    last = last or set(blocks[-1:])
    labels = {}
    for k, v in params.items():
        group = "head" if k in ("head", "learner") else "last_stage" if k in last else "backbone"
        labels[k] = jax.tree.map(lambda _, g=group: g, v)
    return labels


def make_optimizer(train_cfg, params, model=None) -> optax.GradientTransformation:
    """SGD per parameter group, each with its learning rate as array data in the optimiser state
    (set per epoch and per phase, no recompilation); a frozen group has learning rate 0.
    Parameters the model labels FROZEN get `optax.set_to_zero()` (never updated)."""
    inner = optax.inject_hyperparams(sgd_weight_decay)(
        learning_rate=train_cfg.lr, momentum=train_cfg.momentum,
        weight_decay=train_cfg.weight_decay)
    labels = parameter_groups(params, model)
    transforms = {g: inner for g in PARAM_GROUPS}
    if FROZEN in jax.tree.leaves(labels):
        transforms[FROZEN] = optax.set_to_zero()
    return optax.partition(transforms, labels)


def set_learning_rate(state: TrainState, lr: float, trainable=None) -> TrainState:
    """Learning rate `lr` for the groups in `trainable` (None: all), 0 for the others."""
    inner = dict(state.opt_state.inner_states)
    for g, masked in inner.items():
        if g == FROZEN:
            continue
        hyper = dict(masked.inner_state.hyperparams)
        value = lr if trainable is None or g in trainable else 0.0
        hyper["learning_rate"] = jnp.asarray(value, hyper["learning_rate"].dtype)
        inner[g] = masked._replace(inner_state=masked.inner_state._replace(hyperparams=hyper))
    return state.replace(opt_state=state.opt_state._replace(inner_states=inner))


def learning_rates(state: TrainState) -> dict:
    """The current learning rate of every parameter group."""
    return {g: float(m.inner_state.hyperparams["learning_rate"])
            for g, m in state.opt_state.inner_states.items() if g != FROZEN}


def init_run_state(model, train_cfg, rng, sample_images, method=None) -> RunState:
    """Model, optimiser, frozen teacher copy and the learner's extras (and learner-owned params)."""
    extras_rng = jax.random.fold_in(rng, 1)
    if hasattr(model, "init_variables"):  # e.g. pretrained weights (CLIP)
        variables = model.init_variables(rng, sample_images)
    else:
        variables = model.init(rng, sample_images, False)
    params, stats = dict(variables["params"]), variables["batch_stats"]
    if method is not None:
        learner = method.init_learner_params(model, jax.random.fold_in(rng, 2), sample_images)
        if learner:
            params["learner"] = learner  # ignored by the model's apply, trained by the learner
    tx = make_optimizer(train_cfg, params, model)
    train = TrainState.create(apply_fn=model.apply, params=params, tx=tx, batch_stats=stats)
    teacher = jax.tree.map(jnp.copy, {"params": params, "batch_stats": stats})
    extras = method.init_extras(model, extras_rng, sample_images) if method is not None else {}
    return RunState(train=train, teacher=teacher, extras=extras)


def reset_optimizer(state: TrainState) -> TrainState:
    """A fresh optimiser state at the start of every task (methods.md section 6)."""
    return state.replace(opt_state=state.tx.init(state.params))


def freeze_teacher(run: RunState) -> RunState:
    """The current model becomes the frozen teacher for the next task."""
    t = run.train
    return run.replace(teacher=jax.tree.map(jnp.copy, {"params": t.params,
                                                       "batch_stats": t.batch_stats}))
