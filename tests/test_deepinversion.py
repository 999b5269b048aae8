"""DeepInversion and `invert()`: the loss falls and the BN statistics move towards the teacher's."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from dfcl_jax.inversion import DeepInversionConfig, invert
from dfcl_jax.inversion.losses import bn_l2_di
from dfcl_jax.models.batchnorm import BatchNorm
from dfcl_jax.models.blocks import apply_with_bn_moments


def bn_distance(model, variables, x):
    return float(bn_l2_di(apply_with_bn_moments(model, variables, x)[1]))


def test_deepinversion_lowers_its_loss_and_matches_the_teachers_statistics(trained_teacher):
    model, variables = trained_teacher
    labels = jnp.arange(20) % 5
    # lr 0.2: at 0.1 the 120 steps leave 3 of 20 images on the wrong side of this teacher's
    # boundaries (0.85; 0.95 at 0.2), measured with the 6-epoch teacher.
    cfg = DeepInversionConfig(steps=120, lr=0.2, r_feature=1.0, tv=1e-4, chunk=20, unroll=False)
    res = invert(model, variables, labels=labels, image_shape=(32, 32, 1), config=cfg,
                 rng=jax.random.key(3), n_seen=5, progress=False)
    assert res.curve.shape == (120,)
    assert res.curve[-10:].mean() < 0.5 * res.curve[:10].mean()
    assert res.loss <= res.curve.min() + 1e-5  # keep-best returns the best iterate
    noise = jax.random.normal(jax.random.key(3), (20, 32, 32, 1))
    assert bn_distance(model, variables, res.images) < 0.5 * bn_distance(model, variables, noise)
    pred = jnp.argmax(model.apply(variables, res.images)[:, :5], -1)
    assert float(jnp.mean(pred == labels)) >= 0.9  # the teacher sees the target classes


class TinyNet(nn.Module):
    """Not a ResNet, not built from blocks: conv-BN-ReLU, pooling, dense."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.relu(BatchNorm()(nn.Conv(6, (3, 3))(x), train))
        x = nn.relu(BatchNorm()(nn.Conv(8, (3, 3), strides=2)(x), train))
        return nn.Dense(4)(x.mean((1, 2)))


def test_invert_works_on_a_model_that_is_not_a_resnet():
    net = TinyNet()
    x = jax.random.normal(jax.random.key(0), (32, 16, 16, 3)) * 0.5 + 0.3
    v = net.init(jax.random.key(1), x)
    for _ in range(20):  # running statistics of a "data" distribution N(0.3, 0.5^2)
        _, st = net.apply(v, x, True, mutable=["batch_stats"])
        v = {"params": v["params"], "batch_stats": st["batch_stats"]}
    labels = jnp.array([0, 1, 2, 3] * 4)
    res = invert(net, v, labels=labels, image_shape=(16, 16, 3), steps=80, lr=0.05,
                 r_feature=1.0, jitter=1, chunk=20, unroll=False, progress=False)
    assert res.curve[-5:].mean() < 0.5 * res.curve[:5].mean()
    start = jax.random.normal(jax.random.key(0), (16, 16, 16, 3))
    assert bn_distance(net, v, res.images) < 0.5 * bn_distance(net, v, start)

    # The same through a plain function images -> (logits, moments), unrolled in chunks of 10:
    # chunking and unrolling change the speed, not the optimisation.
    res_fn = invert(lambda img: apply_with_bn_moments(net, v, img), labels=labels,
                    image_shape=(16, 16, 3), steps=80, lr=0.05, r_feature=1.0, jitter=1,
                    chunk=10, unroll=True, progress=False)
    np.testing.assert_allclose(res_fn.curve, res.curve, rtol=1e-4)


def test_invalid_engine_and_fields_are_named():
    with pytest.raises(ValueError, match="engine='gan'; allowed: deepinversion"):
        invert(TinyNet(), {}, labels=jnp.zeros(2, jnp.int32), image_shape=(8, 8, 3), engine="gan")
    with pytest.raises(ValueError, match="deepinversion.steps=0 must be > 0"):
        invert(lambda x: (x, []), labels=jnp.zeros(2, jnp.int32), image_shape=(8, 8, 3), steps=0)
