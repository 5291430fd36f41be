"""The model registry, and the bridge from a network to the toolkit's `score_fn(x, t, y)`.

Every score network is a Flax linen module called as

    model.apply({"params": params}, x, labels, y, train=train, rngs={"dropout": key})

with x `(B, ...)` and per-example noise labels `(B,)`, and returns an array shaped like x.

The condition y (optional; conditional networks only) follows one convention:

* `y=None`: unconditional, the null condition (written ∅) for the whole batch;
* class labels: int `(B,)` in [0, num_classes); the label -1 is ∅ for that example;
* token sequences (cross-attention): int `(B, L)`, token 0 is padding; an all-zero
  row is ∅ for that example.

`null_condition(y)` is ∅ shaped like y, and `drop_condition(key, y, p)` replaces each
example's condition by ∅ with probability p (classifier-free guidance training).
Networks create every condition parameter when initialized with y=None.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from scoresde import sde_lib
from scoresde.sde_lib import batch_broadcast

_MODELS: dict[str, type[nn.Module]] = {}

PARAMETERIZATIONS = ("score", "eps", "x0", "v")


def register_model(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator: make a network constructible by name through `get_model`."""

    def register(cls):
        if name in _MODELS:
            raise ValueError(f"A model named {name!r} is already registered.")
        _MODELS[name] = cls
        return cls

    return register


def model_names() -> list[str]:
    return sorted(_MODELS)


def get_model(name: str, **kwargs) -> nn.Module:
    """Construct a registered network by name with the given hyperparameters."""
    if name not in _MODELS:
        raise ValueError(f"Unknown model {name!r}; valid names: {', '.join(model_names())}.")
    return _MODELS[name](**kwargs)


def model_fields(name: str) -> tuple[str, ...]:
    """The hyperparameters (dataclass fields) of a registered network."""
    if name not in _MODELS:
        raise ValueError(f"Unknown model {name!r}; valid names: {', '.join(model_names())}.")
    return tuple(f.name for f in dataclasses.fields(_MODELS[name]) if f.name not in ("parent", "name"))


def model_kwargs(name: str, *mappings: Mapping[str, Any]) -> dict[str, Any]:
    """Merge mappings (later ones win), keeping only the keys that are fields of model `name`.

    Lets a config's `model` and `data` sections, whose field names match the modules'
    (`nf`, `ch_mult`, ..., `centered`), be passed to `get_model` as they are.
    """
    fields = set(model_fields(name))
    merged: dict[str, Any] = {}
    for mapping in mappings:
        merged.update({k: v for k, v in mapping.items() if k in fields})
    return merged


def get_sigmas(sigma_min: float, sigma_max: float, num_scales: int) -> jax.Array:
    """SMLD's noise ladder, geometric and *decreasing* from sigma_max to sigma_min, `(num_scales,)`.

    The reference's `get_sigmas(config)`: a discrete VE label i means sigma_i, so label 0
    is sigma_max (matching `noise_labels`, which maps t = T to 0).
    """
    return jnp.exp(jnp.linspace(jnp.log(sigma_max), jnp.log(sigma_min), num_scales))


def count_params(params) -> int:
    """Total number of scalars in a parameter pytree (arrays or `jax.ShapeDtypeStruct`s)."""
    return int(sum(np.prod(leaf.shape, dtype=np.int64) for leaf in jax.tree_util.tree_leaves(params)))


def param_shapes(model: nn.Module, x_shape: Sequence[int], label: float = 1.0):
    """The parameter pytree of `model` for inputs of shape x_shape, as `jax.ShapeDtypeStruct`s.

    Runs `model.init` under `jax.eval_shape`, so nothing is allocated or computed;
    `count_params(param_shapes(model, (1, 32, 32, 3)))` sizes a network instantly.
    """
    key = jax.random.key(0)
    x = jax.ShapeDtypeStruct(tuple(x_shape), jnp.float32)

    def init(x):
        labels = jnp.full(x.shape[:1], label, jnp.float32)
        return model.init({"params": key, "dropout": key}, x, labels, train=False)["params"]

    return jax.eval_shape(init, x)


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


def default_parameterization(sde: sde_lib.SDE) -> str:
    """The reference's choice: VP-type networks predict the noise, VE networks the score."""
    return "score" if isinstance(sde, sde_lib.VESDE) else "eps"


def noise_labels(sde: sde_lib.SDE, t: jax.Array, continuous: bool = True) -> jax.Array:
    """The conditioning labels the reference feeds the network at times t `(B,)`.

    VP-type: t * 999 (continuous) or the discrete step index t (N - 1) (a float).
    VE: sigma(t) (continuous) or the SMLD ladder index round((T - t)(N - 1)).
    """
    if isinstance(sde, sde_lib.VESDE):
        if continuous:
            return sde.marginal_coeffs(t)[1]
        return jnp.round((sde.T - t) * (sde.N - 1)).astype(jnp.int32)
    if continuous or not isinstance(sde, sde_lib.VariancePreserving):
        return t * 999
    return t * (sde.N - 1)


def output_to_score(output, x, scale, std, parameterization: str):
    """Convert a network output into the score, for x = scale x0 + std eps.

    score: output; eps: -eps/std; x0: (scale x0 - x)/std^2;
    v = scale eps - std x0: eps = (std x + scale v)/(scale^2 + std^2), score = -eps/std.
    """
    scale, std = batch_broadcast(scale, x), batch_broadcast(std, x)
    if parameterization == "score":
        return output
    if parameterization == "eps":
        return -output / std
    if parameterization == "x0":
        return (scale * output - x) / std**2
    if parameterization == "v":
        return -(std * x + scale * output) / ((scale**2 + std**2) * std)
    raise ValueError(f"Unknown parameterization {parameterization!r}; valid: {', '.join(PARAMETERIZATIONS)}.")


def get_score_fn(
    sde: sde_lib.SDE,
    model: nn.Module,
    params,
    train: bool = False,
    continuous: bool = True,
    parameterization: str | None = None,
    dropout_rng: jax.Array | None = None,
):
    """Turn a network into `score_fn(x, t, y=None) -> (B, ...)`, exactly as the reference does.

    VP and sub-VP (eps networks): score = -output / std, with std the continuous
    marginal std (continuous training, and always for sub-VP) or DDPM's
    sqrt(1 - alpha-bar_i) at the discrete index. VE (score networks): the output is the
    score; the network itself divides by sigma when `scale_by_sigma` is on.
    `parameterization` overrides the reference's choice (see `output_to_score`).
    y, the condition (see the module docstring), is passed to the network only when given.
    """
    parameterization = parameterization or default_parameterization(sde)
    if parameterization not in PARAMETERIZATIONS:
        raise ValueError(f"Unknown parameterization {parameterization!r}; valid: {', '.join(PARAMETERIZATIONS)}.")
    discrete_vp = not continuous and isinstance(sde, sde_lib.VariancePreserving)
    if discrete_vp:
        sqrt_1m_alphas_cumprod = np.sqrt(1.0 - sde.alphas_cumprod)
    rngs = {"dropout": dropout_rng} if dropout_rng is not None else {}

    def score_fn(x, t, y=None):
        labels = noise_labels(sde, t, continuous)
        condition = () if y is None else (y,)
        output = model.apply({"params": params}, x, labels, *condition, train=train, rngs=rngs)
        scale, std = sde.marginal_coeffs(jnp.asarray(t, x.dtype))
        if discrete_vp:
            std = jnp.asarray(sqrt_1m_alphas_cumprod, x.dtype)[labels.astype(jnp.int32)]
        return output_to_score(output, x, scale, std, parameterization)

    return score_fn
