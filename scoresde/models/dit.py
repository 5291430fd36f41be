"""DiT, the Diffusion Transformer (Peebles & Xie, 2023), as a score network.

x `(B, H, W, C)` is cut into p x p patches (a conv with kernel = stride = p), giving
T = HW / p^2 tokens of width D = hidden_size, plus a fixed 2-D sin-cos positional
embedding. The conditioning c `(B, D)` is an MLP of 256 sinusoidal features of the
noise label, plus a class embedding when num_classes > 0. `depth` transformer blocks
use adaLN-Zero: c gives each block a shift and scale after each LayerNorm and a gate
on each residual branch; these modulations and the final linear layer start at zero,
so every block starts as the identity and the network's output at exactly zero. A
final adaLN layer maps each token to p x p x C values, unpatchified to `(B, H, W, C)`.

Standard sizes (`DIT_SIZES`, `dit_from_name("DiT-XL/2")`) and their parameter counts
for the paper's setting (32 x 32 x 4 latents, 1000 classes). "Official" is
facebookresearch/DiT's `sum(p.numel() for p in model.parameters())`, whose rounded /2
values are the paper's 33M, 130M, 458M and 675M; it includes the frozen positional
embedding (T D; a constant here) and, with learn_sigma=True, C more output channels
(p^2 C (D + 1) in the final layer), which a score network does not have. "Here" is
this module's count; tests/test_dit.py checks "here" + those two terms == "official".

| model    | depth | D    | heads | official    | here        |
|----------|-------|------|-------|-------------|-------------|
| DiT-S/2  | 12    | 384  | 6     | 32,963,360  | 32,858,896  |
| DiT-S/4  |       |      |       | 32,945,024  | 32,895,808  |
| DiT-S/8  |       |      |       | 33,148,160  | 33,043,456  |
| DiT-B/2  | 12    | 768  | 12    | 130,512,416 | 130,303,504 |
| DiT-B/4  |       |      |       | 130,475,648 | 130,377,280 |
| DiT-B/8  |       |      |       | 130,881,536 | 130,672,384 |
| DiT-L/2  | 24    | 1024 | 16    | 458,102,816 | 457,824,272 |
| DiT-L/4  |       |      |       | 458,053,760 | 457,922,624 |
| DiT-L/8  |       |      |       | 458,594,816 | 458,316,032 |
| DiT-XL/2 | 28    | 1152 | 16    | 675,129,632 | 674,816,272 |
| DiT-XL/4 |       |      |       | 675,074,432 | 674,926,912 |
| DiT-XL/8 |       |      |       | 675,683,072 | 675,369,472 |

Otherwise as the official code, initialization included, but for: the sinusoidal
features (`layers.get_timestep_embedding`'s); label dropout, which is the loss's
(`p_uncond`), with the null class (label -1 or y=None) of `scoresde.conditioning`.
The labels are `noise_labels`' (t * 999 for VP); the output is not divided by sigma,
so with the VE SDE pick an eps or x0 `parameterization`.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from scoresde.conditioning import check_condition
from scoresde.models import layers
from scoresde.models.registry import register_model

# name -> (depth, hidden_size, num_heads), the paper's Table 1.
DIT_SIZES = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16)}

_xavier = nn.initializers.xavier_uniform()
_normal = nn.initializers.normal(0.02)
_zeros = nn.initializers.zeros


def sincos_pos_embed_2d(height: int, width: int, dim: int) -> np.ndarray:
    """Fixed embedding `(height * width, dim)` of a row-major grid of tokens (MAE's, DiT's):
    [sin, cos] of the column index, then of the row index, at frequencies 10000^(-k / (dim/4))."""
    omega = 1.0 / 10000 ** (np.arange(dim // 4) / (dim // 4))

    def embed(pos):
        angles = pos.reshape(-1)[:, None] * omega[None, :]
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    return np.concatenate([embed(cols), embed(rows)], axis=1).astype(np.float32)


def modulate(x, shift, scale):
    """Tokens x `(B, T, D)` scaled and shifted per example by `(B, D)` arrays."""
    return x * (1 + scale[:, None]) + shift[:, None]


def layer_norm(x):
    """LayerNorm without affine parameters (the adaLN modulation replaces them)."""
    return nn.LayerNorm(epsilon=1e-6, use_bias=False, use_scale=False, dtype=x.dtype)(x)


def ada_ln_modulation(c, n: int, dtype):
    """n zero-initialized `(B, D)` modulations (shifts, scales, gates) of c `(B, D)`."""
    out = nn.Dense(n * c.shape[-1], kernel_init=_zeros, dtype=dtype, name="adaLN_modulation")(nn.silu(c))
    return jnp.split(out, n, axis=-1)


class DiTBlock(nn.Module):
    """adaLN-Zero transformer block: tokens `(B, T, D)`, conditioning `(B, D)` -> `(B, T, D)`."""

    num_heads: int
    mlp_ratio: float = 4.0

    @nn.compact
    def __call__(self, x, c):
        B, T, D = x.shape
        dense = functools.partial(nn.Dense, kernel_init=_xavier, dtype=x.dtype)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = ada_ln_modulation(c, 6, x.dtype)

        h = dense(3 * D, name="qkv")(modulate(layer_norm(x), shift_msa, scale_msa))
        q, k, v = jnp.unstack(h.reshape(B, T, 3, self.num_heads, D // self.num_heads), axis=2)
        w = jnp.einsum("bqhd,bkhd->bhqk", q, k) * (D // self.num_heads) ** -0.5
        w = jax.nn.softmax(w.astype(jnp.float32), axis=-1).astype(v.dtype)  # float32 under mixed precision
        h = jnp.einsum("bhqk,bkhd->bqhd", w, v).reshape(B, T, D)
        x = x + gate_msa[:, None] * dense(D, name="proj")(h)

        h = dense(int(D * self.mlp_ratio), name="fc1")(modulate(layer_norm(x), shift_mlp, scale_mlp))
        h = dense(D, name="fc2")(nn.gelu(h, approximate=True))
        return x + gate_mlp[:, None] * h


class FinalLayer(nn.Module):
    """adaLN (shift and scale), then a zero-initialized linear layer: `(B, T, D), (B, D) -> (B, T, features)`."""

    features: int

    @nn.compact
    def __call__(self, x, c):
        shift, scale = ada_ln_modulation(c, 2, x.dtype)
        h = modulate(layer_norm(x), shift, scale)
        return nn.Dense(self.features, kernel_init=_zeros, dtype=x.dtype, name="linear")(h)


@register_model("dit")
class DiT(nn.Module):
    """DiT: x `(B, H, W, C)`, labels `(B,)`, y -> `(B, H, W, C)`; H and W multiples of patch_size.

    Defaults: DiT-XL/2, unconditional. y: None, or class labels `(B,)` (-1: the null
    class) when num_classes > 0. `centered` False maps data in [0, 1] to [-1, 1];
    `remat` recomputes each block in the backward pass; `compute_dtype` "bfloat16"
    computes in bf16 with float32 parameters, LayerNorm statistics and softmax.
    """

    hidden_size: int = 1152
    depth: int = 28
    num_heads: int = 16
    patch_size: int = 2
    mlp_ratio: float = 4.0
    num_classes: int = 0
    centered: bool = True
    remat: bool = False
    compute_dtype: str = "float32"

    def _check(self, x):
        if self.compute_dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"Unknown compute_dtype {self.compute_dtype!r}; valid: float32, bfloat16, float16.")
        if self.hidden_size % self.num_heads or self.hidden_size % 4:
            raise ValueError(
                f"hidden_size={self.hidden_size} must be a multiple of 4 and of num_heads={self.num_heads}."
            )
        if x.ndim != 4 or x.shape[1] % self.patch_size or x.shape[2] % self.patch_size:
            raise ValueError(f"DiT takes images (B, H, W, C) with H, W multiples of patch_size={self.patch_size}; "
                             f"got shape {x.shape}.")

    @nn.compact
    def __call__(self, x, labels, y=None, train: bool = True):
        """train is unused (DiT has no dropout); it is part of every network's signature."""
        self._check(x)
        check_condition(y, x.shape[0], self.num_classes)
        B, H, W, C = x.shape
        p, D = self.patch_size, self.hidden_size

        # Conditioning c (B, D): the noise label's embedding, plus the class's.
        c = layers.get_timestep_embedding(labels, 256)
        c = nn.Dense(D, kernel_init=_normal, name="t_embedder_fc1")(c)
        c = nn.Dense(D, kernel_init=_normal, name="t_embedder_fc2")(nn.silu(c))
        if self.num_classes:
            c = c + layers.class_embedding(y, B, self.num_classes, D, _normal)

        # Tokens (B, T, D): patches plus positions; the conv is initialized as a linear layer of flattened patches.
        h = x if self.centered else 2 * x - 1.0
        patch_init = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform", in_axis=(0, 1, 2), out_axis=-1)
        h = nn.Conv(D, (p, p), strides=(p, p), padding="VALID", kernel_init=patch_init, dtype=self.compute_dtype,
                    name="x_embedder")(h.astype(self.compute_dtype))
        h = h.reshape(B, -1, D) + jnp.asarray(sincos_pos_embed_2d(H // p, W // p, D), self.compute_dtype)

        block = layers.checkpointed(DiTBlock, static_argnums=()) if self.remat else DiTBlock
        for _ in range(self.depth):
            h = block(self.num_heads, self.mlp_ratio)(h, c)

        # Each token to a p x p x C patch, in place.
        h = FinalLayer(p * p * C)(h, c)
        h = h.reshape(B, H // p, W // p, p, p, C).transpose(0, 1, 3, 2, 4, 5).reshape(B, H, W, C)
        return h.astype(jnp.float32)


def dit_from_name(name: str, **fields) -> DiT:
    """A standard DiT by the paper's name, "DiT-XL/2" (or "XL/2"): size/patch size; other fields as given."""
    size, _, patch = name.removeprefix("DiT-").partition("/")
    if size not in DIT_SIZES or not patch.isdigit():
        raise ValueError(f"Unknown DiT {name!r}; expected DiT-<size>/<patch>, size one of {', '.join(DIT_SIZES)}.")
    depth, hidden_size, num_heads = DIT_SIZES[size]
    return DiT(hidden_size=hidden_size, depth=depth, num_heads=num_heads, patch_size=int(patch), **fields)
