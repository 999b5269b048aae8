"""Backbones as block lists: composition, BN input moments, parameter counts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from dfcl_jax.models import forward_blocks
from dfcl_jax.models.blocks import apply_with_bn_moments
from dfcl_jax.models.resnet import cifar_resnet, resnet18


@pytest.fixture(scope="module")
def tiny():
    model = cifar_resnet(10, depth=8, widths=(4, 8, 16))
    x = jax.random.normal(jax.random.key(0), (6, 32, 32, 3))
    variables = model.init(jax.random.key(1), x)
    # Non-trivial running statistics, so eval-mode BN is not the identity.
    _, state = model.apply(variables, x * 2 + 1, True, mutable=["batch_stats"])
    return model, {"params": variables["params"], "batch_stats": state["batch_stats"]}, x


def test_resnet32_has_the_reference_size():
    model = cifar_resnet(100)
    v = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    n = sum(p.size for p in jax.tree.leaves(v["params"]))
    assert len(model.blocks) == 16 and 0.46e6 < n < 0.48e6
    _, moments = apply_with_bn_moments(model, v, jnp.zeros((2, 32, 32, 3)))
    assert len(moments) == 31
    pmi = cifar_resnet(100, variant="pmi")
    assert len(pmi.blocks) == 17  # stem + 15 residual blocks + the single-block 4th stage


def test_composing_the_blocks_equals_the_full_forward(tiny):
    model, v, x = tiny
    h = x
    for i in range(len(model.blocks)):
        h = forward_blocks(model, v, h, i, i + 1)
    logits = model.apply(v, model.apply(v, h, method=model.pool_features), method=model.classify)
    np.testing.assert_allclose(logits, model.apply(v, x), rtol=1e-5, atol=1e-5)


def test_resnet18_blocks_compose_too():
    model = resnet18(10, small_input=True, width=8)
    x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
    v = model.init(jax.random.key(1), x)
    h = forward_blocks(model, v, x, 0, 4)
    h = forward_blocks(model, v, h, 4, len(model.blocks))
    np.testing.assert_allclose(model.apply(v, h, method=model.pool_features) @
                               v["params"]["head"]["kernel"] + v["params"]["head"]["bias"],
                               model.apply(v, x), rtol=1e-5, atol=1e-5)


def _conv(params, x, stride=1):
    k = params["kernel"]
    pad = k.shape[0] // 2
    return jax.lax.conv_general_dilated(x, k, (stride, stride), [(pad, pad)] * 2,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def test_block_reports_the_moments_of_every_bn_input(tiny):
    model, v, x = tiny
    p, s = v["params"], v["batch_stats"]
    # Stem: BN input is conv(x). Block 1: bn_0 input is conv_0(stem(x)), bn_1 input is
    # conv_1(relu(bn_0(conv_0(stem(x))))).
    stem_in = np.asarray(_conv(p["blocks_0"]["conv_0"], x))
    h = forward_blocks(model, v, x, 0, 1)
    c0 = _conv(p["blocks_1"]["conv_0"], h)
    bn = s["blocks_1"]["bn_0"]
    a = nn.relu((c0 - bn["mean"]) / jnp.sqrt(bn["var"] + 1e-5) * p["blocks_1"]["bn_0"]["scale"]
                + p["blocks_1"]["bn_0"]["bias"])
    c1 = np.asarray(_conv(p["blocks_1"]["conv_1"], a))
    expected = [stem_in, np.asarray(c0), c1]

    _, moments = apply_with_bn_moments(model, v, x)
    _, block_moments = apply_with_bn_moments(model, v, h, 1, 2, False,
                                             method=model.run_blocks)
    assert len(block_moments) == 2
    for got, want, path in zip(moments[:3], expected, ["blocks_0/bn_0", "blocks_1/bn_0",
                                                       "blocks_1/bn_1"]):
        np.testing.assert_allclose(got.mean, want.mean((0, 1, 2)), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(got.var, want.var((0, 1, 2)), rtol=1e-4, atol=1e-5)
        blk, name = path.split("/")
        np.testing.assert_array_equal(got.running_mean, s[blk][name]["mean"])
        np.testing.assert_array_equal(got.running_var, s[blk][name]["var"])
    for got, want in zip(block_moments, moments[1:3]):
        np.testing.assert_allclose(got.mean, want.mean, rtol=1e-5, atol=1e-6)


def test_moment_gradients_flow_to_the_input(tiny):
    model, v, x = tiny

    def loss(img):
        _, ms = apply_with_bn_moments(model, v, img)
        return sum(jnp.sum((m.mean - m.running_mean) ** 2) for m in ms)

    g = jax.grad(loss)(x)
    assert g.shape == x.shape and float(jnp.abs(g).sum()) > 0


def test_train_mode_updates_running_stats_with_unbiased_variance():
    from dfcl_jax.models.batchnorm import BatchNorm

    x = jax.random.normal(jax.random.key(0), (8, 3)) * 3 + 1
    bn = BatchNorm()
    v = bn.init(jax.random.key(0), x)
    _, st = bn.apply(v, x, True, mutable=["batch_stats"])
    np.testing.assert_allclose(st["batch_stats"]["mean"], 0.1 * np.asarray(x).mean(0), rtol=1e-5)
    np.testing.assert_allclose(st["batch_stats"]["var"],
                               0.9 + 0.1 * np.asarray(x).var(0, ddof=1), rtol=1e-5)
