"""Predictor--corrector samplers of Song et al. (2021), Algorithms 1--3 and Appendix G.

Each predictor and corrector is built from `(sde, score_fn)` into an update
`(key, x, t) -> (x, x_mean)` on x `(B, ...)` at times t `(B,)`. `pc_sample` runs
corrector-then-predictor on the grid t_i = linspace(T, eps, N) inside one
`lax.fori_loop`, and returns the noise-free mean of the last step (denoising).
An optional `constraint` (see `samplers.imputation`) conditions the loop on known data.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from scoresde import parallel, sde_lib
from scoresde.score import as_score_model
from scoresde.sde_lib import batch_broadcast as bb

Update = Callable[[jax.Array, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]


def _normal(key, x):
    return jax.random.normal(key, x.shape, x.dtype)


def _step_index(sde, t):
    return jnp.clip((t * (sde.N - 1) / sde.T).astype(jnp.int32), 0, sde.N - 1)


# ---------------------------------------------------------------------------------------
# Predictors: one step of the reverse-time process from t to t - T/N.


def euler_maruyama(sde, score_fn) -> Update:
    """x <- x - [f - g^2 score] dt + g sqrt(dt) z, with dt = T/N."""
    rsde = sde.reverse(score_fn)
    dt = sde.T / sde.N

    def update(key, x, t):
        drift, diffusion = rsde.sde(x, t)
        x_mean = x - drift * dt
        return x_mean + bb(diffusion, x) * math.sqrt(dt) * _normal(key, x), x_mean

    return update


def reverse_diffusion(sde, score_fn) -> Update:
    """x <- x - f_i + G_i^2 score + G_i z, the reverse of the forward chain `discretize`."""
    rsde = sde.reverse(score_fn)

    def update(key, x, t):
        f, G = rsde.discretize(x, t)
        x_mean = x - f
        return x_mean + bb(G, x) * _normal(key, x), x_mean

    return update


def ancestral_sampling(sde, score_fn) -> Update:
    """Ancestral sampling of the discrete chain: DDPM's for VP, SMLD's for VE (Song et al. eqs. 46-47).

    VP: x <- (x + beta_i score) / sqrt(1 - beta_i) + sqrt(beta_i) z.
    VE: x <- x + (sigma_i^2 - sigma_{i-1}^2) score
              + sqrt(sigma_{i-1}^2 (sigma_i^2 - sigma_{i-1}^2) / sigma_i^2) z.
    Linear Gaussian paths (their exact chain x_t = a x_s + G z, `sde_lib.LinearGaussianPath`):
        x <- (x + G^2 score) / a + (G sigma_s / sigma_t) z,
    Tweedie's E[x_s | x_t] and the posterior std given x_0 (VE's step when a = 1).
    """
    if isinstance(sde, sde_lib.VESDE):

        def update(key, x, t):
            i = _step_index(sde, t)
            sigmas = jnp.asarray(sde.discrete_sigmas, x.dtype)
            sigma = sigmas[i]
            adjacent = jnp.where(i == 0, 0.0, sigmas[jnp.maximum(i - 1, 0)])
            x_mean = x + bb(sigma**2 - adjacent**2, x) * score_fn(x, t)
            std = jnp.sqrt(adjacent**2 * (sigma**2 - adjacent**2) / sigma**2)
            return x_mean + bb(std, x) * _normal(key, x), x_mean

        return update

    if isinstance(sde, sde_lib.VariancePreserving):

        def update(key, x, t):
            beta = jnp.asarray(sde.discrete_betas, x.dtype)[_step_index(sde, t)]
            x_mean = (x + bb(beta, x) * score_fn(x, t)) / bb(jnp.sqrt(1.0 - beta), x)
            return x_mean + bb(jnp.sqrt(beta), x) * _normal(key, x), x_mean

        return update

    if isinstance(sde, sde_lib.LinearGaussianPath):

        def update(key, x, t):
            ratio, G, sigma_s, sigma_t = sde.chain_step(jnp.asarray(t, x.dtype))
            x_mean = (x + bb(G**2, x) * score_fn(x, t)) / bb(ratio, x)
            return x_mean + bb(G * sigma_s / sigma_t, x) * _normal(key, x), x_mean

        return update

    raise ValueError(
        f"ancestral_sampling needs a discrete Markov chain (VP, cosine VP, VE or a linear Gaussian path); "
        f"{type(sde).__name__} has none. Use predictor='reverse_diffusion' or 'euler_maruyama'."
    )


def no_predictor(sde, score_fn) -> Update:
    return lambda key, x, t: (x, x)


# ---------------------------------------------------------------------------------------
# Correctors: n_steps of Langevin MCMC targeting p_t.


def _langevin_alpha(sde, t, dtype):
    """alpha_i = 1 - beta_i of DDPM's chain for VP-type SDEs, 1 otherwise (as the reference)."""
    if isinstance(sde, sde_lib.VariancePreserving):
        return 1.0 - jnp.asarray(sde.discrete_betas, dtype)[_step_index(sde, t)]
    return jnp.ones_like(t)


def langevin(sde, score_fn, snr, n_steps) -> Update:
    """Langevin corrector with the signal-to-noise step size of Song et al. (Algorithm 4):

    eps_i = 2 alpha (snr ||z|| / ||score||)^2, x <- x + eps_i score + sqrt(2 eps_i) z,
    with norms averaged over the (whole, global) batch.
    """

    def update(key, x, t):
        alpha = _langevin_alpha(sde, t, x.dtype)

        def step(i, carry):
            x, _ = carry
            grad = score_fn(x, t)
            noise = _normal(jax.random.fold_in(key, i), x)
            grad_norm = jnp.mean(jnp.linalg.norm(grad.reshape(grad.shape[0], -1), axis=-1))
            noise_norm = jnp.mean(jnp.linalg.norm(noise.reshape(noise.shape[0], -1), axis=-1))
            step_size = (snr * noise_norm / grad_norm) ** 2 * 2 * alpha
            x_mean = x + bb(step_size, x) * grad
            return x_mean + bb(jnp.sqrt(2 * step_size), x) * noise, x_mean

        return jax.lax.fori_loop(0, n_steps, step, (x, x))

    return update


def ald(sde, score_fn, snr, n_steps) -> Update:
    """Annealed Langevin dynamics with NCSN's step schedule: eps_i = 2 alpha (snr sigma(t))^2."""

    def update(key, x, t):
        alpha = _langevin_alpha(sde, t, x.dtype)
        std = sde.marginal_coeffs(jnp.asarray(t, x.dtype))[1]
        step_size = (snr * std) ** 2 * 2 * alpha

        def step(i, carry):
            x, _ = carry
            x_mean = x + bb(step_size, x) * score_fn(x, t)
            noise = _normal(jax.random.fold_in(key, i), x)
            return x_mean + bb(jnp.sqrt(2 * step_size), x) * noise, x_mean

        return jax.lax.fori_loop(0, n_steps, step, (x, x))

    return update


def no_corrector(sde, score_fn, snr, n_steps) -> Update:
    return lambda key, x, t: (x, x)


class _Entry(NamedTuple):
    build: Callable
    nfe_per_step: int  # score evaluations per predictor step, or per corrector iteration


PREDICTORS = {
    "euler_maruyama": _Entry(euler_maruyama, 1),
    "reverse_diffusion": _Entry(reverse_diffusion, 1),
    "ancestral_sampling": _Entry(ancestral_sampling, 1),
    "none": _Entry(no_predictor, 0),
}
CORRECTORS = {"langevin": _Entry(langevin, 1), "ald": _Entry(ald, 1), "none": _Entry(no_corrector, 0)}


def pc_nfe(num_steps: int, predictor: str, corrector: str, n_steps: int, **_) -> int:
    """Score evaluations per sample: N (predictor + n_steps corrector iterations)."""
    pred, corr = _lookup(PREDICTORS, predictor, "predictor"), _lookup(CORRECTORS, corrector, "corrector")
    return num_steps * (pred.nfe_per_step + corr.nfe_per_step * n_steps)


def _lookup(table, name, kind):
    if name not in table:
        raise ValueError(f"Unknown {kind} {name!r}; valid names: {', '.join(table)}.")
    return table[name]


def pc_sample(
    key: jax.Array,
    sde: sde_lib.SDE,
    score_fn,
    shape: tuple[int, ...],
    predictor: str = "reverse_diffusion",
    corrector: str = "langevin",
    snr: float = 0.16,
    n_steps: int = 1,
    num_steps: int | None = None,
    eps: float | None = None,
    denoise: bool = True,
    constraint=None,
):
    """Predictor--corrector sampling from the prior at T down to eps.

    Args:
      shape: `(B, ...)` of the samples.
      num_steps: N, the number of predictor steps (default: `sde.N`). The discrete
        chains (reverse diffusion, ancestral) use N levels, as the reference's num_scales.
      eps: last time of the grid; default 1e-3 for VP-type SDEs, 1e-5 for VE.
      denoise: return the mean of the last step, without its noise.
      constraint: None, or a pytree with `guide(sde, score_fn) -> score_fn`,
        `pin(x, alpha, sigma) -> x` and `project(sde, key, x, x_mean, t) -> (x, x_mean)`
        (`imputation.Imputation`): the score is `guide`d, the prior samples start as
        `pin(x, 1, 0)`, and `project` follows the corrector and the predictor at time t.
        Its arrays are traced, so new data does not recompile.
    Returns:
      (x `(B, ...)`, nfe), nfe the number of score evaluations per sample path.
    """
    score_fn = as_score_model(score_fn)
    pred, corr = _lookup(PREDICTORS, predictor, "predictor"), _lookup(CORRECTORS, corrector, "corrector")
    if not (isinstance(n_steps, int) and n_steps >= 0):
        raise ValueError(f"n_steps (corrector iterations per step) must be an integer >= 0, got {n_steps!r}.")
    sde = sde.with_steps(num_steps)
    pred.build(sde, score_fn)  # fails early for a predictor the SDE does not support
    uses_chain = predictor in ("reverse_diffusion", "ancestral_sampling") or corrector != "none"
    if uses_chain and isinstance(sde, sde_lib.VariancePreserving) and sde.discrete_betas.max() >= 1.0:
        raise ValueError(
            f"With N={sde.N} steps the DDPM chain of this VP SDE has betas >= 1 (beta_max/N = "
            f"{sde.discrete_betas.max():.3g}), so {predictor}/{corrector} are undefined. Use more steps "
            "or predictor='euler_maruyama', corrector='none'."
        )
    parallel.check_divisible(shape[0])
    eps = sde_lib.default_eps(sde) if eps is None else float(eps)
    x = _pc_loop(
        key, sde, score_fn, tuple(shape), predictor, corrector, jnp.asarray(snr), n_steps, eps, denoise, constraint
    )
    return x, pc_nfe(sde.N, predictor, corrector, n_steps)


@functools.partial(
    jax.jit, static_argnames=("sde", "shape", "predictor", "corrector", "n_steps", "denoise")
)
def _pc_loop(key, sde, score_fn, shape, predictor, corrector, snr, n_steps, eps, denoise, constraint):
    if constraint is not None:
        score_fn = constraint.guide(sde, score_fn)
    predictor_update = PREDICTORS[predictor].build(sde, score_fn)
    corrector_update = CORRECTORS[corrector].build(sde, score_fn, snr, n_steps)
    key, prior_key = jax.random.split(key)
    x = parallel.constrain_batch(sde.prior_sampling(prior_key, shape))
    if constraint is not None:
        x = constraint.pin(x, 1.0, 0.0)
    timesteps = jnp.linspace(sde.T, eps, sde.N, dtype=x.dtype)

    def body(i, carry):
        x, _ = carry
        t = jnp.full(shape[:1], timesteps[i], x.dtype)
        corrector_key, predictor_key = jax.random.split(jax.random.fold_in(key, i))
        x, x_mean = corrector_update(corrector_key, x, t)
        if constraint is not None:
            keys = jax.random.split(jax.random.fold_in(key, sde.N + i))
            x, _ = constraint.project(sde, keys[0], x, x_mean, t)
        x, x_mean = predictor_update(predictor_key, x, t)
        if constraint is not None:
            x, x_mean = constraint.project(sde, keys[1], x, x_mean, t)
        return parallel.constrain_batch(x), x_mean

    x, x_mean = jax.lax.fori_loop(0, sde.N, body, (x, x))
    return x_mean if denoise else x
