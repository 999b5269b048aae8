"""The convolution module: the materialized backward matches XLA's convolution exactly."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from dfcl_jax.models.conv import Conv, conv2d, materialize, resolve_impl
from dfcl_jax.models.resnet import cifar_resnet


@pytest.mark.parametrize("kernel,stride,cin,cout", [(3, 1, 4, 8), (3, 2, 8, 16), (1, 2, 8, 16)])
def test_materialized_conv_matches_lax_conv_and_gradients(kernel, stride, cin, cout):
    x = jax.random.normal(jax.random.key(0), (4, 9, 9, cin))
    k = jax.random.normal(jax.random.key(1), (kernel, kernel, cin, cout))
    pad = ((kernel // 2, kernel // 2),) * 2
    ref = jax.lax.conv_general_dilated(x, k, (stride, stride), pad,
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))

    def loss(impl):
        return lambda x_, k_: jnp.sum(jnp.sin(conv2d(x_, k_, (stride, stride), pad, impl)))

    np.testing.assert_allclose(conv2d(x, k, (stride, stride), pad, "materialized"), ref,
                               rtol=1e-6, atol=1e-6)
    g_ref = jax.jit(jax.grad(loss("xla"), (0, 1)))(x, k)
    g_mat = jax.jit(jax.grad(loss("materialized"), (0, 1)))(x, k)
    for a, b in zip(g_mat, g_ref):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_conv_module_is_flax_conv_with_the_same_parameters():
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
    ours = Conv(5, 3, use_bias=True, impl="materialized")
    variables = ours.init(jax.random.key(1), x)
    flax_conv = nn.Conv(5, (3, 3), padding=1)
    assert jax.tree.map(jnp.shape, variables) == jax.tree.map(
        jnp.shape, flax_conv.init(jax.random.key(1), x))
    np.testing.assert_allclose(ours.apply(variables, x), flax_conv.apply(variables, x),
                               rtol=1e-6, atol=1e-6)


def test_resnet_train_gradients_agree_between_conv_impls():
    x = jax.random.normal(jax.random.key(0), (8, 32, 32, 3))
    models = {impl: cifar_resnet(10, depth=8, conv_impl=impl) for impl in ("xla", "materialized")}
    variables = models["xla"].init(jax.random.key(1), x)

    def grads(model):
        def loss(params):
            out, _ = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, x,
                                 True, mutable=["batch_stats"])
            return jnp.mean(jnp.square(out))
        return jax.jit(jax.grad(loss))(variables["params"])

    g_xla, g_mat = grads(models["xla"]), grads(models["materialized"])
    for a, b in zip(jax.tree.leaves(g_mat), jax.tree.leaves(g_xla)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_materialize_is_identity_and_survives_compilation():
    x = jnp.arange(12.0).reshape(3, 4)
    f = jax.jit(lambda a: jnp.transpose(materialize(jnp.maximum(a * 2.0, 1.0))))
    np.testing.assert_array_equal(f(x), jnp.transpose(jnp.maximum(x * 2.0, 1.0)))
    # XLA must keep the conditional (else it fuses the producers into the transpose again).
    assert "conditional" in f.lower(x).compile().as_text()
    assert bool(jnp.isnan(materialize(x.at[0, 0].set(jnp.nan))).all())


def test_conv_impl_defaults_and_rejects_unknown():
    assert resolve_impl(None) == ("materialized" if jax.default_backend() == "cpu" else "xla")
    assert resolve_impl("auto") == resolve_impl(None)
    with pytest.raises(ValueError, match="conv impl"):
        resolve_impl("im2col")
