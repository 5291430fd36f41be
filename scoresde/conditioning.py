"""Conditions of conditional score models, one convention for every network and sampler.

* `y=None`: unconditional, the null condition (written ∅) for the whole batch;
* class labels: int `(B,)` in [0, num_classes); the label -1 is ∅ for that example;
* token sequences (cross-attention): int `(B, L)`, token 0 is padding; an all-zero
  row is ∅ for that example.

`null_condition(y)` is ∅ shaped like y, and `drop_condition(key, y, p)` replaces each
example's condition by ∅ with probability p (classifier-free guidance training).
Networks create every condition parameter when initialized with y=None.
"""

from __future__ import annotations

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
