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


def make_optimizer(train_cfg) -> optax.GradientTransformation:
    """SGD whose learning rate is array data in the optimiser state (set per epoch, no recompile)."""
    return optax.inject_hyperparams(sgd_weight_decay)(
        learning_rate=train_cfg.lr, momentum=train_cfg.momentum,
        weight_decay=train_cfg.weight_decay)


def set_learning_rate(state: TrainState, lr: float) -> TrainState:
    hyper = dict(state.opt_state.hyperparams)
    hyper["learning_rate"] = jnp.asarray(lr, hyper["learning_rate"].dtype)
    return state.replace(opt_state=state.opt_state._replace(hyperparams=hyper))


def learning_rate_at(train_cfg, task: int, epoch: int) -> float:
    """Step decay: lr * decay^(number of milestones <= epoch); task 0 may use its own lr."""
    lr = train_cfg.first_task_lr if task == 0 and train_cfg.first_task_lr > 0 else train_cfg.lr
    return lr * train_cfg.lr_decay ** sum(epoch >= m for m in train_cfg.lr_milestones)


def epochs_for_task(train_cfg, task: int) -> int:
    if task == 0 and train_cfg.first_task_epochs > 0:
        return train_cfg.first_task_epochs
    return train_cfg.epochs


def init_run_state(model, tx, rng, sample_images, method=None) -> RunState:
    extras_rng = jax.random.fold_in(rng, 1)
    variables = model.init(rng, sample_images, False)
    params, stats = variables["params"], variables["batch_stats"]
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
