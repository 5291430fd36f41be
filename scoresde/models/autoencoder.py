"""A convolutional autoencoder with a KL-regularised bottleneck, for latent diffusion.

The first stage of latent diffusion (Rombach et al. 2022, their `AutoencoderKL`, without
its attention blocks): a convolutional encoder maps an image `(B, H, W, C)` to the mean
and log-variance of a diagonal Gaussian q(z | x) over latents `(B, H/f, W/f,
latent_channels)`, and a convolutional decoder maps a latent back to an image. The
downsampling factor is f = 2^(len(ch_mult) - 1): one stride-2 convolution between
consecutive resolutions. The residual blocks are the score networks' (DDPM++'s,
`layers.ResnetBlockDDPMpp`, without a time embedding); the KL term and the
reconstruction loss are `losses.get_autoencoder_loss_fn`.

    model = Autoencoder(nf=32, ch_mult=(1, 2, 2), latent_channels=4, num_channels=3)   # f = 4
    mean, logvar = model.apply({"params": params}, x, method="encode")
    x_hat = model.apply({"params": params}, z, method="decode")
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from scoresde.models import layers
from scoresde.models.layers import conv3x3, group_norm
from scoresde.models.registry import register_model

LOGVAR_RANGE = (-30.0, 20.0)  # the log-variance is clipped to it (as LDM's DiagonalGaussianDistribution)


def _block(act, out_ch):
    """A residual block without time embedding or dropout, starting as the identity."""
    return layers.ResnetBlockDDPMpp(act, out_ch=out_ch, dropout=0.0, skip_rescale=False, init_scale=0.0)


class Encoder(nn.Module):
    """x `(B, H, W, C)` -> (mean, logvar) `(B, H/f, W/f, latent_channels)` each."""

    nf: int
    ch_mult: Sequence[int]
    num_res_blocks: int
    latent_channels: int
    nonlinearity: str

    @nn.compact
    def __call__(self, x):
        act = layers.get_act(self.nonlinearity)
        h = conv3x3(x, self.nf)
        for i, mult in enumerate(self.ch_mult):
            for _ in range(self.num_res_blocks):
                h = _block(act, self.nf * mult)(h, train=False)
            if i < len(self.ch_mult) - 1:
                h = layers.Downsample(with_conv=True)(h)
        h = _block(act, h.shape[-1])(h, train=False)  # the middle block
        h = conv3x3(act(group_norm(h)), 2 * self.latent_channels)
        mean, logvar = jnp.split(h, 2, axis=-1)
        return mean, jnp.clip(logvar, *LOGVAR_RANGE)


class Decoder(nn.Module):
    """z `(B, h, w, latent_channels)` -> x `(B, h f, w f, num_channels)` (unbounded; the data
    space's range is learnt)."""

    nf: int
    ch_mult: Sequence[int]
    num_res_blocks: int
    num_channels: int
    nonlinearity: str

    @nn.compact
    def __call__(self, z):
        act = layers.get_act(self.nonlinearity)
        h = conv3x3(z, self.nf * self.ch_mult[-1])
        h = _block(act, h.shape[-1])(h, train=False)  # the middle block
        for i, mult in reversed(list(enumerate(self.ch_mult))):
            for _ in range(self.num_res_blocks):
                h = _block(act, self.nf * mult)(h, train=False)
            if i > 0:
                h = layers.Upsample(with_conv=True)(h)
        return conv3x3(act(group_norm(h)), self.num_channels)


@register_model("autoencoder")
class Autoencoder(nn.Module):
    """KL autoencoder: images `(B, H, W, num_channels)` <-> latents `(B, H/f, W/f, latent_channels)`.

    nf: channels at the first resolution; ch_mult: their multipliers, one per resolution
    (f = 2^(len(ch_mult) - 1)); num_res_blocks: residual blocks per resolution;
    latent_channels: the latent's channels; num_channels: the images' (config.data's).
    """

    nf: int = 32
    ch_mult: Sequence[int] = (1, 2, 2)
    num_res_blocks: int = 1
    latent_channels: int = 4
    num_channels: int = 3
    nonlinearity: str = "swish"

    @property
    def factor(self) -> int:
        """The downsampling factor f: latents are (H/f, W/f)."""
        return 2 ** (len(self.ch_mult) - 1)

    def check(self, image_shape=None):
        """ValueError unless the fields are valid (and the image size `(H, W, C)` fits them)."""
        for name in ("nf", "latent_channels", "num_channels"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) >= 1):
                raise ValueError(f"Autoencoder.{name} must be an integer >= 1, got {getattr(self, name)!r}.")
        if not (isinstance(self.num_res_blocks, int) and self.num_res_blocks >= 0):
            raise ValueError(f"Autoencoder.num_res_blocks must be an integer >= 0, got {self.num_res_blocks!r}.")
        if len(self.ch_mult) < 1 or any(not (isinstance(m, int) and m >= 1) for m in self.ch_mult):
            raise ValueError(f"Autoencoder.ch_mult must be positive integers, one per resolution, got {self.ch_mult!r}.")
        if image_shape is not None:
            h, w, c = image_shape
            if h % self.factor or w % self.factor:
                raise ValueError(f"Images of {h}x{w} cannot be downsampled by the factor {self.factor} of ch_mult="
                                 f"{tuple(self.ch_mult)}: use fewer resolutions.")
            if c != self.num_channels:
                raise ValueError(f"The autoencoder takes {self.num_channels}-channel images, got {c} channels.")

    def setup(self):
        self.check()
        kwargs = dict(nf=self.nf, ch_mult=tuple(self.ch_mult), num_res_blocks=self.num_res_blocks,
                      nonlinearity=self.nonlinearity)
        self.encoder = Encoder(latent_channels=self.latent_channels, **kwargs)
        self.decoder = Decoder(num_channels=self.num_channels, **kwargs)

    def encode(self, x):
        """(mean, logvar) of q(z | x), `(B, H/f, W/f, latent_channels)` each."""
        self.check(x.shape[1:])
        return self.encoder(x)

    def decode(self, z):
        """The image `(B, H, W, num_channels)` of latents z `(B, H/f, W/f, latent_channels)`."""
        if z.shape[-1] != self.latent_channels:
            raise ValueError(f"The decoder takes {self.latent_channels}-channel latents, got shape {z.shape}.")
        return self.decoder(z)

    def __call__(self, x, train: bool = False):
        """decode(mean of encode(x)): the deterministic reconstruction (also what `init` traces)."""
        return self.decode(self.encode(x)[0])

