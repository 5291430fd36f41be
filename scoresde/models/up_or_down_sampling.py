"""FIR up- and down-sampling of NHWC images (StyleGAN2's upfirdn), for NCSN++.

Ported from score_sde's `models/up_or_down_sampling.py` (itself ported from
NVlabs/stylegan2's `dnnlib/tflib/ops/upfirdn_2d.py`), NHWC only. Images are
`(B, H, W, C)`; a FIR kernel `k` is separable `(n,)` or 2-D `(n, n)`.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from scoresde.models import convolution
from scoresde.models.convolution import NHWC as _NHWC


def _setup_kernel(k) -> np.ndarray:
    """The 2-D FIR kernel `(n, n)`, normalized to sum to one (outer product if separable)."""
    k = np.asarray(k, dtype=np.float32)
    if k.ndim == 1:
        k = np.outer(k, k)
    k /= np.sum(k)
    assert k.ndim == 2 and k.shape[0] == k.shape[1]
    return k


def upfirdn_2d(x, k, up=1, down=1, pad0=0, pad1=0):
    """Upsample (insert zeros), pad (crop if negative), FIR-filter, downsample.

    x `(B, H, W, C)`, k `(kh, kw)`; the same factor and padding on both axes.
    Returns `(B, (H up + pad0 + pad1 - kh + 1) // down, ..., C)` (rounded up).
    """
    k = np.asarray(k, dtype=np.float32)
    _, in_h, in_w, ch = x.shape
    kernel_h, kernel_w = k.shape
    # Upsample by inserting up - 1 zeros after each pixel.
    x = jnp.reshape(x, (-1, in_h, 1, in_w, 1, ch))
    x = jnp.pad(x, [[0, 0], [0, 0], [0, up - 1], [0, 0], [0, up - 1], [0, 0]])
    x = jnp.reshape(x, (-1, in_h * up, in_w * up, ch))
    # Pad, or crop where the padding is negative.
    x = jnp.pad(x, [[0, 0], [max(pad0, 0), max(pad1, 0)], [max(pad0, 0), max(pad1, 0)], [0, 0]])
    x = x[:, max(-pad0, 0) : x.shape[1] - max(-pad1, 0), max(-pad0, 0) : x.shape[2] - max(-pad1, 0), :]
    # Convolve every channel separately with the (flipped) filter: fold channels into the batch.
    out_h, out_w = x.shape[1], x.shape[2]
    x = jnp.reshape(jnp.transpose(x, (0, 3, 1, 2)), (-1, out_h, out_w, 1))
    w = jnp.asarray(k[::-1, ::-1, None, None], dtype=x.dtype)
    x = convolution.conv_general_dilated(x, w, (1, 1), "VALID", dimension_numbers=_NHWC)
    x = jnp.reshape(x, (-1, ch, out_h - kernel_h + 1, out_w - kernel_w + 1))
    x = jnp.transpose(x, (0, 2, 3, 1))
    return x[:, ::down, ::down, :]


def upsample_2d(x, k=None, factor: int = 2, gain: float = 1.0):
    """Upsample `(B, H, W, C)` to `(B, H f, W f, C)` with FIR kernel k (default: nearest)."""
    assert isinstance(factor, int) and factor >= 1
    k = _setup_kernel([1] * factor if k is None else k) * (gain * factor**2)
    p = k.shape[0] - factor
    return upfirdn_2d(x, k, up=factor, pad0=(p + 1) // 2 + factor - 1, pad1=p // 2)


def downsample_2d(x, k=None, factor: int = 2, gain: float = 1.0):
    """Downsample `(B, H, W, C)` to `(B, H / f, W / f, C)` with FIR kernel k (default: average pooling)."""
    assert isinstance(factor, int) and factor >= 1
    k = _setup_kernel([1] * factor if k is None else k) * gain
    p = k.shape[0] - factor
    return upfirdn_2d(x, k, down=factor, pad0=(p + 1) // 2, pad1=p // 2)


def upsample_conv_2d(x, w, k=None, factor: int = 2, gain: float = 1.0):
    """Fused `upsample_2d` then convolution with w `(kh, kw, C_in, C_out)`: `(B, H f, W f, C_out)`.

    A strided transposed convolution followed by one FIR filtering (padding done once).
    """
    assert isinstance(factor, int) and factor >= 1
    conv_h, conv_w, in_c, _ = w.shape
    assert conv_w == conv_h
    k = _setup_kernel([1] * factor if k is None else k) * (gain * factor**2)
    p = (k.shape[0] - factor) - (conv_w - 1)
    # Transpose the weights for the transposed convolution (tf.nn.conv2d_transpose semantics).
    num_groups = x.shape[-1] // in_c
    w = jnp.reshape(w, (conv_h, conv_w, in_c, num_groups, -1))
    w = jnp.transpose(w[::-1, ::-1], (0, 1, 4, 3, 2))
    w = jnp.reshape(w, (conv_h, conv_w, -1, num_groups * in_c))
    x = jax.lax.conv_transpose(
        x, w, strides=(factor, factor), padding="VALID", transpose_kernel=True, dimension_numbers=_NHWC
    )
    return upfirdn_2d(x, k, pad0=(p + 1) // 2 + factor - 1, pad1=p // 2 + 1)


def conv_downsample_2d(x, w, k=None, factor: int = 2, gain: float = 1.0):
    """Fused convolution with w `(kh, kw, C_in, C_out)` then `downsample_2d`: `(B, H / f, W / f, C_out)`."""
    assert isinstance(factor, int) and factor >= 1
    conv_h, conv_w, _, _ = w.shape
    assert conv_w == conv_h
    k = _setup_kernel([1] * factor if k is None else k) * gain
    p = (k.shape[0] - factor) + (conv_w - 1)
    x = upfirdn_2d(x, k, pad0=(p + 1) // 2, pad1=p // 2)
    return jax.lax.conv_general_dilated(x, w, (factor, factor), "VALID", dimension_numbers=_NHWC)


def naive_upsample_2d(x, factor: int = 2):
    """Nearest-neighbour upsampling, `(B, H, W, C) -> (B, H f, W f, C)`."""
    _, h, w, c = x.shape
    x = jnp.reshape(x, (-1, h, 1, w, 1, c))
    x = jnp.tile(x, (1, 1, factor, 1, factor, 1))
    return jnp.reshape(x, (-1, h * factor, w * factor, c))


def naive_downsample_2d(x, factor: int = 2):
    """Average pooling over f x f blocks, `(B, H, W, C) -> (B, H / f, W / f, C)`."""
    _, h, w, c = x.shape
    x = jnp.reshape(x, (-1, h // factor, factor, w // factor, factor, c))
    return jnp.mean(x, axis=(2, 4))


class Conv2d(nn.Module):
    """Convolution with optional fused FIR up- or down-sampling by 2 (StyleGAN2).

    `(B, H, W, C) -> (B, H', W', fmaps)`, H' = 2H (up), H/2 (down) or H.
    Parameters: `weight` `(kernel, kernel, C, fmaps)` and `bias` `(fmaps,)` (zeros).
    """

    fmaps: int
    kernel: int
    up: bool = False
    down: bool = False
    resample_kernel: Sequence[int] = (1, 3, 3, 1)
    use_bias: bool = True
    weight_var: str = "weight"
    kernel_init: Callable[..., Any] | None = None

    @nn.compact
    def __call__(self, x):
        assert not (self.up and self.down)
        assert self.kernel >= 1 and self.kernel % 2 == 1
        w = self.param(self.weight_var, self.kernel_init, (self.kernel, self.kernel, x.shape[-1], self.fmaps))
        w = jnp.asarray(w, x.dtype)
        if self.up:
            x = upsample_conv_2d(x, w, k=self.resample_kernel)
        elif self.down:
            x = conv_downsample_2d(x, w, k=self.resample_kernel)
        else:
            x = convolution.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=_NHWC)
        if self.use_bias:
            b = self.param("bias", nn.initializers.zeros, (x.shape[-1],))
            x = x + jnp.asarray(b, x.dtype).reshape((1, 1, 1, -1))
        return x
