"""2-D convolution (NHWC, HWIO kernels) with a backward pass that XLA:CPU runs well.

XLA:CPU computes a convolution's weight gradient from transposed copies of the layer input and
of the output gradient ((N,H,W,C) -> (C,H,W,N)). It fuses the elementwise producers of those
tensors (BatchNorm, ReLU, the residual sums of every earlier block in the stage) into the
transposes and re-evaluates them there with strided reads: in a ResNet-32 train step these
transposes took ~45% of the time. `impl="materialized"` computes the same convolutions but hands
the weight gradient tensors that were written to memory first (`materialize`), so the
transposes are plain copies. Results are identical to `impl="xla"`; `None`/"auto" picks
"materialized" on CPU and "xla" on other backends.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from dfcl_jax.models.blocks import kaiming_normal

CONV_IMPLS = ("auto", "xla", "materialized")
_DIMS = ("NHWC", "HWIO", "NHWC")


def resolve_impl(impl: str | None) -> str:
    """`impl`, or the default for the current backend when None or "auto"."""
    if impl is None or impl == "auto":
        return "materialized" if jax.default_backend() == "cpu" else "xla"
    if impl not in CONV_IMPLS:
        raise ValueError(f"conv impl {impl!r}; allowed: {', '.join(CONV_IMPLS)}")
    return impl


def materialize(x: jax.Array) -> jax.Array:
    """`x`, as a buffer XLA cannot fuse its producers into consumers of (a runtime conditional).

    The other branch (taken only when the first element is NaN) returns NaNs, so XLA cannot
    simplify the conditional away; such a tensor already poisons the gradients it feeds.
    """
    first = x.reshape(-1)[0]
    return jax.lax.cond(first == first, lambda v: v, lambda v: jnp.full_like(v, jnp.nan), x)


def _conv(x, kernel, strides, padding):
    return jax.lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=_DIMS)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_materialized(x, kernel, strides, padding):
    return _conv(x, kernel, strides, padding)


def _fwd(x, kernel, strides, padding):
    return _conv(x, kernel, strides, padding), (x, kernel)


def _bwd(strides, padding, res, g):
    x, kernel = res
    dx = jax.vjp(lambda a: _conv(a, kernel, strides, padding), x)[1](g)[0]
    xm, gm = materialize(x), materialize(g)
    dk = jax.vjp(lambda k: _conv(xm, k, strides, padding), kernel)[1](gm)[0]
    return dx, dk


_conv_materialized.defvjp(_fwd, _bwd)


def conv2d(x, kernel, strides: Sequence[int] = (1, 1), padding=((0, 0), (0, 0)),
           impl: str | None = None):
    """NHWC convolution with an HWIO kernel; `impl` as in the module docstring."""
    strides, padding = tuple(strides), tuple(tuple(p) for p in padding)
    if resolve_impl(impl) == "xla":
        return _conv(x, kernel, strides, padding)
    return _conv_materialized(x, kernel, strides, padding)


class Conv(nn.Module):
    """`nn.Conv` with square kernels and symmetric padding (same parameters: kernel, bias)."""

    features: int
    kernel_size: int
    stride: int = 1
    padding: int | None = None  # None: kernel_size // 2
    use_bias: bool = False
    impl: str | None = None
    kernel_init: nn.initializers.Initializer = kaiming_normal

    @nn.compact
    def __call__(self, x):
        k = self.kernel_size
        kernel = self.param("kernel", self.kernel_init, (k, k, x.shape[-1], self.features),
                            jnp.float32)
        pad = k // 2 if self.padding is None else self.padding
        y = conv2d(x, kernel.astype(x.dtype), (self.stride, self.stride), ((pad, pad), (pad, pad)),
                   self.impl)
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
        return y
