"""NCSN++ and DDPM++ (Song et al., 2021), ported from score_sde's `models/ncsnpp.py`.

One network, two sets of options. NCSN++ (the VE model): FIR resampling, BigGAN
blocks, residual input pyramid, Gaussian Fourier embedding of log sigma, output
divided by sigma. DDPM++ (the VP model): the same without FIR or pyramid, with
sinusoidal embedding of t * 999 and an unscaled (noise-predicting) output.

The hyperparameters are module fields named as the reference's `config.model.*` and
`config.data.centered`; `sigma_min`, `sigma_max`, `num_scales` give the SMLD noise
ladder `get_sigmas` used with discrete (positional) labels.

Conditioning (not in the reference; see `scoresde.conditioning` for the convention on y):
`num_classes` > 0 adds a class embedding to the time embedding; `context_vocab_size`
> 0 embeds token sequences (`layers.ContextEmbedding`), `context_embedding_dim` > 0
projects float embeddings (an encoder's outputs, `layers.ContextProjection`), and
either follows every self-attention block with a `layers.CrossAttnBlock` to them.
`sr_factor` f > 0 makes a super-resolution network (SR3, Saharia et al. 2021; cascaded
diffusion, Ho et al. 2021): y is a low-resolution image `(B, H/f, W/f, C)`, upsampled
(nearest) and concatenated to x on the channels (`conditioning.low_res_input`), so only
the first convolution grows. With all four 0 (the defaults) the network and its
parameters are the reference's.
"""

from __future__ import annotations

import functools
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from scoresde.models import layers
from scoresde.models.layers import conv3x3, default_init, divide_by_sigma, group_norm
from scoresde.conditioning import check_condition, check_low_res, low_res_input
from scoresde.models.registry import get_sigmas, register_model


@register_model("ncsnpp")
class NCSNpp(nn.Module):
    """NCSN++ / DDPM++ U-Net: x `(B, H, W, C)`, labels `(B,)`, y -> `(B, H, W, C)`.

    Labels are sigma (embedding_type 'fourier', continuous VE training) or a time
    label, t * 999 or a discrete index (embedding_type 'positional'). The defaults
    are the CIFAR-10 NCSN++ cont. (VE) configuration.
    """

    nf: int = 128
    ch_mult: Sequence[int] = (1, 2, 2, 2)
    num_res_blocks: int = 4
    attn_resolutions: Sequence[int] = (16,)
    dropout: float = 0.1
    resamp_with_conv: bool = True
    conditional: bool = True
    fir: bool = True
    fir_kernel: Sequence[int] = (1, 3, 3, 1)
    skip_rescale: bool = True
    resblock_type: str = "biggan"
    progressive: str = "none"
    progressive_input: str = "residual"
    progressive_combine: str = "sum"
    attention_type: str = "ddpm"
    embedding_type: str = "fourier"
    fourier_scale: float = 16.0
    init_scale: float = 0.0
    scale_by_sigma: bool = True
    nonlinearity: str = "swish"
    normalization: str = "GroupNorm"
    conv_size: int = 3
    centered: bool = False
    sigma_min: float = 0.01
    sigma_max: float = 50.0
    num_scales: int = 1000
    num_classes: int = 0
    context_vocab_size: int = 0
    context_length: int = 8
    context_dim: int = 64
    context_embedding_dim: int = 0
    sr_factor: int = 0  # > 0: y is a low-resolution image (B, H/f, W/f, C) concatenated to x, upsampled
    remat: bool = False  # gradient checkpointing: recompute each residual block in the backward pass
    compute_dtype: str = "float32"  # "bfloat16": mixed precision (float32 parameters, GroupNorm statistics, softmax)

    def _check(self):
        options = {
            "compute_dtype": (self.compute_dtype, ("float32", "bfloat16", "float16")),
            "resblock_type": (self.resblock_type, ("ddpm", "biggan")),
            "progressive": (self.progressive, ("none", "output_skip", "residual")),
            "progressive_input": (self.progressive_input, ("none", "input_skip", "residual")),
            "progressive_combine": (self.progressive_combine, ("sum", "cat")),
            "embedding_type": (self.embedding_type, ("fourier", "positional")),
            "attention_type": (self.attention_type, ("ddpm",)),
            "normalization": (self.normalization, ("groupnorm",)),
        }
        for name, (value, valid) in options.items():
            if value.lower() not in valid:
                raise ValueError(f"Unknown {name} {value!r}; valid: {', '.join(valid)}.")
        if self.conv_size != 3:
            raise ValueError(f"Only conv_size 3 is implemented (as in the reference), got {self.conv_size}.")
        if isinstance(self.sr_factor, bool) or not (isinstance(self.sr_factor, int) and self.sr_factor >= 0):
            raise ValueError(f"sr_factor must be an integer >= 0 (0: no low-resolution input), got {self.sr_factor!r}.")
        if self.sr_factor and (self.num_classes or self.context_vocab_size or self.context_embedding_dim):
            raise ValueError("A super-resolution network (sr_factor > 0) takes the low-resolution image as its "
                             "condition y; it cannot also take class labels, tokens or embeddings.")
        if self.num_classes and not self.conditional:
            raise ValueError("Class conditioning (num_classes > 0) needs conditional=True (a time embedding).")

    @nn.compact
    def __call__(self, x, time_cond, y=None, train: bool = True):
        """y: None, class labels `(B,)`, tokens `(B, L)`, embeddings `(B, L, E)` or a low-resolution
        image `(B, H/f, W/f, C)`, as configured (see `scoresde.conditioning`)."""
        self._check()
        if self.sr_factor:
            check_low_res(y, x.shape, self.sr_factor)
        else:
            check_condition(y, x.shape[0], self.num_classes, self.context_vocab_size, self.context_embedding_dim)
        act = layers.get_act(self.nonlinearity)
        nf, ch_mult, num_res_blocks = self.nf, self.ch_mult, self.num_res_blocks
        attn_resolutions, num_resolutions = tuple(self.attn_resolutions), len(ch_mult)
        fir, fir_kernel, skip_rescale, init_scale = self.fir, tuple(self.fir_kernel), self.skip_rescale, self.init_scale
        resblock_type = self.resblock_type.lower()
        progressive, progressive_input = self.progressive.lower(), self.progressive_input.lower()
        combiner = functools.partial(layers.Combine, method=self.progressive_combine.lower())

        # Noise-level / time embedding.
        if self.embedding_type.lower() == "fourier":
            # Gaussian Fourier features of log sigma; only for continuous training.
            used_sigmas = time_cond
            temb = layers.GaussianFourierProjection(embedding_size=nf, scale=self.fourier_scale)(jnp.log(used_sigmas))
        else:
            # Sinusoidal positional embeddings of the time label.
            temb = layers.get_timestep_embedding(time_cond, nf)
        if self.conditional:
            temb = nn.Dense(nf * 4, kernel_init=default_init())(temb)
            temb = nn.Dense(nf * 4, kernel_init=default_init())(act(temb))
            if self.num_classes:
                temb = temb + layers.class_embedding(y, x.shape[0], self.num_classes, nf * 4)
        else:
            temb = None

        AttnBlock = functools.partial(layers.AttnBlockpp, init_scale=init_scale, skip_rescale=skip_rescale)
        CrossAttnBlock = functools.partial(layers.CrossAttnBlock, init_scale=init_scale, skip_rescale=skip_rescale)
        context = mask = None
        if self.context_vocab_size:
            # y=None: one padding token, so only the null token is attended to.
            embed = layers.ContextEmbedding(self.context_vocab_size, self.context_length, self.context_dim)
            context, mask = embed(jnp.zeros((x.shape[0], 1), jnp.int32) if y is None else y)
        elif self.context_embedding_dim:
            # y=None: one padding vector, so only the null embedding is attended to.
            embed = layers.ContextProjection(self.context_dim)
            context, mask = embed(jnp.zeros((x.shape[0], 1, self.context_embedding_dim)) if y is None else y)

        def attend(h):
            """Self-attention, then cross-attention to the context if there is one."""
            h = AttnBlock()(h)
            return h if context is None else CrossAttnBlock()(h, context, mask)

        Upsample = functools.partial(layers.Upsample, with_conv=self.resamp_with_conv, fir=fir, fir_kernel=fir_kernel)
        Downsample = functools.partial(
            layers.Downsample, with_conv=self.resamp_with_conv, fir=fir, fir_kernel=fir_kernel
        )
        # The output pyramid upsamples without a conv (output_skip) or with one (residual); same for the input.
        pyramid_upsample = functools.partial(
            layers.Upsample, fir=fir, fir_kernel=fir_kernel, with_conv=progressive == "residual"
        )
        pyramid_downsample = functools.partial(
            layers.Downsample, fir=fir, fir_kernel=fir_kernel, with_conv=progressive_input == "residual"
        )
        block = layers.ResnetBlockDDPMpp if resblock_type == "ddpm" else layers.ResnetBlockBigGANpp
        block = layers.checkpointed(block) if self.remat else block
        if resblock_type == "ddpm":
            ResnetBlock = functools.partial(
                block,
                act=act,
                dropout=self.dropout,
                init_scale=init_scale,
                skip_rescale=skip_rescale,
            )
        else:
            ResnetBlock = functools.partial(
                block,
                act=act,
                dropout=self.dropout,
                fir=fir,
                fir_kernel=fir_kernel,
                init_scale=init_scale,
                skip_rescale=skip_rescale,
            )

        channels = x.shape[-1]  # of the output
        if self.sr_factor:  # the low-resolution image is in the data space too
            x = low_res_input(x, y, self.sr_factor)
        if not self.centered:
            # Input data in [0, 1]: map to [-1, 1].
            x = 2 * x - 1.0
        x = x.astype(self.compute_dtype)  # mixed precision: the layers compute in x's dtype

        # Downsampling path.
        input_pyramid = x if progressive_input != "none" else None
        hs = [conv3x3(x, nf)]
        for i_level in range(num_resolutions):
            for _ in range(num_res_blocks):
                h = ResnetBlock(out_ch=nf * ch_mult[i_level])(hs[-1], temb, train)
                if h.shape[1] in attn_resolutions:
                    h = attend(h)
                hs.append(h)

            if i_level != num_resolutions - 1:
                if resblock_type == "ddpm":
                    h = Downsample()(hs[-1])
                else:
                    h = ResnetBlock(down=True)(hs[-1], temb, train)

                if progressive_input == "input_skip":
                    input_pyramid = pyramid_downsample()(input_pyramid)
                    h = combiner()(input_pyramid, h)
                elif progressive_input == "residual":
                    input_pyramid = pyramid_downsample(out_ch=h.shape[-1])(input_pyramid)
                    input_pyramid = layers.rescaled_sum(input_pyramid, h) if skip_rescale else input_pyramid + h
                    h = input_pyramid
                hs.append(h)

        h = hs[-1]
        h = ResnetBlock()(h, temb, train)
        h = attend(h)
        h = ResnetBlock()(h, temb, train)

        # Upsampling path.
        pyramid = None
        for i_level in reversed(range(num_resolutions)):
            for _ in range(num_res_blocks + 1):
                h = ResnetBlock(out_ch=nf * ch_mult[i_level])(jnp.concatenate([h, hs.pop()], axis=-1), temb, train)
            if h.shape[1] in attn_resolutions:
                h = attend(h)

            if progressive != "none":
                if i_level == num_resolutions - 1:
                    if progressive == "output_skip":
                        pyramid = conv3x3(act(group_norm(h)), channels, bias=True, init_scale=init_scale)
                    else:
                        pyramid = conv3x3(act(group_norm(h)), h.shape[-1], bias=True)
                elif progressive == "output_skip":
                    pyramid = pyramid_upsample()(pyramid)
                    pyramid = pyramid + conv3x3(act(group_norm(h)), channels, bias=True, init_scale=init_scale)
                else:
                    pyramid = pyramid_upsample(out_ch=h.shape[-1])(pyramid)
                    pyramid = layers.rescaled_sum(pyramid, h) if skip_rescale else pyramid + h
                    h = pyramid

            if i_level != 0:
                if resblock_type == "ddpm":
                    h = Upsample()(h)
                else:
                    h = ResnetBlock(up=True)(h, temb, train)

        assert not hs

        if progressive == "output_skip":
            h = pyramid
        else:
            h = act(group_norm(h))
            h = conv3x3(h, channels, init_scale=init_scale)

        h = h.astype(jnp.float32)
        if self.scale_by_sigma:
            if self.embedding_type.lower() == "positional":
                used_sigmas = get_sigmas(self.sigma_min, self.sigma_max, self.num_scales)[time_cond.astype(jnp.int32)]
            h = divide_by_sigma(h, used_sigmas)
        return h


@register_model("ddpmpp")
class DDPMpp(NCSNpp):
    """DDPM++: `NCSNpp` with the CIFAR-10 DDPM++ cont. (VP) defaults.

    The reference registers only 'ncsnpp' and gets DDPM++ from config options; this alias
    only changes the defaults (no FIR, no input pyramid, positional embedding of t * 999,
    no sigma scaling, centered data in [-1, 1]).
    """

    fir: bool = False
    progressive_input: str = "none"
    embedding_type: str = "positional"
    scale_by_sigma: bool = False
    centered: bool = True
