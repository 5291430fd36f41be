"""A time-conditioned residual MLP for low-dimensional data `(B, D)` (toy 2-D sets, mixtures).

Not in the reference (which has only image networks); it reuses NCSN++'s pieces:
the same label embeddings, DDPM initialization, temb MLP and residual blocks with
the time embedding added as a bias, with dense layers in place of convolutions.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from scoresde.models import layers
from scoresde.models.layers import default_init, divide_by_sigma
from scoresde.conditioning import check_condition
from scoresde.models.registry import get_sigmas, register_model


class ResidualDenseBlock(nn.Module):
    """act-Dense, + Dense(act(temb)), act-dropout-Dense (init_scale), residual: `(B, H) -> (B, H)`."""

    act: layers.Activation
    dropout: float = 0.0
    skip_rescale: bool = True
    init_scale: float = 0.0

    @nn.compact
    def __call__(self, x, temb=None, train: bool = True):
        width = x.shape[-1]
        h = nn.Dense(width, kernel_init=default_init())(self.act(x))
        if temb is not None:
            h = h + nn.Dense(width, kernel_init=default_init())(self.act(temb))
        h = self.act(h)
        h = nn.Dropout(self.dropout)(h, deterministic=not train)
        h = nn.Dense(width, kernel_init=default_init(self.init_scale))(h)
        return (x + h) / np.sqrt(2.0) if self.skip_rescale else x + h


@register_model("mlp")
class MLP(nn.Module):
    """Residual MLP score network: x `(B, D)`, labels `(B,)`, y -> `(B, D)`.

    embedding_type 'fourier': Gaussian Fourier features of log(label) (labels > 0:
    sigma for continuous VE, t * 999 for continuous VP), as NCSN++; 'positional':
    sinusoidal features of the label (any label, including discrete indices), as
    DDPM. Both have `embedding_size` features, mapped to `hidden` by a two-layer MLP.
    With `scale_by_sigma` the output is divided by sigma: the label itself for
    'fourier', `get_sigmas(...)[label]` for 'positional'. `init_scale` 0 makes each
    block start as the identity and the network output start at zero.
    `num_classes` > 0 adds a class embedding of y (class labels `(B,)`, -1 or y=None
    for the null class; see `scoresde.conditioning`) to the time embedding.
    """

    hidden: int = 128
    num_layers: int = 3
    embedding_type: str = "fourier"
    embedding_size: int = 64
    fourier_scale: float = 16.0
    conditional: bool = True
    dropout: float = 0.0
    skip_rescale: bool = True
    init_scale: float = 0.0
    nonlinearity: str = "swish"
    scale_by_sigma: bool = False
    sigma_min: float = 0.01
    sigma_max: float = 50.0
    num_scales: int = 1000
    num_classes: int = 0

    @nn.compact
    def __call__(self, x, labels, y=None, train: bool = True):
        check_condition(y, x.shape[0], self.num_classes)
        if self.num_classes and not self.conditional:
            raise ValueError("Class conditioning (num_classes > 0) needs conditional=True (a time embedding).")
        act = layers.get_act(self.nonlinearity)
        embedding_type = self.embedding_type.lower()
        if embedding_type == "fourier":
            temb = layers.GaussianFourierProjection(self.embedding_size // 2, scale=self.fourier_scale)(jnp.log(labels))
        elif embedding_type == "positional":
            temb = layers.get_timestep_embedding(labels, self.embedding_size)
        else:
            raise ValueError(f"Unknown embedding_type {self.embedding_type!r}; valid: fourier, positional.")
        if self.conditional:
            temb = nn.Dense(self.hidden, kernel_init=default_init())(temb)
            temb = nn.Dense(self.hidden, kernel_init=default_init())(act(temb))
            if self.num_classes:
                temb = temb + layers.class_embedding(y, x.shape[0], self.num_classes, self.hidden)
        else:
            temb = None

        h = nn.Dense(self.hidden, kernel_init=default_init())(x)
        for _ in range(self.num_layers):
            h = ResidualDenseBlock(act, self.dropout, self.skip_rescale, self.init_scale)(h, temb, train)
        h = nn.Dense(x.shape[-1], kernel_init=default_init(self.init_scale))(act(h))

        if self.scale_by_sigma:
            if embedding_type == "fourier":
                sigmas = labels
            else:
                sigmas = get_sigmas(self.sigma_min, self.sigma_max, self.num_scales)[labels.astype(jnp.int32)]
            h = divide_by_sigma(h, sigmas)
        return h
