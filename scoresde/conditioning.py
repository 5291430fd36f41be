"""Conditions of conditional score models, one convention for every network and sampler.

* `y=None`: unconditional, the null condition (written ∅) for the whole batch;
* class labels: int `(B,)` in [0, num_classes); the label -1 is ∅ for that example;
* token sequences (cross-attention): int `(B, L)`, token 0 is padding; an all-zero
  row is ∅ for that example;
* embeddings (cross-attention), e.g. a text encoder's precomputed outputs: float
  `(B, L, E)`, an all-zero vector is padding (the padding mask is folded in:
  `embedding_condition`); an all-zero row is ∅ for that example;
* a low-resolution image (super-resolution, SR3 / cascaded diffusion): float
  `(B, H/f, W/f, C)` in the model's data space, for a network with `sr_factor` f, which
  sees it upsampled and concatenated to x (`low_res_input`); it has no ∅. Training
  makes it on the fly from each high-resolution batch (`LowResolution.observe`).

In the other kinds ∅ is the zero of its padding, so `null_condition(y)` is ∅ shaped like y,
and `drop_condition(key, y, p)` replaces each example's condition by ∅ with probability
p (classifier-free guidance training). The networks turn ∅ into a learned null
embedding. Networks create every condition parameter when initialized with y=None.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from scoresde.sde_lib import batch_broadcast


def null_condition(y: jax.Array) -> jax.Array:
    """The null condition ∅ shaped like y: -1 for class labels `(B,)`, zeros for tokens
    `(B, L)` and embeddings `(B, L, E)`."""
    if y.ndim == 1:
        return jnp.full_like(y, -1)
    if y.ndim in (2, 3):
        return jnp.zeros_like(y)
    raise ValueError(f"A condition is class labels (B,), tokens (B, L) or embeddings (B, L, E); got shape {y.shape}.")


def drop_condition(key: jax.Array, y: jax.Array | None, p: float) -> jax.Array | None:
    """Replace each example's condition by ∅ with probability p (independently per example).

    y=None (already ∅ everywhere) is returned as is.
    """
    if y is None:
        return None
    drop = jax.random.bernoulli(key, p, y.shape[:1])
    return jnp.where(batch_broadcast(drop, y), null_condition(y), y)


def embedding_condition(embeddings, mask=None) -> np.ndarray:
    """An encoder's embeddings `(B, L, E)` (or one sequence `(L, E)`) and its optional
    padding mask `(B, L)` (`(L,)`; nonzero / True: a real position) -> the condition
    `(B, L, E)` float32 (`(L, E)`), padded positions set to zero vectors.

    Raises ValueError on non-finite values, on a mask of another shape, and on a kept
    position whose embedding is all zeros (it would read as padding).
    """
    e = np.asarray(embeddings, np.float32)
    if e.ndim not in (2, 3) or e.shape[-1] == 0 or e.shape[-2] == 0:
        raise ValueError(f"Embeddings are (B, L, E) or (L, E), got shape {np.shape(embeddings)}.")
    if not np.all(np.isfinite(e)):
        raise ValueError("The embeddings hold non-finite values.")
    keep = np.any(e != 0, axis=-1)
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != e.shape[:-1]:
            raise ValueError(f"The padding mask must have shape {e.shape[:-1]} (the embeddings' (B, L)), got "
                             f"{mask.shape}.")
        mask = mask.astype(bool)
        if np.any(mask & ~keep):
            raise ValueError("A position kept by the padding mask has an all-zero embedding, which reads as padding.")
        e = np.where(mask[..., None], e, 0.0).astype(np.float32)
    return e


def check_condition(y, batch_size: int, num_classes: int = 0, context_vocab_size: int = 0,
                    context_embedding_dim: int = 0) -> None:
    """Raise a clear ValueError unless y (or None) is a condition this network takes.

    A network takes class labels `(B,)` (num_classes > 0), tokens `(B, L)`
    (context_vocab_size > 0), embeddings `(B, L, context_embedding_dim)`
    (context_embedding_dim > 0), or, with none of them, only y=None.
    """
    kinds = {"num_classes": num_classes, "context_vocab_size": context_vocab_size,
             "context_embedding_dim": context_embedding_dim}
    if sum(bool(v) for v in kinds.values()) > 1:
        given = " and ".join(f"{k}={v}" for k, v in kinds.items() if v)
        raise ValueError(f"A network takes one kind of condition; {given} are exclusive.")
    if y is None:
        return
    if not (num_classes or context_vocab_size or context_embedding_dim):
        raise ValueError(
            f"This network is unconditional (num_classes=0, context_vocab_size=0, context_embedding_dim=0) but got "
            f"a condition y of shape {y.shape}; pass y=None."
        )
    if context_embedding_dim:
        if y.ndim != 3 or y.shape[0] != batch_size or y.shape[2] != context_embedding_dim:
            raise ValueError(
                f"This network cross-attends to embeddings (context_embedding_dim={context_embedding_dim}) and takes "
                f"y of shape ({batch_size}, L, {context_embedding_dim}), got {y.shape}."
            )
        if not jnp.issubdtype(y.dtype, jnp.floating):
            raise ValueError(f"The condition y must be float embeddings, got dtype {y.dtype}.")
        return
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
