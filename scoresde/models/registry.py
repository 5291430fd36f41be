"""The model registry: networks by name, their hyperparameters and parameter shapes.

Every score network is a Flax linen module called as

    model.apply({"params": params}, x, labels, y, train=train, rngs={"dropout": key})

with x `(B, ...)`, per-example noise labels `(B,)` and an optional condition y (see
`scoresde.conditioning`), and returns an array shaped like x. `scoresde.score` turns
it into a score model.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

_MODELS: dict[str, type[nn.Module]] = {}


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
