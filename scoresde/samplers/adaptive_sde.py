"""Adaptive-step reverse-SDE solver with error control: "Gotta Go Fast" (Jolicoeur-Martineau
et al. 2021, Algorithm 1).

Each example of the batch has its own time t and step size h, from t = T down to eps.
A step from t to t - h with the Brownian increment dW (variance h) evaluates the
reverse-time SDE dx = [f - g^2 score] dt + g dw-bar twice (2 NFE):

    K1 = -h drift(x, t)      + g(t)     dW      x'  = x + K1            (Euler--Maruyama)
    K2 = -h drift(x', t - h) + g(t - h) dW      x'' = x + (K1 + K2) / 2  (stochastic improved Euler)

Error: E = ||(x' - x'') / delta||_2 / sqrt(D) per example (D its size: the paper's
"L2_scaled" norm, an RMS over the example's elements), with the per-element scale
delta = max(atol, rtol max(|x'|, |x'_prev|)), x'_prev the x' of the example's last
accepted step (x_T at first). The step is accepted if E <= 1, and then x <- x''
(extrapolation); either way h <- min(t - eps, safety h E^(-exponent)), per example.

One departure from the paper, which draws a fresh z for every attempt (dW = sqrt(h) z,
kept as brownian="redraw"): rejecting an attempt and redrawing its noise selects the
noise by the error test, so the path is no longer Brownian, and the bias does not vanish
as the tolerance shrinks. On the exact 16-D mixture of `experiments/ablate_samplers.py`
it inflated every mode's covariance by 5-7% (VP, rtol 0.005-0.02) and 12-13% (VE, rtol
0.01), out of the band of exact samples (experiments/results/adaptive_sde). By default
(brownian="memory") a rejected attempt is retried on the same Brownian path, by
rejection sampling with memory (Rackauckas & Nie 2017, `draw_increment`): each example
keeps what its attempts revealed of its path ahead (up to MEMORY intervals), and a
shorter retry draws its increment from the Brownian bridge inside the rejected one. One
normal draw per attempt, as the paper's.

The defaults are the paper's: h_init = 0.01, safety = 0.9, exponent = 0.9, rtol = 0.01
(its most accurate setting; it also ran 0.02-0.1, trading quality for speed) and
atol = 0.0078, its atol for data in [-1, 1] (its VP models: one 8-bit step, 2/256); it
used 0.0039 = 1/256 for data in [0, 1] (its VE models). For data on another scale, set
atol to about (data range)/256.

Cost: on the exact 16-D mixtures it needs more evaluations than uniform Euler--Maruyama
for the same distance (VP: 445 at the defaults, 57 at rtol = atol = 0.2, against 50;
experiments/results/adaptive_sde); the paper's gains were on images, where
Euler--Maruyama needs ~1000 steps.

The whole solve is one `lax.while_loop` over the batch until every example reaches eps
(or max_steps attempts): no host round trips. Every iteration evaluates the score on the
whole batch (finished examples are frozen), so the returned nfe, the evaluations per
sample path of the batch, is 2 x iterations (+ 1 to denoise): the slowest example sets it.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from scoresde import parallel, sde_lib
from scoresde.score import as_score_model
from scoresde.sde_lib import batch_broadcast as bb


MEMORY = 8  # known future intervals kept per example (brownian="memory")
BROWNIAN = ("memory", "redraw")


class SDESolveError(RuntimeError):
    """The adaptive SDE solver stopped before every example reached eps."""


def adaptive_sde_nfe(**_) -> None:
    """The cost is data-dependent (adaptive): known only after the run."""
    return None


def _check_number(name, value, high=None):
    """A one-line ValueError unless value is a finite number > 0 (and <= high)."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not (number and value > 0 and (high is None or value <= high)):
        bound = f"in (0, {high}]" if high is not None else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}.")


def adaptive_sde_sample(
    key,
    sde: sde_lib.SDE,
    score_fn,
    shape,
    rtol: float = 0.01,
    atol: float = 0.0078,
    eps: float | None = None,
    h_init: float = 0.01,
    safety: float = 0.9,
    exponent: float = 0.9,
    max_steps: int = 16384,
    denoise: bool = True,
    brownian: str = "memory",
    z=None,
    constraint=None,
):
    """Sample the reverse-time SDE from T down to eps with per-example adaptive steps.

    Args:
      shape: `(B, ...)` of the samples.
      rtol, atol: relative and absolute tolerances of the per-element error scale
        delta = max(atol, rtol max(|x'|, |x'_prev|)) (module docstring).
      eps: last time; default 1e-3 for VP-type SDEs, 1e-5 for VE, a path's own eps.
      h_init: first step size (in t); clipped to T - eps.
      safety, exponent: the step-size update h <- safety h E^(-exponent).
      max_steps: limit on the attempted steps (loop iterations, accepted or not, 2 NFE each).
      denoise: finish with Tweedie's E[x_0 | x_eps] = (x + sigma_eps^2 score) / alpha_eps
        (one more evaluation).
      brownian: "memory" (a rejected step is retried on the same Brownian path, the
        default) or "redraw" (the paper's fresh noise for every attempt, biased: module
        docstring).
      z: latents `(B, ...)` at T to start from, instead of prior samples.
      constraint: None, or a pytree with `guide(sde, score_fn) -> score_fn` and
        `pin(x, alpha, sigma) -> x` (`imputation.Imputation`): the score is guided and the
        known part of both proposals is pinned at t - h before the error is measured,
        so it adds no error; traced, so new data does not recompile.
    Returns:
      (x `(B, ...)`, nfe): nfe the score evaluations per sample path (the batch's, rejected
      steps included). Raises `SDESolveError` if some example did not reach eps within
      max_steps, or the score went non-finite.
    """
    eps = sde_lib.default_eps(sde) if eps is None else eps
    _check_number("eps", eps)
    if not eps < sde.T:
        raise ValueError(f"eps must lie in (0, T={sde.T}), got {eps}.")
    for name, value in (("rtol", rtol), ("atol", atol), ("h_init", h_init), ("exponent", exponent)):
        _check_number(name, value)
    _check_number("safety", safety, high=1.0)
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(f"max_steps must be an integer >= 1, got {max_steps!r}.")
    if brownian not in BROWNIAN:
        raise ValueError(f"Unknown brownian {brownian!r}; valid: {', '.join(BROWNIAN)}.")
    parallel.check_divisible(shape[0])
    prior_key, key = jax.random.split(key)
    if z is None:
        z = sde.prior_sampling(prior_key, tuple(shape))
    elif tuple(z.shape) != tuple(shape):
        raise ValueError(f"z has shape {tuple(z.shape)} but shape={tuple(shape)} was asked for.")
    params = tuple(float(v) for v in (rtol, atol, eps, h_init, safety, exponent))
    x, nfe, steps, status = _adaptive_loop(
        key, sde, as_score_model(score_fn), parallel.shard_batch(z), params, max_steps, bool(denoise), brownian,
        constraint,
    )
    status, steps = int(status), int(steps)
    tried = f"{steps} attempted step{'s' * (steps != 1)} ({2 * steps} evaluations)"
    if status == 2:
        raise SDESolveError(
            f"The adaptive SDE solver stopped after {tried}: its error estimate went non-finite. Check the score "
            f"function (and the latents z) for non-finite values."
        )
    if status == 1:
        raise SDESolveError(
            f"The adaptive SDE solver did not reach eps={eps:g} within max_steps={max_steps} attempted steps "
            f"({2 * steps} evaluations). Raise max_steps or loosen rtol/atol (rtol={rtol:g}, atol={atol:g})."
        )
    return x, int(nfe)


class Increments(NamedTuple):
    """What is known of an example's Brownian path ahead of its time t: increments dw over
    the next count consecutive intervals of lengths dt, as a stack (index count - 1 the
    nearest interval, 0 the farthest; beyond them nothing is known). dt `(B, K)`,
    dw `(B, K, *event)`, count `(B,)` int32."""

    dt: jax.Array
    dw: jax.Array
    count: jax.Array


def empty_increments(batch: int, event_shape, dtype, capacity: int = MEMORY) -> Increments:
    return Increments(jnp.zeros((batch, capacity), dtype), jnp.zeros((batch, capacity) + tuple(event_shape), dtype),
                      jnp.zeros((batch,), jnp.int32))


def draw_increment(memory: Increments, h, noise):
    """The Brownian increment over the next h `(B,)` of each path, and `advance(accept)`,
    the memory after the step is accepted (accept `(B,)` True) or rejected (rejection
    sampling with memory, Rackauckas & Nie 2017). noise `(B, *event)`: standard normal,
    used once.

    The increment is drawn from its exact law given what is known: the known intervals it
    covers whole, plus, for the rest, the Brownian bridge inside the known interval it
    ends in, or a fresh N(0, rest) beyond the known ones. Accepted, the path moves past h
    (a split interval keeps its remainder); rejected, everything revealed is kept (the
    split interval as its two parts, or the fresh part pushed under the known ones), so a
    retried, shorter step sees the same path. The stack holds K intervals; a rejection
    with K known forgets the rejected step's last part (rare: 4e-4 of the attempts reach
    K = 8 on the 2-D mixture at rtol 0.01, fewer in 16-D; its law then restarts fresh there).
    Data-independent indexing only (masks, dots and one static shift): XLA's CPU gathers
    and cumsums are slow.
    """
    dt, dw, count = memory
    capacity = dt.shape[1]

    def ex(v):  # (B, K) -> (B, K, 1, ...) against dw
        return v.reshape(v.shape + (1,) * (dw.ndim - 2))

    j = jnp.arange(capacity)[None, :]
    known = j < count[:, None]
    dt = jnp.where(known, dt, 0.0)
    # From t to the far end of interval j: sum_{k >= j} dt_k.
    ends = dt @ (jnp.arange(capacity)[:, None] >= jnp.arange(capacity)).astype(dt.dtype)
    whole = known & (ends <= h[:, None])  # the nearest m intervals
    m = jnp.sum(whole, axis=1)
    p = count - 1 - m  # the interval the step ends in, -1 if beyond the known ones
    at = j == p[:, None]
    # Lengths from `ends` alone, so that rounding keeps 0 < rest <= piece_dt (float
    # subtraction is monotone): no interval of negative length, no division by zero.
    covered = jnp.max(jnp.where(whole, ends, 0.0), axis=1)
    rest = jnp.maximum(h - covered, 0.0)
    inside = (p >= 0) & (rest > 0)
    piece_dt = jnp.sum(jnp.where(at, ends, 0.0), axis=1) - covered
    sums = jnp.einsum("bik,bk...->bi...", jnp.stack([whole, at], axis=1).astype(dw.dtype), dw)
    whole_dw, piece_dw = sums[:, 0], sums[:, 1]
    frac = jnp.where(inside, jnp.clip(rest / jnp.where(inside, piece_dt, 1.0), 0.0, 1.0), 0.0)
    std = jnp.where(inside, jnp.sqrt(jnp.maximum(frac * (1.0 - frac) * piece_dt, 0.0)), jnp.sqrt(rest))
    part = bb(frac, noise) * piece_dw + bb(std, noise) * noise  # W over [covered, h]
    left_dt, left_dw = piece_dt - rest, piece_dw - part  # the split interval's remainder
    split = at & inside[:, None]
    grow = (rest > 0) & (count < capacity)  # a full stack keeps what it has instead

    def advance(accept):
        """Accepted: pop the m intervals covered; interval p keeps its remainder. Rejected:
        [covered, h] goes in at p + 1, above interval p's remainder, pushing the m nearer
        intervals up by one."""
        pushed = (grow & ~accept)[:, None]
        above, new = (j > p[:, None] + 1) & pushed, (j == p[:, None] + 1) & pushed
        cut = split & (accept[:, None] | pushed)
        new_dt = jnp.where(above, jnp.roll(dt, 1, axis=1),
                           jnp.where(new, rest[:, None], jnp.where(cut, left_dt[:, None], dt)))
        new_dw = jnp.where(ex(above), jnp.roll(dw, 1, axis=1),
                           jnp.where(ex(new), part[:, None], jnp.where(ex(cut), left_dw[:, None], dw)))
        return Increments(new_dt, new_dw, jnp.where(accept, count - m, count + pushed[:, 0].astype(jnp.int32)))

    return whole_dw + part, advance


@functools.partial(jax.jit, static_argnames=("sde", "denoise", "brownian"))
def _adaptive_loop(key, sde, score_fn, z, params, max_steps, denoise, brownian, constraint):
    rtol, atol, eps, h_init, safety, exponent = params
    if constraint is not None:
        score_fn = constraint.guide(sde, score_fn)
    rsde = sde.reverse(score_fn)
    x = parallel.constrain_batch(z)
    batch, dtype = x.shape[0], x.dtype
    size = x.size // batch
    T = jnp.asarray(sde.T, dtype)
    eps = jnp.asarray(eps, dtype)

    def pin(x, t):
        if constraint is None:
            return x
        alpha, sigma = sde.marginal_coeffs(t)
        return constraint.pin(x, bb(alpha, x), bb(sigma, x))

    def body(carry):
        i, x, x_prev, t, h, memory, failed = carry
        active = t > eps
        h = jnp.where(active, h, 0.0)  # finished examples take empty steps (and are frozen below)
        noise = jax.random.normal(jax.random.fold_in(key, i), x.shape, dtype)
        if brownian == "memory":
            dw, advance = draw_increment(memory, h, noise)
        else:  # the paper's: a fresh draw for every attempt
            dw = bb(jnp.sqrt(h), x) * noise
        t_next = t - h
        drift, diffusion = rsde.sde(x, t)
        k1 = -bb(h, x) * drift + bb(diffusion, x) * dw
        x_em = pin(x + k1, t_next)
        drift_2, diffusion_2 = rsde.sde(x_em, t_next)
        k2 = -bb(h, x) * drift_2 + bb(diffusion_2, x) * dw
        x_heun = pin(x + 0.5 * (k1 + k2), t_next)
        scale = jnp.maximum(atol, rtol * jnp.maximum(jnp.abs(x_em), jnp.abs(x_prev)))
        err = jnp.sqrt(jnp.sum(jnp.square((x_em - x_heun) / scale).reshape(batch, -1), axis=1) / size)
        err = jnp.where(active, err, 0.0)
        accept = active & (err <= 1.0)
        # The last step lands on eps exactly (t - (t - eps) can round off it in float).
        t_new = jnp.where(accept, jnp.where(h >= t - eps, eps, t_next), t)
        keep = bb(accept, x)
        x, x_prev = jnp.where(keep, x_heun, x), jnp.where(keep, x_em, x_prev)
        if brownian == "memory":
            memory = advance(accept)  # unchanged where inactive (h = 0)
        factor = jnp.where(err > 0, jnp.power(jnp.where(err > 0, err, 1.0), -exponent), jnp.inf)
        h_new = jnp.where(t_new > eps, jnp.minimum(t_new - eps, safety * h * factor), 0.0)
        failed = failed | jnp.any(active & ~jnp.isfinite(err))
        return i + 1, parallel.constrain_batch(x), x_prev, t_new, h_new, memory, failed

    def cond(carry):
        i, t, failed = carry[0], carry[3], carry[6]
        return jnp.any(t > eps) & (i < max_steps) & ~failed

    t0 = jnp.full((batch,), T, dtype)
    h0 = jnp.full((batch,), jnp.minimum(h_init, T - eps), dtype)
    memory = empty_increments(batch, x.shape[1:], dtype) if brownian == "memory" else None
    init = (jnp.int32(0), x, x, t0, h0, memory, jnp.bool_(False))
    steps, x, _, t, _, _, failed = jax.lax.while_loop(cond, body, init)
    nfe = 2 * steps
    if denoise:
        t_eps = jnp.full((batch,), eps, dtype)
        alpha, sigma = sde.marginal_coeffs(t_eps)
        x = (x + bb(sigma**2, x) * score_fn(x, t_eps)) / bb(alpha, x)
        nfe = nfe + 1
    status = jnp.where(failed, 2, jnp.where(jnp.any(t > eps), 1, 0))
    return x, nfe, steps, status
