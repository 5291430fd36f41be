"""A noise-conditional image classifier p_t(y | x_t), for classifier guidance.

Not in the reference (Dhariwal & Nichol, 2021, guide with such a classifier): the
downsampling half of DDPM++, then global average pooling and a linear layer. It takes
the same noise labels as the score networks (`noise_labels(sde, t, continuous)`), so
guidance adds grad_x log p_t(y | x) to the score at the same t.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from scoresde import sde_lib
from scoresde.models import layers
from scoresde.models.layers import conv3x3, default_init, group_norm
from scoresde.models.registry import register_model
from scoresde.score import noise_labels, pytree_dataclass, static_field


@register_model("classifier")
class NoiseConditionalClassifier(nn.Module):
    """DDPM++ encoder classifier: x `(B, H, W, C)`, labels `(B,)` -> logits `(B, num_classes)`.

    Labels are sigma (embedding_type 'fourier') or a time label, t * 999 or a discrete
    index ('positional'), as in `NCSNpp`. Inputs in [0, 1] are mapped to [-1, 1]
    unless `centered`.
    """

    nf: int = 32
    ch_mult: Sequence[int] = (1, 2)
    num_res_blocks: int = 1
    dropout: float = 0.0
    num_classes: int = 10
    embedding_type: str = "positional"
    fourier_scale: float = 16.0
    centered: bool = False

    @nn.compact
    def __call__(self, x, time_cond, train: bool = True):
        act = nn.swish
        nf = self.nf
        embedding_type = self.embedding_type.lower()
        if embedding_type == "fourier":
            temb = layers.GaussianFourierProjection(embedding_size=nf, scale=self.fourier_scale)(jnp.log(time_cond))
        elif embedding_type == "positional":
            temb = layers.get_timestep_embedding(time_cond, nf)
        else:
            raise ValueError(f"Unknown embedding_type {self.embedding_type!r}; valid: fourier, positional.")
        temb = nn.Dense(nf * 4, kernel_init=default_init())(temb)
        temb = nn.Dense(nf * 4, kernel_init=default_init())(act(temb))

        ResnetBlock = functools.partial(layers.ResnetBlockDDPMpp, act=act, dropout=self.dropout, skip_rescale=True)
        h = x if self.centered else 2 * x - 1.0
        h = conv3x3(h, nf)
        for i_level, mult in enumerate(self.ch_mult):
            for _ in range(self.num_res_blocks):
                h = ResnetBlock(out_ch=nf * mult)(h, temb, train)
            if i_level != len(self.ch_mult) - 1:
                h = layers.Downsample(with_conv=True)(h)
        h = act(group_norm(h))
        return nn.Dense(self.num_classes, kernel_init=default_init())(jnp.mean(h, axis=(1, 2)))


@pytree_dataclass
class NetworkClassifier:
    """`classifier(x, t) -> (B, num_classes)`: log p_t(y | x) = log_softmax(logits), in eval
    mode. A pytree like `score.NetworkScore`: `params` traced, the rest static."""

    params: Any
    module: Any = static_field()
    sde: sde_lib.SDE = static_field()
    continuous: bool = static_field(default=True)

    def __call__(self, x, t):
        labels = noise_labels(self.sde, t, self.continuous)
        return jax.nn.log_softmax(self.module.apply({"params": self.params}, x, labels, train=False), axis=-1)


def get_classifier_log_prob_fn(sde: sde_lib.SDE, model: nn.Module, params, continuous: bool = True):
    """The `NetworkClassifier` of a noise-conditional classifier network with `params`."""
    return NetworkClassifier(params, model, sde, continuous)
