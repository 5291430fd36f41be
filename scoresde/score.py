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
(Karras et al. 2022) in one place: the network sees c_in(t) x and the noise label
c_noise(t) (`network_inputs`: x and the reference's `noise_labels`, or EDM's c_in and
c_noise), and its output F becomes the score by its parameterization, score =
c_skip(t) x + c_out(t) F (`output_to_score`; `score_to_output` is its exact inverse and
`output_target` the value a perfect network outputs, the losses' regression targets).

Every conversion is exact for any linear Gaussian path x = s x0 + std eps (s, std the
SDE's `marginal_coeffs`; ds/dt, d std/dt from `coeffs_and_derivatives`):

    score     F = grad log p_t(x)                     eps       F = E[eps | x]
    x0        F = E[x0 | x]                           v         F = s eps - std x0 (Salimans & Ho)
    velocity  F = ds/dt x0 + d std/dt eps = dx/dt     (flow matching; E[. | x] of each)
    edm       D = c_skip x~ + c_out F = E[x0 | x] with x~ = x/s and EDM's Table 1 at
              sigma~ = std/s (`edm_preconditioning`); the network sees c_in x~, c_noise.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from scoresde import sde_lib
from scoresde.sde_lib import batch_broadcast

PARAMETERIZATIONS = ("score", "eps", "x0", "v", "velocity", "edm")
SIGMA_DATA = 0.5  # EDM's sigma_data: the data's standard deviation assumed by its preconditioning


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


def check_network(module, parameterization: str, continuous: bool = True) -> None:
    """One-line ValueErrors for a network that cannot take a parameterization's inputs:
    'edm' feeds c_noise = ln(sigma)/4 (negative for sigma < 1), which a network taking
    log(label) (embedding_type 'fourier') or dividing by sigma(label) (scale_by_sigma)
    cannot read; 'edm' and 'velocity' need continuous time."""
    check_parameterization(parameterization)
    if parameterization in ("edm", "velocity") and not continuous:
        raise ValueError(f"parameterization {parameterization!r} needs continuous time labels "
                         "(training.continuous=True).")
    fourier = str(getattr(module, "embedding_type", "positional")).lower() == "fourier"
    if parameterization == "edm" and (fourier or getattr(module, "scale_by_sigma", False)):
        raise ValueError("parameterization 'edm' feeds the network c_noise = ln(sigma)/4: it needs "
                         "model.embedding_type='positional' and model.scale_by_sigma=False.")


def edm_preconditioning(sigma, sigma_data: float = SIGMA_DATA):
    """EDM's c_skip, c_out, c_in, c_noise at noise level sigma (Karras et al. 2022, Table 1):
    sigma_data^2 / (sigma^2 + sigma_data^2), sigma sigma_data / sqrt(sigma^2 + sigma_data^2),
    1 / sqrt(sigma^2 + sigma_data^2), ln(sigma) / 4."""
    r2 = sigma**2 + sigma_data**2
    return sigma_data**2 / r2, sigma * sigma_data / jnp.sqrt(r2), 1.0 / jnp.sqrt(r2), 0.25 * jnp.log(sigma)


def _check_derivatives(parameterization, dscale, dstd):
    if parameterization == "velocity" and (dscale is None or dstd is None):
        raise ValueError("The velocity parameterization needs dscale and dstd (the path's ds/dt, d std/dt).")


def output_to_score(output, x, scale, std, parameterization: str, *, dscale=None, dstd=None,
                    sigma_data: float = SIGMA_DATA):
    """The score from a network output F, for x = scale x0 + std eps (scale, std `(B,)`;
    dscale, dstd their time derivatives, for 'velocity'). Each is exact (module docstring):

    score: F (c_skip = 0, c_out = 1);  eps: -F/std (c_skip = 0, c_out = -1/std);
    x0: (scale F - x)/std^2 (c_skip = -1/std^2, c_out = scale/std^2);
    v = scale eps - std x0: score = -(std x + scale F) / ((scale^2 + std^2) std);
    velocity u = dscale x0 + dstd eps: score = (dscale x - scale u) / (std (scale dstd - std dscale));
    edm: with sigma~ = std/scale, x~ = x/scale, D = c_skip x~ + c_out F (Table 1):
    score = (D - x~) / (scale sigma~^2), computed as (c_out F - (1 - c_skip) x~) / (scale sigma~^2)
    (1 - c_skip = sigma~^2 / (sigma~^2 + sigma_data^2)), which does not cancel at small sigma~.
    """
    check_parameterization(parameterization)
    _check_derivatives(parameterization, dscale, dstd)
    scale, std = batch_broadcast(scale, x), batch_broadcast(std, x)
    if parameterization == "score":
        return output
    if parameterization == "eps":
        return -output / std
    if parameterization == "x0":
        return (scale * output - x) / std**2
    if parameterization == "v":
        return -(std * x + scale * output) / ((scale**2 + std**2) * std)
    if parameterization == "velocity":
        dscale, dstd = batch_broadcast(dscale, x), batch_broadcast(dstd, x)
        # scale dstd - std dscale = scale^2 d(std/scale)/dt > 0 on any path whose std/scale increases.
        return (dscale * x - scale * output) / (std * (scale * dstd - std * dscale))
    sigma = std / scale
    _, c_out, _, _ = edm_preconditioning(sigma, sigma_data)
    r2 = sigma**2 + sigma_data**2
    return (c_out * output - (sigma**2 / r2) * (x / scale)) / (scale * sigma**2)


def _from_x0_eps(x0, eps, x, scale, std, parameterization, dscale, dstd, sigma_data):
    """What a network of `parameterization` outputs where E[x0 | x] = x0 and E[eps | x] = eps."""
    if parameterization == "score":
        return -(eps / std)  # not (-eps) / std: the dsm loss then has the reference's bits under jit
    if parameterization == "eps":
        return eps
    if parameterization == "x0":
        return x0
    if parameterization == "v":
        return scale * eps - std * x0
    if parameterization == "velocity":
        return batch_broadcast(dscale, x0) * x0 + batch_broadcast(dstd, x0) * eps
    c_skip, c_out, _, _ = edm_preconditioning(std / scale, sigma_data)
    return (x0 - c_skip * (x / scale)) / c_out


def score_to_output(score, x, scale, std, parameterization: str, *, dscale=None, dstd=None,
                    sigma_data: float = SIGMA_DATA):
    """The inverse of `output_to_score`: the output F a network of `parameterization` gives
    this score at x (through Tweedie's E[eps | x] = -std score, E[x0 | x] = (x + std^2 score)/scale)."""
    check_parameterization(parameterization)
    _check_derivatives(parameterization, dscale, dstd)
    scale_b, std_b = batch_broadcast(scale, x), batch_broadcast(std, x)
    if parameterization == "score":
        return score
    eps = -std_b * score
    x0 = (x - std_b * eps) / scale_b
    return _from_x0_eps(x0, eps, x, scale_b, std_b, parameterization, dscale, dstd, sigma_data)


def output_target(x0, eps, scale, std, parameterization: str, *, dscale=None, dstd=None,
                  sigma_data: float = SIGMA_DATA):
    """The regression target of `parameterization` for the example x = scale x0 + std eps: its
    output at x were x0 and eps known (score -eps/std, eps, x0, v = scale eps - std x0, the
    velocity dscale x0 + dstd eps, EDM's (x0 - c_skip x~)/c_out)."""
    check_parameterization(parameterization)
    _check_derivatives(parameterization, dscale, dstd)
    scale_b, std_b = batch_broadcast(scale, x0), batch_broadcast(std, x0)
    x = scale_b * x0 + std_b * eps if parameterization == "edm" else None
    return _from_x0_eps(x0, eps, x, scale_b, std_b, parameterization, dscale, dstd, sigma_data)


def network_inputs(sde: sde_lib.SDE, x, t, parameterization: str, continuous: bool = True,
                   sigma_data: float = SIGMA_DATA):
    """What the network sees at (x, t): (c_in x, c_noise). x and the reference's `noise_labels`,
    except for 'edm': c_in(sigma~) x~ = x / (scale sqrt(sigma~^2 + sigma_data^2)) and
    c_noise = ln(sigma~)/4, at sigma~ = std/scale (EDM's sigma in the frame x~ = x / scale)."""
    if parameterization != "edm":
        return x, noise_labels(sde, t, continuous)
    scale, std = sde.marginal_coeffs(jnp.asarray(t, x.dtype))
    _, _, c_in, c_noise = edm_preconditioning(std / scale, sigma_data)
    return x * batch_broadcast(c_in / scale, x), c_noise


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
    sigma_data: float = static_field(default=SIGMA_DATA)

    def __call__(self, x, t, y=None):
        inputs, labels = network_inputs(self.sde, x, t, self.parameterization, self.continuous, self.sigma_data)
        condition = () if y is None else (y,)
        rngs = {} if self.dropout_rng is None else {"dropout": self.dropout_rng}
        output = self.module.apply({"params": self.params}, inputs, labels, *condition, train=self.train, rngs=rngs)
        t = jnp.asarray(t, x.dtype)
        dscale = dstd = None
        if self.parameterization == "velocity":
            scale, std, dscale, dstd = self.sde.coeffs_and_derivatives(t)
        else:
            scale, std = self.sde.marginal_coeffs(t)
        if not self.continuous and isinstance(self.sde, sde_lib.VariancePreserving):
            std = jnp.asarray(np.sqrt(1.0 - self.sde.alphas_cumprod), x.dtype)[labels.astype(jnp.int32)]
        return output_to_score(output, x, scale, std, self.parameterization, dscale=dscale, dstd=dstd,
                               sigma_data=self.sigma_data)


def get_score_fn(
    sde: sde_lib.SDE,
    model,
    params,
    train: bool = False,
    continuous: bool = True,
    parameterization: str | None = None,
    dropout_rng: jax.Array | None = None,
    sigma_data: float = SIGMA_DATA,
) -> NetworkScore:
    """The `NetworkScore` of network `model` with `params`: `score(x, t, y=None) -> (B, ...)`.

    `parameterization` overrides the reference's choice (`default_parameterization`);
    `sigma_data` is EDM's (used by the 'edm' parameterization only).
    y, the condition, is passed to the network only when given.
    """
    parameterization = parameterization or default_parameterization(sde)
    check_network(model, parameterization, continuous)
    return NetworkScore(params, model, sde, parameterization, continuous, train, dropout_rng, float(sigma_data))
