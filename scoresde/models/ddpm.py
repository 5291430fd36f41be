"""The DDPM U-Net (Ho et al., 2020), ported from score_sde's `models/ddpm.py`.

That file is the Flax equivalent of hojonathanho/diffusion's
`diffusion_tf/models/unet.py`. Hyperparameters are module fields named as the
reference's `config.model.*` and `config.data.centered`.
"""

from __future__ import annotations

import functools
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from scoresde.models import layers
from scoresde.models.layers import conv3x3, default_init, divide_by_sigma
from scoresde.conditioning import check_condition
from scoresde.models.registry import get_sigmas, register_model


@register_model("ddpm")
class DDPM(nn.Module):
    """DDPM U-Net: x `(B, H, W, C)`, labels `(B,)` -> `(B, H, W, C)`.

    Labels are time labels (discrete index or t * 999), embedded sinusoidally. With
    `scale_by_sigma` the labels must be integer indices into the SMLD ladder
    (`get_sigmas(sigma_min, sigma_max, num_scales)`), and the output is divided by
    sigma. Defaults: the CIFAR-10 DDPM configuration (35.7M parameters). Channel
    counts nf * ch_mult must be multiples of 32 (GroupNorm with 32 groups).
    Unconditional only: y must be None.
    """

    nf: int = 128
    ch_mult: Sequence[int] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attn_resolutions: Sequence[int] = (16,)
    dropout: float = 0.1
    resamp_with_conv: bool = True
    conditional: bool = True
    scale_by_sigma: bool = False
    nonlinearity: str = "swish"
    normalization: str = "GroupNorm"
    centered: bool = True
    sigma_min: float = 0.01
    sigma_max: float = 50.0
    num_scales: int = 1000

    @nn.compact
    def __call__(self, x, labels, y=None, train: bool = True):
        check_condition(y, x.shape[0])
        if self.normalization.lower() != "groupnorm":
            raise ValueError(f"Unknown normalization {self.normalization!r}; valid: GroupNorm.")
        act = layers.get_act(self.nonlinearity)
        nf, ch_mult, num_res_blocks = self.nf, self.ch_mult, self.num_res_blocks
        attn_resolutions, num_resolutions = tuple(self.attn_resolutions), len(ch_mult)

        AttnBlock = layers.AttnBlock
        ResnetBlock = functools.partial(layers.ResnetBlockDDPM, act=act, dropout=self.dropout)

        if self.conditional:
            # Timestep embedding.
            temb = layers.get_timestep_embedding(labels, nf)
            temb = nn.Dense(nf * 4, kernel_init=default_init())(temb)
            temb = nn.Dense(nf * 4, kernel_init=default_init())(act(temb))
        else:
            temb = None

        # Input in [-1, 1] if centered, else in [0, 1].
        h = x if self.centered else 2 * x - 1.0

        # Downsampling path.
        hs = [conv3x3(h, nf)]
        for i_level in range(num_resolutions):
            for _ in range(num_res_blocks):
                h = ResnetBlock(out_ch=nf * ch_mult[i_level])(hs[-1], temb, train)
                if h.shape[1] in attn_resolutions:
                    h = AttnBlock()(h)
                hs.append(h)
            if i_level != num_resolutions - 1:
                hs.append(layers.Downsample(with_conv=self.resamp_with_conv)(hs[-1]))

        h = hs[-1]
        h = ResnetBlock()(h, temb, train)
        h = AttnBlock()(h)
        h = ResnetBlock()(h, temb, train)

        # Upsampling path.
        for i_level in reversed(range(num_resolutions)):
            for _ in range(num_res_blocks + 1):
                h = ResnetBlock(out_ch=nf * ch_mult[i_level])(jnp.concatenate([h, hs.pop()], axis=-1), temb, train)
            if h.shape[1] in attn_resolutions:
                h = AttnBlock()(h)
            if i_level != 0:
                h = layers.Upsample(with_conv=self.resamp_with_conv)(h)

        assert not hs

        h = act(layers.group_norm(h, 32))
        h = conv3x3(h, x.shape[-1], init_scale=0.0)

        if self.scale_by_sigma:
            # Divide the output by sigma (for the NCSN loss); DDPM's loss scales by sigma itself.
            used_sigmas = get_sigmas(self.sigma_min, self.sigma_max, self.num_scales)[labels.astype(jnp.int32)]
            h = divide_by_sigma(h, used_sigmas)
        return h
