"""ABD: loss terms against hand computations, and generator inversion against a trained teacher."""

import jax
import jax.numpy as jnp
import numpy as np

from dfcl_jax.inversion.generator import GeneratorConfig, GeneratorTrainer
from dfcl_jax.inversion.losses import bn_kl_abd
from dfcl_jax.methods.abd import ft_ce, importance_weighted_feature_kd, local_ce, task_balancing_weights
from dfcl_jax.models.blocks import apply_with_bn_moments
from dfcl_jax.models.generator import Generator


def _log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def test_task_balancing_weights():
    # 2 old classes of 5 seen: old-class samples weigh 0.4, new-class samples 0.6.
    w = task_balancing_weights(jnp.array([0, 1, 2, 4]), 2, 5)
    np.testing.assert_allclose(w, [0.4, 0.4, 0.6, 0.6], rtol=1e-6)


def test_abd_loss_terms_match_hand_computations():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, 6)).astype(np.float32)
    labels = np.array([2, 3, 4, 2])  # real data of the current task: classes 2..4 (n_old 2)
    w = np.full(4, 0.6, np.float32)
    # local CE: softmax over classes [2, 5) only, label shifted by n_old; mean divides by B.
    lp = _log_softmax(logits[:, 2:5])
    want = np.mean(w * -lp[np.arange(4), labels - 2])
    np.testing.assert_allclose(local_ce(jnp.asarray(logits), labels, w, 2, 5), want, rtol=1e-5)
    # FT-CE over the seen classes [0, 5), and the reference's all-logits variant.
    y = np.array([0, 1, 3, 4])
    wy = np.array([0.4, 0.4, 0.6, 0.6], np.float32)
    want_seen = np.mean(wy * -_log_softmax(logits[:, :5])[np.arange(4), y])
    want_all = np.mean(wy * -_log_softmax(logits)[np.arange(4), y])
    np.testing.assert_allclose(ft_ce(jnp.asarray(logits), y, wy, 5), want_seen, rtol=1e-5)
    np.testing.assert_allclose(ft_ce(jnp.asarray(logits), y, wy, 5, all_logits=True), want_all,
                               rtol=1e-5)
    # Importance-weighted feature KD: old head W (d x C) restricted to the 2 old classes.
    f, f_old = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    W = rng.normal(size=(3, 6))
    proj = (f - f_old) @ W[:, :2]
    want_kd = np.mean(np.sum(proj**2, -1)) / 2
    got = importance_weighted_feature_kd(jnp.asarray(f), jnp.asarray(f_old), jnp.asarray(W), 2)
    np.testing.assert_allclose(got, want_kd, rtol=1e-5)
    assert float(importance_weighted_feature_kd(jnp.asarray(f), jnp.asarray(f_old),
                                                jnp.asarray(W), 0)) == 0.0


def test_generator_has_the_reference_size():
    g = Generator()
    v = g.init(jax.random.key(0), jnp.zeros((2, 1000)))
    assert 8.3e6 < sum(p.size for p in jax.tree.leaves(v["params"])) < 8.5e6
    assert g.apply(v, jnp.ones((2, 1000))).shape == (2, 32, 32, 3)


def test_generator_training_lowers_its_loss_and_bn_divergence(trained_teacher):
    steps = 60
    model, teacher = trained_teacher
    gen = Generator(image_size=32, channels=1, z_dim=64, width=16)
    cfg = GeneratorConfig(steps=steps, batch_size=32, lr=1e-2, chunk=20, unroll=False)
    trainer = GeneratorTrainer(gen, model, cfg)
    state = trainer.init(jax.random.key(0))

    def bn_kl(s):
        x = trainer.sample(s, jax.random.key(9), 64)
        return float(bn_kl_abd(apply_with_bn_moments(model, teacher, x)[1]))

    before = bn_kl(state)
    state, history = trainer.train(state, teacher, 5, jax.random.key(1), progress=False)
    assert history["loss"].shape == (steps,)
    assert history["loss"][-10:].mean() < 0.7 * history["loss"][:10].mean()
    assert bn_kl(state) < 0.5 * before  # sampled images (running stats) match the teacher better
    # Diversity: the samples cover several of the teacher's 5 classes.
    pred = jnp.argmax(model.apply(teacher, trainer.sample(state, jax.random.key(5), 64))[:, :5], -1)
    assert len(np.unique(np.asarray(pred))) >= 3
    # Training again (the next task, more seen classes) reuses the one compiled chunk.
    trainer.train(state, teacher, 7, jax.random.key(2), steps=20, progress=False)
    assert trainer.loop.compile_counts() == {20: 1}


def test_deepinversion_kd_pads_the_teacher_with_zeros_for_new_classes():
    from dfcl_jax.methods.deepinversion import kd_zero_padded

    rng = np.random.default_rng(1)
    s, t = rng.normal(size=(3, 8)).astype(np.float32), rng.normal(size=(3, 8)).astype(np.float32)
    T, n_old, n_seen = 2.0, 3, 5
    log_p = _log_softmax(s[:, :n_seen] / T)
    q = np.exp(_log_softmax(t[:, :n_old] / T))
    want = -np.sum(q * log_p[:, :n_old], -1)  # zero-padded teacher: new classes contribute 0
    got = kd_zero_padded(jnp.asarray(s), jnp.asarray(t), n_old, n_seen, T)
    np.testing.assert_allclose(got, want, rtol=1e-5)
