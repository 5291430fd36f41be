"""Conditions of conditional score models, one convention for every network and sampler.

* `y=None`: unconditional, the null condition (written ∅) for the whole batch;
* class labels: int `(B,)` in [0, num_classes); the label -1 is ∅ for that example;
* token sequences (cross-attention): int `(B, L)`, token 0 is padding; an all-zero
  row is ∅ for that example;
* a low-resolution image (super-resolution, SR3 / cascaded diffusion): float
  `(B, H/f, W/f, C)` in the model's data space, for a network with `sr_factor` f, which
  sees it upsampled and concatenated to x (`low_res_input`); it has no ∅. Training
  makes it on the fly from each high-resolution batch (`LowResolution.observe`).

`null_condition(y)` is ∅ shaped like y, and `drop_condition(key, y, p)` replaces each
example's condition by ∅ with probability p (classifier-free guidance training).
Networks create every condition parameter when initialized with y=None.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from scoresde.sde_lib import batch_broadcast


def null_condition(y: jax.Array) -> jax.Array:
    """The null condition ∅ shaped like y: -1 for class labels `(B,)`, 0 for tokens `(B, L)`."""
    if y.ndim == 1:
        return jnp.full_like(y, -1)
    if y.ndim == 2:
        return jnp.zeros_like(y)
    raise ValueError(f"A condition is class labels (B,) or tokens (B, L); got shape {y.shape}.")


def drop_condition(key: jax.Array, y: jax.Array | None, p: float) -> jax.Array | None:
    """Replace each example's condition by ∅ with probability p (independently per example).

    y=None (already ∅ everywhere) is returned as is.
    """
    if y is None:
        return None
    drop = jax.random.bernoulli(key, p, y.shape[:1])
    return jnp.where(batch_broadcast(drop, y), null_condition(y), y)


def check_condition(y, batch_size: int, num_classes: int = 0, context_vocab_size: int = 0) -> None:
    """Raise a clear ValueError unless y (or None) is a condition this network takes.

    A network takes class labels `(B,)` (num_classes > 0), tokens `(B, L)`
    (context_vocab_size > 0), or, with neither, only y=None.
    """
    if num_classes and context_vocab_size:
        raise ValueError("Class conditioning (num_classes) and cross-attention (context_vocab_size) are exclusive.")
    if y is None:
        return
    if not (num_classes or context_vocab_size):
        raise ValueError(
            f"This network is unconditional (num_classes=0, context_vocab_size=0) but got a condition y "
            f"of shape {y.shape}; pass y=None."
        )
    if not jnp.issubdtype(y.dtype, jnp.integer):
        raise ValueError(f"The condition y must be integer class labels or tokens, got dtype {y.dtype}.")
    if num_classes and y.shape != (batch_size,):
        raise ValueError(
            f"This network is class-conditional (num_classes={num_classes}) and takes labels y of shape "
            f"({batch_size},), got {y.shape} (token sequences need context_vocab_size > 0)."
        )
    if context_vocab_size and (y.ndim != 2 or y.shape[0] != batch_size):
        raise ValueError(
            f"This network cross-attends to tokens (context_vocab_size={context_vocab_size}) and takes y of "
            f"shape ({batch_size}, L), got {y.shape} (class labels need num_classes > 0)."
        )


# ----------------------------------------------------------------------------- low-resolution images


@dataclasses.dataclass(frozen=True)
class LowResolution:
    """The low-resolution condition of a super-resolution model, made on the fly in training:
    y = A x + noise_std n, A the means of factor x factor blocks (`operators.average_pool`),
    n ~ N(0, I) (noise augmentation, Ho et al. 2021's conditioning augmentation at one fixed
    level; noise_std in the model's data space, 0: none). Sampling adds the same noise to the
    given low-resolution image (`samplers.cascade.upsample`), so the network always sees what
    it was trained on."""

    factor: int
    noise_std: float = 0.0

    def __post_init__(self):
        if isinstance(self.factor, bool) or not (isinstance(self.factor, int) and self.factor >= 1):
            raise ValueError(f"The super-resolution factor must be an integer >= 1, got {self.factor!r}.")
        if isinstance(self.noise_std, bool) or not (isinstance(self.noise_std, (int, float))
                                                    and math.isfinite(self.noise_std) and self.noise_std >= 0):
            raise ValueError(f"The low-resolution noise std must be a finite number >= 0, got {self.noise_std!r}.")

    def augment(self, key, low):
        """low-resolution images `(B, h, w, C)` plus the noise augmentation, low + noise_std n."""
        return low if not self.noise_std else low + self.noise_std * jax.random.normal(key, low.shape, low.dtype)

    def observe(self, key, x):
        """The condition of high-resolution images x `(B, H, W, C)`: `(B, H/f, W/f, C)`."""
        from scoresde.samplers.operators import average_pool  # (samplers import this module)

        return self.augment(key, average_pool(self.factor).A(x))


def check_low_res(y, x_shape, factor: int) -> None:
    """Raise a clear ValueError unless y (or None) is the low-resolution condition of images
    x_shape `(B, H, W, C)` for a network with sr_factor `factor`: float `(B, H/f, W/f, C)`."""
    b, h, w, c = x_shape
    if h % factor or w % factor:
        raise ValueError(f"A super-resolution network with sr_factor={factor} needs image sizes divisible by it, "
                         f"got {h}x{w}.")
    if y is None:
        return
    expected = (b, h // factor, w // factor, c)
    if tuple(y.shape) != expected:
        raise ValueError(f"This network super-resolves by {factor} and takes a low-resolution image y of shape "
                         f"{expected}, got {tuple(y.shape)}.")
    if not jnp.issubdtype(y.dtype, jnp.floating):
        raise ValueError(f"The low-resolution image y must be floating point, got dtype {y.dtype}.")


def low_res_input(x, y, factor: int):
    """The network input of a super-resolution model: x `(B, H, W, C)` and the nearest
    upsampling of y `(B, H/f, W/f, C)` (A+ y, A the block means) concatenated on the
    channels, `(B, H, W, 2C)`. y=None (the networks' initialization) gives zeros in its place."""
    from scoresde.samplers.operators import average_pool  # (samplers import this module)

    up = jnp.zeros_like(x) if y is None else average_pool(factor).pinv(jnp.asarray(y, x.dtype))
    return jnp.concatenate([x, up], axis=-1)
