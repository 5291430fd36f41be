"""Score models: the one contract of the toolkit, as pytrees.

    score(x, t, y=None) -> array shaped like x          # x: (B, ...), t: (B,)

A `ScoreModel` is a frozen dataclass registered as a pytree (as equinox modules are):
its array fields (network parameters, a condition, a guidance weight) are leaves, so
they are *traced* when a score model is passed to a compiled sampler or to the
likelihood; its other fields (the network's module, the SDE, the parameterization) are
static. A new parameter set, label or guidance weight therefore reuses the compiled
program instead of compiling another one with the weights baked in as constants.

Plain Python functions `score_fn(x, t)` (the analytic targets, users' code) keep
working: `as_score_model` wraps them in a `ScoreFunction`, whose function is static,
so they compile once per function object, as before.

`NetworkScore` is the bridge from a network to a score, with EDM-style preconditioning
(Karras et al. 2022) in one place: the network sees c_in x = x and the noise label
c_noise(t) (`noise_labels`, the reference's), and its output F becomes the score by
its parameterization, score = c_skip(t) x + c_out(t) F (`output_to_score`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from scoresde import sde_lib
from scoresde.sde_lib import batch_broadcast

PARAMETERIZATIONS = ("score", "eps", "x0", "v")


def static_field(**kwargs):
    """A dataclass field that is pytree metadata (hashed into the compiled program's key)."""
    return dataclasses.field(metadata=dict(static=True), **kwargs)


def pytree_dataclass(cls):
    """A frozen dataclass registered as a pytree; fields made by `static_field` are static.
    Instances compare and hash by identity (their arrays are not hashable), so they can
    also be `jax.jit`-ed as functions."""
    return jax.tree_util.register_dataclass(dataclasses.dataclass(frozen=True, eq=False)(cls))


class ScoreModel:
    """Base class of score models: `__call__(x (B, ...), t (B,), y=None) -> (B, ...)`.

    Subclasses are `pytree_dataclass`es whose leaves are arrays. Conditional models
    take y (class labels `(B,)` or tokens `(B, L)`, see `scoresde.conditioning`);
    unconditional ones are called as score(x, t).
    """

    def __call__(self, x: jax.Array, t: jax.Array, y: jax.Array | None = None) -> jax.Array:
        raise NotImplementedError


@pytree_dataclass
class ScoreFunction(ScoreModel):
    """A plain `fn(x, t)` or `fn(x, t, y)` as a score model with no traced leaves."""

    fn: Callable = static_field()

    def __call__(self, x, t, y=None):
        return self.fn(x, t) if y is None else self.fn(x, t, y)


def as_score_model(score_fn):
    """What a compiled function takes as its score: a `ScoreModel` or another callable
    pytree (such as `models.NetworkClassifier` or `jax.tree_util.Partial`) as is, so its
    arrays are traced; any other callable wrapped in a static `ScoreFunction`."""
    if isinstance(score_fn, ScoreModel):
        return score_fn
    if not callable(score_fn):
        raise TypeError(f"A score must be callable as score_fn(x, t); got {type(score_fn).__name__}.")
    if not jax.tree_util.treedef_is_leaf(jax.tree_util.tree_structure(score_fn)):
        return score_fn
    return ScoreFunction(score_fn)


def default_parameterization(sde: sde_lib.SDE) -> str:
    """The reference's choice: VP-type networks predict the noise, VE networks (and EDM's
    path, a VE SDE timed by sigma) the score."""
    return "score" if isinstance(sde, (sde_lib.VESDE, sde_lib.EDMPath)) else "eps"


def noise_labels(sde: sde_lib.SDE, t: jax.Array, continuous: bool = True) -> jax.Array:
    """c_noise: the conditioning labels the reference feeds the network at times t `(B,)`.

    VP-type: t * 999 (continuous) or the discrete step index t (N - 1) (a float).
    VE: sigma(t) (continuous) or the SMLD ladder index round((T - t)(N - 1)).
    EDM's path: sigma(t) = t (continuous), as VE. Other paths: t * 999.
    """
    if isinstance(sde, sde_lib.VESDE):
        if continuous:
            return sde.marginal_coeffs(t)[1]
        return jnp.round((sde.T - t) * (sde.N - 1)).astype(jnp.int32)
    if continuous and isinstance(sde, sde_lib.EDMPath):
        return sde.marginal_coeffs(t)[1]
    if continuous or not isinstance(sde, sde_lib.VariancePreserving):
        return t * 999
    return t * (sde.N - 1)


def check_parameterization(parameterization: str) -> None:
    if parameterization not in PARAMETERIZATIONS:
        raise ValueError(f"Unknown parameterization {parameterization!r}; valid: {', '.join(PARAMETERIZATIONS)}.")


def output_to_score(output, x, scale, std, parameterization: str):
    """The score from a network output F, for x = scale x0 + std eps (scale, std `(B,)`).

    score: F (c_skip = 0, c_out = 1);  eps: -F/std (c_skip = 0, c_out = -1/std);
    x0: (scale F - x)/std^2 (c_skip = -1/std^2, c_out = scale/std^2);
    v = scale eps - std x0: score = -(std x + scale F) / ((scale^2 + std^2) std).
    """
    check_parameterization(parameterization)
    scale, std = batch_broadcast(scale, x), batch_broadcast(std, x)
    if parameterization == "score":
        return output
    if parameterization == "eps":
        return -output / std
    if parameterization == "x0":
        return (scale * output - x) / std**2
    return -(std * x + scale * output) / ((scale**2 + std**2) * std)


@pytree_dataclass
class NetworkScore(ScoreModel):
    """A network's score, exactly as the reference computes it; `params` are traced.

    module: a network called as `module.apply({"params": params}, x, labels[, y], train=,
    rngs=)` (static); sde, continuous, parameterization (see `output_to_score`), train:
    static; dropout_rng: a key for dropout in training mode, or None.

    VP and sub-VP (eps networks): score = -output / std, with std the continuous
    marginal std (continuous training, and always for sub-VP) or DDPM's
    sqrt(1 - alpha-bar_i) at the discrete index. VE (score networks): the output is the
    score; the network itself divides by sigma when `scale_by_sigma` is on.
    """

    params: Any
    module: Any = static_field()
    sde: sde_lib.SDE = static_field()
    parameterization: str = static_field(default="eps")
    continuous: bool = static_field(default=True)
    train: bool = static_field(default=False)
    dropout_rng: jax.Array | None = None

    def __call__(self, x, t, y=None):
        labels = noise_labels(self.sde, t, self.continuous)
        condition = () if y is None else (y,)
        rngs = {} if self.dropout_rng is None else {"dropout": self.dropout_rng}
        output = self.module.apply({"params": self.params}, x, labels, *condition, train=self.train, rngs=rngs)
        scale, std = self.sde.marginal_coeffs(jnp.asarray(t, x.dtype))
        if not self.continuous and isinstance(self.sde, sde_lib.VariancePreserving):
            std = jnp.asarray(np.sqrt(1.0 - self.sde.alphas_cumprod), x.dtype)[labels.astype(jnp.int32)]
        return output_to_score(output, x, scale, std, self.parameterization)


def get_score_fn(
    sde: sde_lib.SDE,
    model,
    params,
    train: bool = False,
    continuous: bool = True,
    parameterization: str | None = None,
    dropout_rng: jax.Array | None = None,
) -> NetworkScore:
    """The `NetworkScore` of network `model` with `params`: `score(x, t, y=None) -> (B, ...)`.

    `parameterization` overrides the reference's choice (`default_parameterization`).
    y, the condition, is passed to the network only when given.
    """
    parameterization = parameterization or default_parameterization(sde)
    check_parameterization(parameterization)
    return NetworkScore(params, model, sde, parameterization, continuous, train, dropout_rng)
