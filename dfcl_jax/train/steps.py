"""The jitted train and eval steps: compiled once for all tasks, batch sharded, state donated."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dfcl_jax.methods.base import StepContext, TaskInfo
from dfcl_jax.models.heads import mask_logits
from dfcl_jax.train.mesh import data_sharding, replicated
from dfcl_jax.train.state import RunState


def make_train_step(model, method, augmentation, mesh, loss: str = "main"):
    """`step(run, images_uint8, labels, task, rng) -> (run, metrics)`; `run` is donated.

    `loss` names the learner's loss (`Method.loss_for`): one compiled step per loss, shared by
    every task and phase that uses it (phases differ in array data: learning rates per group).
    """
    loss_fn = method.loss_for(loss)

    def step(run: RunState, images, labels, task: TaskInfo, rng):
        k_aug, k_loss = jax.random.split(rng)
        x = augmentation(images, k_aug)
        state = run.train

        def loss(params):
            ctx = StepContext(task=task, teacher=run.teacher, extras=run.extras, rng=k_loss,
                              augment=augmentation)
            return loss_fn(model, params, state.batch_stats, x, labels, ctx)

        (value, (new_stats, terms)), grads = jax.value_and_grad(loss, has_aux=True)(state.params)
        state = state.apply_gradients(grads=grads, batch_stats=new_stats)
        metrics = {"loss": value, **terms}
        return run.replace(train=state), metrics

    rep, dat = replicated(mesh), data_sharding(mesh)
    return jax.jit(step, in_shardings=(rep, dat, dat, rep, rep), out_shardings=(rep, rep),
                   donate_argnums=(0,))


def make_eval_step(model, augmentation, mesh, method=None):
    """`eval(variables, images_uint8, labels, n_seen) -> correct (B,)` with logits masked to seen.

    With a learner (`method`), the step takes a fifth argument, `method.inference_state(extras)`
    (e.g. BiC's bias layer), and predicts from `method.inference_logits`: what the learner
    deploys is what is evaluated. The (small) result is replicated so every host can read the
    whole global batch's outcome.
    """

    def step(variables, images, labels, n_seen, inference=None):
        logits = model.apply(variables, augmentation.normalize(images), False)
        if method is not None:
            logits = method.inference_logits(logits, inference)
        return jnp.argmax(mask_logits(logits, 0, n_seen), axis=-1) == labels

    rep, dat = replicated(mesh), data_sharding(mesh)
    shardings = (rep, dat, dat, rep) + ((rep,) if method is not None else ())
    return jax.jit(step, in_shardings=shardings, out_shardings=rep)
