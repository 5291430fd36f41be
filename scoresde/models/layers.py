"""Layers shared by the DDPM and NCSN++ / DDPM++ score networks.

Ported from score_sde's `models/layers.py` (the DDPM part, itself from
hojonathanho/diffusion's `diffusion_tf/nn.py`), `models/layerspp.py` and
`models/normalization.py`, with the same initializations, so parameter counts and
initial behaviour match the reference. Module class names are the reference's, so
parameter trees carry the reference's names (`ResnetBlockBigGANpp_0/Conv_0/kernel`, ...).

DDPM's blocks are the ++ blocks with DDPM's settings: `ResnetBlockDDPM` and `AttnBlock`
are `ResnetBlockDDPMpp` and `AttnBlockpp` with GroupNorm(32 groups), no skip rescaling
and a zero-initialized output layer.

Conditioning (not in the reference): `class_embedding` for class labels and
`ContextEmbedding` + `CrossAttnBlock` for token sequences (see `scoresde.conditioning`).

Images are NHWC `(B, H, W, C)`; time embeddings are `(B, E)`.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from scoresde.models import convolution
from scoresde.models import up_or_down_sampling as updown

Activation = Callable[[jax.Array], jax.Array]

ACTIVATIONS = {
    "elu": nn.elu,
    "relu": nn.relu,
    "lrelu": functools.partial(nn.leaky_relu, negative_slope=0.2),
    "swish": nn.swish,
}


def get_act(nonlinearity: str) -> Activation:
    """The activation named by `config.model.nonlinearity`: elu, relu, lrelu (slope 0.2), swish."""
    key = nonlinearity.lower()
    if key not in ACTIVATIONS:
        raise ValueError(f"Unknown nonlinearity {nonlinearity!r}; valid: {', '.join(ACTIVATIONS)}.")
    return ACTIVATIONS[key]


def default_init(scale: float = 1.0):
    """DDPM's initializer: variance scaling (fan_avg, uniform); scale 0 means 1e-10."""
    scale = 1e-10 if scale == 0 else scale
    return nn.initializers.variance_scaling(scale, "fan_avg", "uniform")


def conv1x1(x, out_planes: int, stride: int = 1, bias: bool = True, dilation: int = 1, init_scale: float = 1.0):
    """1x1 convolution with DDPM initialization (zero bias): `(B, H, W, C) -> (B, H/s, W/s, out_planes)`."""
    return nn.Conv(
        out_planes,
        kernel_size=(1, 1),
        strides=(stride, stride),
        padding="SAME",
        use_bias=bias,
        kernel_dilation=(dilation, dilation),
        kernel_init=default_init(init_scale),
        bias_init=nn.initializers.zeros,
        dtype=x.dtype,
        conv_general_dilated=convolution.conv_general_dilated,
    )(x)


def conv3x3(x, out_planes: int, stride: int = 1, bias: bool = True, dilation: int = 1, init_scale: float = 1.0):
    """3x3 convolution with DDPM initialization (zero bias): `(B, H, W, C) -> (B, H/s, W/s, out_planes)`."""
    return nn.Conv(
        out_planes,
        kernel_size=(3, 3),
        strides=(stride, stride),
        padding="SAME",
        use_bias=bias,
        kernel_dilation=(dilation, dilation),
        kernel_init=default_init(init_scale),
        bias_init=nn.initializers.zeros,
        dtype=x.dtype,
        conv_general_dilated=convolution.conv_general_dilated,
    )(x)


def checkpointed(block: type[nn.Module], static_argnums: tuple[int, ...] = (3,)) -> type[nn.Module]:
    """`nn.remat` of a block class: its activations are recomputed in the backward pass
    instead of stored. `static_argnums` count self as 0; the default fits residual blocks
    called as (x, temb, train). Keeps the class name, so the parameter tree (and
    checkpoints) are the same with or without it."""
    cls = nn.remat(block, static_argnums=static_argnums)
    cls.__name__ = block.__name__
    return cls


def fusion_barrier(x):
    """x unchanged `(B, ...)`, materialized here on XLA's CPU backend, forward and backward.

    XLA:CPU fuses elementwise producers into each of their consumers and recomputes them
    there. Along a U-Net's residual stream, and along its cotangent in the backward pass,
    these chains grow from block to block: each GroupNorm reduction and each transposed
    operand of a convolution's weight gradient recomputed the sums of several blocks
    before it, in transposed order (fusions of over 100 operands,
    `experiments/results/profile_xla_ops.md`). XLA fuses nothing across a `lax.cond`, and
    the transpose of a cond is a cond, so a block input passed through one is computed once
    in each pass (`experiments/bench_cpu_speedups.py`). One branch multiplies by 1, or JAX
    would forward the value around an identity cond, and the predicate reads x, or XLA would
    fold it. Under `vmap` with a batched x the cond becomes a select and the barrier is gone
    (the values are right). Off the CPU it is x itself: measured on the CPU only, and a cond
    costs a GPU a host round trip.
    """
    if jax.default_backend() != "cpu":
        return x
    return jax.lax.cond(jnp.ravel(x)[0] > 0, lambda v: v * 1, lambda v: v, x)


def position_sums(v, by_matmul: bool):
    """`(B, N, C) -> (B, C)`: sum over N, as a batched product with a vector of ones or as a reduction."""
    if by_matmul:
        return jnp.einsum("bn,bnc->bc", jnp.ones(v.shape[:2], v.dtype), v)
    return jnp.sum(v, axis=1)


class GroupNorm(nn.Module):
    """Group normalization `(B, ..., C) -> same dtype`: flax's `nn.GroupNorm` (its parameter
    names, float32 parameters and epsilon), computed differently on the CPU.

    y = (x - mean_g) / sqrt(var_g + epsilon) * scale + bias, with mean_g and var_g =
    E[x^2] - mean_g^2 (flax's fast variance, clipped at 0) over each example's group of
    C / num_groups channels at all positions, in float32 or wider whatever x's dtype. On the
    CPU the sums over positions are batched matrix-vector products (`position_sums`), which
    XLA:CPU runs 1.4-1.7x faster forward and backward than the reductions of `nn.GroupNorm`
    (the groupnorm rows of `experiments/results/profile_layers.md`, before and after this
    class); elsewhere they are reductions.
    """

    num_groups: int
    epsilon: float = 1e-6

    @nn.compact
    def __call__(self, x):
        B, C = x.shape[0], x.shape[-1]
        if self.num_groups < 1 or C % self.num_groups:
            raise ValueError(f"GroupNorm: {C} channels do not split into {self.num_groups} groups.")
        scale = self.param("scale", nn.initializers.ones, (C,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (C,), jnp.float32)
        flat = jnp.reshape(x, (B, -1, C)).astype(jnp.promote_types(x.dtype, jnp.float32))
        size = flat.shape[1] * (C // self.num_groups)
        by_matmul = jax.default_backend() == "cpu"

        def group_mean(v):  # (B, N, C) -> (B, num_groups)
            return position_sums(v, by_matmul).reshape(B, self.num_groups, -1).sum(-1) / size

        mean = group_mean(flat)
        var = jnp.maximum(group_mean(flat * flat) - mean * mean, 0.0)
        gain = jnp.repeat(jax.lax.rsqrt(var + self.epsilon), C // self.num_groups, axis=1) * scale  # (B, C)
        shift = bias - jnp.repeat(mean, C // self.num_groups, axis=1) * gain
        broadcast = (B,) + (1,) * (x.ndim - 2) + (C,)
        return (x * gain.reshape(broadcast) + shift.reshape(broadcast)).astype(x.dtype)


def group_norm(x, num_groups: Optional[int] = None):
    """GroupNorm (a fresh `GroupNorm_i` submodule); by default NCSN++'s min(C // 4, 32) groups."""
    groups = min(x.shape[-1] // 4, 32) if num_groups is None else num_groups
    return GroupNorm(num_groups=groups)(x)


def divide_by_sigma(h, sigmas):
    """h `(B, ...)` divided by per-example noise levels `(B,)` (NCSN++'s `scale_by_sigma`)."""
    return h / jnp.reshape(sigmas, (h.shape[0],) + (1,) * (h.ndim - 1))


def get_timestep_embedding(timesteps, embedding_dim: int, max_positions: int = 10000):
    """Transformer sinusoidal embedding of (possibly fractional) timesteps `(B,)` -> `(B, embedding_dim)`.

    [sin(t w_0), ..., sin(t w_{d/2-1}), cos(t w_0), ...], w_i = max_positions^(-i / (d/2 - 1)).
    """
    assert timesteps.ndim == 1
    half_dim = embedding_dim // 2
    emb = math.log(max_positions) / (half_dim - 1)
    emb = jnp.exp(jnp.arange(half_dim, dtype=jnp.float32) * -emb)
    emb = timesteps[:, None] * emb[None, :]
    emb = jnp.concatenate([jnp.sin(emb), jnp.cos(emb)], axis=1)
    if embedding_dim % 2 == 1:  # zero pad
        emb = jnp.pad(emb, [[0, 0], [0, 1]])
    assert emb.shape == (timesteps.shape[0], embedding_dim)
    return emb


class GaussianFourierProjection(nn.Module):
    """Random Fourier features of a scalar: `(B,) -> (B, 2 embedding_size)`.

    [sin(2 pi x W), cos(2 pi x W)] with fixed W ~ N(0, scale^2) (a parameter `W`
    behind stop_gradient, so it is stored with the parameters but never trained).
    """

    embedding_size: int = 256
    scale: float = 1.0

    @nn.compact
    def __call__(self, x):
        W = self.param("W", nn.initializers.normal(stddev=self.scale), (self.embedding_size,))
        W = jax.lax.stop_gradient(W)
        x_proj = x[:, None] * W[None, :] * 2 * jnp.pi
        return jnp.concatenate([jnp.sin(x_proj), jnp.cos(x_proj)], axis=-1)


class NIN(nn.Module):
    """Network-in-network: a dense layer on the last axis, `(..., C) -> (..., num_units)`."""

    num_units: int
    init_scale: float = 0.1

    @nn.compact
    def __call__(self, x):
        in_dim = int(x.shape[-1])
        W = self.param("W", default_init(scale=self.init_scale), (in_dim, self.num_units))
        b = self.param("b", nn.initializers.zeros, (self.num_units,))
        y = jnp.tensordot(x, W.astype(x.dtype), axes=1) + b.astype(x.dtype)
        assert y.shape == x.shape[:-1] + (self.num_units,)
        return y


class Combine(nn.Module):
    """Merge a skip connection x into y: 1x1 conv of x to y's channels, then concat or sum."""

    method: str = "cat"

    @nn.compact
    def __call__(self, x, y):
        h = conv1x1(x, y.shape[-1])
        if self.method == "cat":
            return jnp.concatenate([h, y], axis=-1)
        if self.method == "sum":
            return h + y
        raise ValueError(f"Method {self.method} not recognized; valid: cat, sum.")


class AttnBlockpp(nn.Module):
    """Single-head self-attention over all H x W positions, residual: `(B, H, W, C) -> same`.

    `num_groups` None uses NCSN++'s min(C // 4, 32) GroupNorm groups.
    """

    skip_rescale: bool = False
    init_scale: float = 0.0
    num_groups: Optional[int] = None

    @nn.compact
    def __call__(self, x):
        x = fusion_barrier(x)
        B, H, W, C = x.shape
        h = group_norm(x, self.num_groups)
        # Over the flattened positions `(B, HW, C)`: XLA's CPU backend runs these two batched
        # matmuls 1.2-1.4x faster forward and backward than the same einsums over (h, w) pairs.
        q = jnp.reshape(NIN(C)(h), (B, H * W, C))
        k = jnp.reshape(NIN(C)(h), (B, H * W, C))
        v = jnp.reshape(NIN(C)(h), (B, H * W, C))
        w = jnp.einsum("bqc,bkc->bqk", q, k) * (int(C) ** (-0.5))
        w = jax.nn.softmax(w.astype(jnp.float32), axis=-1).astype(v.dtype)  # float32 under mixed precision
        h = jnp.reshape(jnp.einsum("bqk,bkc->bqc", w, v), (B, H, W, C))
        h = NIN(C, init_scale=self.init_scale)(h)
        if not self.skip_rescale:
            return x + h
        return rescaled_sum(x, h)


class CrossAttnBlock(nn.Module):
    """Single-head cross-attention from the H x W positions to a context, residual.

    x `(B, H, W, C)`, context `(B, L, D)`, mask `(B, L)` (False: ignored) -> `(B, H, W, C)`:
    x + NIN(softmax_l(q k_l^T / sqrt(C)) v_l), q from GroupNorm(x), k and v from the
    context. Every row of the mask must keep at least one entry.
    """

    skip_rescale: bool = False
    init_scale: float = 0.0
    num_groups: Optional[int] = None

    @nn.compact
    def __call__(self, x, context, mask):
        C = x.shape[-1]
        h = group_norm(x, self.num_groups)
        q = NIN(C)(h)
        k = NIN(C)(context)
        v = NIN(C)(context)
        w = jnp.einsum("bhwc,blc->bhwl", q, k) * (int(C) ** (-0.5))
        w = jnp.where(mask[:, None, None, :], w, jnp.finfo(w.dtype).min)
        w = jax.nn.softmax(w, axis=-1)
        h = jnp.einsum("bhwl,blc->bhwc", w, v)
        h = NIN(C, init_scale=self.init_scale)(h)
        return _residual(x, h, self.skip_rescale)


def _with_null(null, h, mask):
    """Prepend the learned null embedding `(dim,)`, never masked, to a context `(B, L, dim)`
    and its mask `(B, L)`: a row of padding only (the null condition) attends to it alone."""
    B, _, dim = h.shape
    context = jnp.concatenate([jnp.broadcast_to(null.astype(h.dtype), (B, 1, dim)), h], axis=1)
    return context, jnp.concatenate([jnp.ones((B, 1), bool), mask], axis=1)


class ContextEmbedding(nn.Module):
    """Tokens `(B, L)` (0 = padding) -> context `(B, 1 + L, dim)` and its mask `(B, 1 + L)`.

    context = [null, Embed(tokens) + position[:L]], with one learned null token that is
    never masked, so a row of padding only (the null condition) attends to it alone.
    L must be at most `length`.
    """

    vocab_size: int
    length: int = 8
    dim: int = 64

    @nn.compact
    def __call__(self, tokens):
        L = tokens.shape[1]
        if L > self.length:
            raise ValueError(f"Token sequences are at most context_length={self.length} long, got length {L}.")
        position = self.param("position", nn.initializers.normal(0.02), (self.length, self.dim))
        null = self.param("null", nn.initializers.normal(1.0), (self.dim,))
        h = nn.Embed(self.vocab_size, self.dim)(tokens) + position[:L]
        return _with_null(null, h, tokens != 0)


class ContextProjection(nn.Module):
    """Embeddings `(B, L, E)` (an all-zero vector = padding) -> context `(B, 1 + L, dim)`
    and its mask `(B, 1 + L)`.

    context = [null, Dense(embeddings)]: a learned projection E -> dim of an encoder's
    outputs (which carry their own positions), after one learned null embedding that is
    never masked, so a row of padding only (the null condition) attends to it alone.
    """

    dim: int = 64

    @nn.compact
    def __call__(self, embeddings):
        null = self.param("null", nn.initializers.normal(1.0), (self.dim,))
        h = nn.Dense(self.dim, kernel_init=default_init())(embeddings)
        return _with_null(null, h, jnp.any(embeddings != 0, axis=-1))


def class_embedding(y, batch_size: int, num_classes: int, features: int, embedding_init=nn.linear.default_embed_init):
    """Learned class embedding `(B,) -> (B, features)` (a fresh `Embed_i`).

    num_classes + 1 rows; the last is the null class, used for label -1 and for y=None.
    """
    labels = jnp.full((batch_size,), num_classes, jnp.int32) if y is None else jnp.where(y < 0, num_classes, y)
    return nn.Embed(num_classes + 1, features, embedding_init=embedding_init)(labels)


class AttnBlock(AttnBlockpp):
    """DDPM's self-attention block: GroupNorm(32), plain residual, zero-initialized output."""

    num_groups: Optional[int] = 32


class Upsample(nn.Module):
    """Upsample by 2: `(B, H, W, C) -> (B, 2H, 2W, out_ch or C)`.

    Nearest-neighbour (+ 3x3 conv if with_conv), or with fir: FIR filtering (fused
    with a 3x3 conv if with_conv). DDPM uses fir=False.
    """

    out_ch: Optional[int] = None
    with_conv: bool = False
    fir: bool = False
    fir_kernel: Sequence[int] = (1, 3, 3, 1)

    @nn.compact
    def __call__(self, x):
        B, H, W, C = x.shape
        out_ch = self.out_ch if self.out_ch else C
        if not self.fir:
            h = jax.image.resize(x, (B, H * 2, W * 2, C), "nearest")
            if self.with_conv:
                h = conv3x3(h, out_ch)
        elif not self.with_conv:
            h = updown.upsample_2d(x, self.fir_kernel, factor=2)
        else:
            h = updown.Conv2d(
                out_ch, kernel=3, up=True, resample_kernel=self.fir_kernel, use_bias=True, kernel_init=default_init()
            )(x)
        assert h.shape == (B, 2 * H, 2 * W, out_ch)
        return h


class Downsample(nn.Module):
    """Downsample by 2: `(B, H, W, C) -> (B, H/2, W/2, out_ch or C)`.

    Average pooling (or a stride-2 3x3 conv if with_conv), or with fir: FIR
    filtering (fused with a 3x3 conv if with_conv). DDPM uses fir=False.
    """

    out_ch: Optional[int] = None
    with_conv: bool = False
    fir: bool = False
    fir_kernel: Sequence[int] = (1, 3, 3, 1)

    @nn.compact
    def __call__(self, x):
        B, H, W, C = x.shape
        out_ch = self.out_ch if self.out_ch else C
        if not self.fir:
            if self.with_conv:
                x = conv3x3(x, out_ch, stride=2)
            else:
                x = nn.avg_pool(x, window_shape=(2, 2), strides=(2, 2), padding="SAME")
        elif not self.with_conv:
            x = updown.downsample_2d(x, self.fir_kernel, factor=2)
        else:
            x = updown.Conv2d(
                out_ch, kernel=3, down=True, resample_kernel=self.fir_kernel, use_bias=True, kernel_init=default_init()
            )(x)
        assert x.shape == (B, H // 2, W // 2, out_ch)
        return x


def _add_temb(h, temb, act, out_ch):
    """Add a per-channel bias computed from the time embedding `(B, E)` to h `(B, H, W, out_ch)`."""
    if temb is None:
        return h
    return h + nn.Dense(out_ch, kernel_init=default_init(), dtype=h.dtype)(act(temb))[:, None, None, :]


def rescaled_sum(x, h):
    """(x + h) / sqrt(2), the skip rescaling, in x's dtype (a bfloat16 sum stays bfloat16)."""
    return (x + h) / jnp.asarray(np.sqrt(2.0), x.dtype)


def _residual(x, h, skip_rescale):
    return rescaled_sum(x, h) if skip_rescale else x + h


class ResnetBlockDDPMpp(nn.Module):
    """DDPM's residual block (as in NCSN++): `(B, H, W, C), temb (B, E) -> (B, H, W, out_ch)`.

    GroupNorm-act-conv3x3, + Dense(act(temb)), GroupNorm-act-dropout-conv3x3 (init_scale),
    shortcut NIN (or conv3x3 if conv_shortcut) when C != out_ch. `num_groups` None
    uses min(C // 4, 32) GroupNorm groups.
    """

    act: Activation
    out_ch: Optional[int] = None
    conv_shortcut: bool = False
    dropout: float = 0.1
    skip_rescale: bool = False
    init_scale: float = 0.0
    num_groups: Optional[int] = None

    @nn.compact
    def __call__(self, x, temb=None, train: bool = True):
        x = fusion_barrier(x)
        C = x.shape[-1]
        out_ch = self.out_ch if self.out_ch else C
        h = self.act(group_norm(x, self.num_groups))
        h = conv3x3(h, out_ch)
        h = _add_temb(h, temb, self.act, out_ch)
        h = self.act(group_norm(h, self.num_groups))
        h = nn.Dropout(self.dropout)(h, deterministic=not train)
        h = conv3x3(h, out_ch, init_scale=self.init_scale)
        if C != out_ch:
            x = conv3x3(x, out_ch) if self.conv_shortcut else NIN(out_ch)(x)
        return _residual(x, h, self.skip_rescale)


class ResnetBlockDDPM(ResnetBlockDDPMpp):
    """DDPM's own residual block: GroupNorm(32), plain residual, zero-initialized second conv."""

    dropout: float = 0.5
    num_groups: Optional[int] = 32


class ResnetBlockBigGANpp(nn.Module):
    """BigGAN-style residual block that may also resample by 2.

    `(B, H, W, C), temb (B, E) -> (B, H', W', out_ch)`, H' = 2H (up), H/2 (down) or H.
    Both branches are resampled (FIR or naive) before the first conv; the shortcut gets
    a 1x1 conv whenever channels change or the block resamples.
    """

    act: Activation
    up: bool = False
    down: bool = False
    out_ch: Optional[int] = None
    dropout: float = 0.1
    fir: bool = False
    fir_kernel: Sequence[int] = (1, 3, 3, 1)
    skip_rescale: bool = True
    init_scale: float = 0.0

    def _resample(self, x):
        if self.up:
            return updown.upsample_2d(x, self.fir_kernel, factor=2) if self.fir else updown.naive_upsample_2d(x, 2)
        if self.down:
            return updown.downsample_2d(x, self.fir_kernel, factor=2) if self.fir else updown.naive_downsample_2d(x, 2)
        return x

    @nn.compact
    def __call__(self, x, temb=None, train: bool = True):
        x = fusion_barrier(x)
        C = x.shape[-1]
        out_ch = self.out_ch if self.out_ch else C
        h = self.act(group_norm(x))
        h, x = self._resample(h), self._resample(x)
        h = conv3x3(h, out_ch)
        h = _add_temb(h, temb, self.act, out_ch)
        h = self.act(group_norm(h))
        h = nn.Dropout(self.dropout)(h, deterministic=not train)
        h = conv3x3(h, out_ch, init_scale=self.init_scale)
        if C != out_ch or self.up or self.down:
            x = conv1x1(x, out_ch)
        return _residual(x, h, self.skip_rescale)
