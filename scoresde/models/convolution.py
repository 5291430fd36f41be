"""The 2-D convolution of the networks (`conv_general_dilated`), with a reverse-mode gradient
that XLA's CPU compiler keeps fast inside loops (`canonical_gradients`)."""

from __future__ import annotations

import contextlib
import contextvars
import functools

import jax
import jax.numpy as jnp

NHWC = ("NHWC", "HWIO", "NHWC")  # images (B, H, W, C), kernels (kh, kw, C_in, C_out)

_CANONICAL_GRADIENTS = contextvars.ContextVar("canonical_gradients", default=False)


@contextlib.contextmanager
def canonical_gradients():
    """Within this context, at trace time, `conv_general_dilated` takes its reverse-mode
    gradient from two canonical convolutions (see there). Reverse mode only: `jax.jvp` and
    `jax.linearize` cannot go through it, so it is for loss gradients (`train.make_train_step`)."""
    token = _CANONICAL_GRADIENTS.set(True)
    try:
        yield
    finally:
        _CANONICAL_GRADIENTS.reset(token)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, precision=None, **kwargs):
    """`lax.conv_general_dilated`; within `canonical_gradients()` on CPU, with a gradient made of
    two canonical NHWC/HWIO convolutions.

    JAX's own gradient expresses the input gradient as a convolution with the kernel's I/O
    dimensions swapped by its dimension numbers (`01oi`) and the weight gradient as one with
    permuted batch and feature dimensions. Outside loops XLA's CPU compiler turns both into
    its fast kernels; inside a `while` body (a `lax.scan`: gradient accumulation, several
    train steps per call) it does not, and falls back to kernels 20-40x slower
    (`experiments/bench_memory.py --lax-gradient`). Here, for stride 1 without dilation or
    groups in 2-D NHWC/HWIO (every convolution of the U-Nets but the strided FIR resampling
    ones), the backward pass is written with explicit transposes, which XLA keeps canonical
    everywhere:

        dx = conv(g, flip_hw(w)^{io}, pad (k - 1 - lo, k - 1 - hi)),
        dw = conv(x^{c b}, g^{b o}, pad (lo, hi))^T,

    the same arithmetic (identical results) as JAX's rule. Anything else is
    `lax.conv_general_dilated` itself. Usable as flax's `nn.Conv(conv_general_dilated=...)`;
    the networks call it through this module, so that a benchmark can swap it.
    """
    canonical = (
        _CANONICAL_GRADIENTS.get() and jax.default_backend() == "cpu" and lhs.ndim == 4 and not kwargs
        and feature_group_count == 1 and tuple(window_strides) == (1, 1)
        and all(d in (None, 1) or tuple(d) == (1, 1) for d in (lhs_dilation, rhs_dilation))
        and jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
        == jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, NHWC)
    )
    if not canonical:
        return jax.lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                            dimension_numbers, feature_group_count, precision=precision, **kwargs)
    if isinstance(padding, str):
        padding = jax.lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], (1, 1), padding)
    return _conv_nhwc(lhs, rhs, tuple(tuple(int(p) for p in pair) for pair in padding), precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_nhwc(x, w, padding, precision):
    """Stride-1 NHWC/HWIO convolution `(B, H, W, I), (kh, kw, I, O) -> (B, H', W', O)` (`conv_general_dilated`)."""
    return jax.lax.conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=NHWC, precision=precision)


def _conv_nhwc_fwd(x, w, padding, precision):
    return _conv_nhwc(x, w, padding, precision), (x, w)


def _conv_nhwc_bwd(padding, precision, residuals, g):
    x, w = residuals
    kernel = w.shape[:2]
    flipped = jnp.swapaxes(jnp.flip(w, (0, 1)), 2, 3)  # (kh, kw, O, I)
    dx_padding = [(k - 1 - lo, k - 1 - hi) for k, (lo, hi) in zip(kernel, padding)]
    dx = jax.lax.conv_general_dilated(g, flipped, (1, 1), dx_padding, dimension_numbers=NHWC, precision=precision)
    # dw[p, q, i, o] = sum_{b, y, x} x_pad[b, y + p, x + q, i] g[b, y, x, o]: a convolution
    # of x with channels as the batch and the batch as the features, the kernel being g.
    dw = jax.lax.conv_general_dilated(x.transpose(3, 1, 2, 0), g.transpose(1, 2, 0, 3), (1, 1), padding,
                                      dimension_numbers=NHWC, precision=precision)
    return dx.astype(x.dtype), dw.transpose(1, 2, 0, 3).astype(w.dtype)


_conv_nhwc.defvjp(_conv_nhwc_fwd, _conv_nhwc_bwd)
