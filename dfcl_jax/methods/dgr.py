"""Deep generative replay (DGR, Shin et al. 2017): a VAE trained on each task's real data plus its
own replay of earlier tasks; the classifier learns from real data and VAE samples labelled by the
previous model. The VAE is the only thing kept besides weights (a generator, allowed by the rule)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from dfcl_jax.data.batching import epoch_permutation, host_slice
from dfcl_jax.methods.base import (
    Method,
    StepContext,
    TaskInfo,
    plain_ce_loss,
    register,
    seen_ce,
    student_forward,
    teacher_forward,
)
from dfcl_jax.models.heads import mask_logits
from dfcl_jax.models.vae import ConvVAE, vae_loss
from dfcl_jax.train.mesh import constrain_batch, put_batch


@register
class DGR(Method):
    name = "dgr"

    @classmethod
    def default_config(cls):
        return ml_collections.ConfigDict({"vae": {"steps": 2000, "batch_size": 128, "lr": 1e-3,
                                                  "z_dim": 64, "width": 32}})

    def validate(self):
        for f in ("steps", "batch_size", "lr", "z_dim", "width"):
            if self.cfg.vae[f] <= 0:
                raise ValueError(f"config.method.vae.{f}={self.cfg.vae[f]} must be > 0")

    def init_extras(self, model, rng, sample_images):
        h, _, c = sample_images.shape[1:]
        v = self.cfg.vae
        self.vae = ConvVAE(image_size=h, channels=c, z_dim=v.z_dim, width=v.width)
        self.tx = optax.adam(v.lr)
        params = self.vae.init(rng, jnp.zeros((2, h, h, c)), rng)["params"]
        self._vae_step = jax.jit(self._vae_train_step, donate_argnums=(0,))
        return {"vae": params, "vae_opt": self.tx.init(params)}

    def decode(self, params, rng, n):
        z = constrain_batch(jax.random.normal(rng, (n, self.cfg.vae.z_dim)), self.mesh)
        return self.vae.apply({"params": params}, z, method="decode")

    def _vae_train_step(self, state, real, old_params, replay_weight, rng):
        """DGR generator step: negative ELBO on real data (weight 1 - r) and on the previous
        VAE's samples (weight r = (t - 1) / t, 0 on the first task)."""
        params, opt_state = state
        k_old, k_real, k_rep = jax.random.split(rng, 3)
        replay = jax.lax.stop_gradient(self.decode(old_params, k_old, real.shape[0]))

        def loss(p):
            rec_r, m_r, lv_r = self.vae.apply({"params": p}, real, k_real)
            rec_p, m_p, lv_p = self.vae.apply({"params": p}, replay, k_rep)
            return ((1 - replay_weight) * vae_loss(rec_r, real, m_r, lv_r).mean()
                    + replay_weight * vae_loss(rec_p, replay, m_p, lv_p).mean())

        value, g = jax.value_and_grad(loss)(params)
        updates, opt_state = self.tx.update(g, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), value

    def end_task(self, run, task, task_data):
        """Train the VAE on this task's real images and on replay of the earlier tasks."""
        if task_data.is_last:
            return run
        v = self.cfg.vae
        state = (run.extras["vae"], run.extras["vae_opt"])
        old = jax.tree.map(jnp.copy, run.extras["vae"])
        weight = jnp.asarray(task / (task + 1), jnp.float32)
        key = jax.random.fold_in(jax.random.key(task_data.seed), 2000 + task)
        order = np.concatenate([epoch_permutation(task_data.indices, task_data.seed, task, e)
                                for e in range(-(-v.steps * v.batch_size // len(task_data.indices)))])
        losses = []
        for i in range(v.steps):
            ix = order[i * v.batch_size:(i + 1) * v.batch_size]
            real = task_data.normalize(put_batch(self.mesh, task_data.images[host_slice(ix)])[0])
            state, value = self._vae_step(state, real, old, weight, jax.random.fold_in(key, i))
            losses.append(value)
        self.last_vae_losses = np.asarray(jax.device_get(losses))
        return run.replace(extras={**run.extras, "vae": state[0], "vae_opt": state[1]})

    def synthetic_batch(self, model, ctx, n):
        x = jax.lax.stop_gradient(self.decode(ctx.extras["vae"], jax.random.fold_in(ctx.rng, 11), n))
        _, t_logits = teacher_forward(model, ctx.teacher, x)
        return x, jnp.argmax(mask_logits(t_logits, 0, ctx.task.n_old), -1)

    def sample_synthetic(self, model, run, rng, n: int, n_old: int):
        ctx = StepContext(TaskInfo.make(n_old, n_old), run.teacher, run.extras, rng)
        return self.synthetic_batch(model, ctx, n)

    def first_task_loss_fn(self, model, params, batch_stats, images, labels, ctx):
        """Nothing to replay yet: CE on real data."""
        return plain_ce_loss(model, params, batch_stats, images, labels, ctx,
                             ("ce_real", "ce_replay"))

    def loss_fn(self, model, params, batch_stats, images, labels, ctx):
        """DGR: r * CE(real) + (1 - r) * CE(replay, previous model's labels), r = n_new / n_seen."""
        x_syn, y_syn = self.synthetic_batch(model, ctx, images.shape[0])
        _, logits, st = student_forward(model, params, batch_stats, jnp.concatenate([images, x_syn]))
        b = images.shape[0]
        ce_real = seen_ce(logits[:b], labels, ctx.task.n_seen).mean()
        ce_replay = seen_ce(logits[b:], y_syn, ctx.task.n_seen).mean()
        r = (ctx.task.n_seen - ctx.task.n_old) / ctx.task.n_seen
        return r * ce_real + (1 - r) * ce_replay, (st, {"ce_real": ce_real, "ce_replay": ce_replay})
