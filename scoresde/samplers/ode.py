"""The probability-flow ODE, solved on device with diffrax.

    dx/dt = f(x, t) - 1/2 g(t)^2 score(x, t)                      (Song et al. eq. 13)

`solve_ode` is the one solver path of the toolkit: sampling (T -> eps), encoding
(eps -> T) and the likelihood's augmented ODE all go through it. Adaptive methods use
a PID step controller with one of `ERROR_NORMS`; fixed-step methods take `num_steps`
equal steps. The entire solve is one XLA while loop: no host round trips.
`flow_coordinates` gives the ODE in other time variables (sigma, log-SNR); which one
takes the fewest steps depends on the score (experiments/results/bench_likelihood_*.md).
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import diffrax
import jax
import jax.numpy as jnp

from scoresde import parallel, sde_lib
from scoresde.samplers.pc import reverse_diffusion
from scoresde.score import as_score_model


class _Method(NamedTuple):
    solver: Callable[[], diffrax.AbstractSolver]
    adaptive: bool
    evals_per_step: int  # new vector-field evaluations per attempted step


# FSAL Runge--Kutta pairs evaluate (stages - 1) new stages per step, plus one at the start.
METHODS = {
    "tsit5": _Method(diffrax.Tsit5, True, 6),
    "dopri5": _Method(diffrax.Dopri5, True, 6),
    "bosh3": _Method(diffrax.Bosh3, True, 3),
    "dopri8": _Method(diffrax.Dopri8, True, 13),
    "euler": _Method(diffrax.Euler, False, 1),
    "heun": _Method(diffrax.Heun, False, 2),
    "midpoint": _Method(diffrax.Midpoint, False, 2),
    "ralston": _Method(diffrax.Ralston, False, 2),
}


class ODESolveError(RuntimeError):
    """The solver stopped before reaching t1 (step limit, or a step size that collapsed)."""


def check_method(method: str, num_steps: int | None):
    if method not in METHODS:
        raise ValueError(f"Unknown ODE method {method!r}; valid names: {', '.join(METHODS)}.")
    if not METHODS[method].adaptive and not (isinstance(num_steps, int) and num_steps >= 1):
        raise ValueError(f"The fixed-step method {method!r} needs num_steps, an integer >= 1; got {num_steps!r}.")


def ode_nfe(num_steps: int, method: str, denoise: bool = False, **_) -> int | None:
    """Score evaluations per sample of a fixed-step method (+1 to denoise); None if adaptive."""
    spec = METHODS[method]
    return None if spec.adaptive else spec.evals_per_step * num_steps + int(denoise)


def _max_norm(y):
    """RMS over the batch for each (B, ...) part of the state, max over examples for
    per-example scalars (B,) such as delta log p, so that the tolerance binds every
    example's log-likelihood rather than the batch's mean; the max over the parts."""
    norms = [
        jnp.max(jnp.abs(leaf)) if leaf.ndim == 1 else jnp.sqrt(jnp.mean(jnp.square(leaf)))
        for leaf in jax.tree_util.tree_leaves(y)
    ]
    return functools.reduce(jnp.maximum, norms)


def _rms_norm(y):
    """The RMS over every component of the flattened state (scipy's solve_ivp norm, the
    reference's): with a (B, D) image part and a (B,) delta log p, delta's errors weigh
    1/(D + 1) of the total, so the tolerance hardly binds log p."""
    leaves = jax.tree_util.tree_leaves(y)
    total = sum(jnp.sum(jnp.square(leaf)) for leaf in leaves)
    return jnp.sqrt(total / sum(leaf.size for leaf in leaves))


# The step controller's error norm, applied to the error scaled by atol + rtol |y|.
ERROR_NORMS = {"max": _max_norm, "rms": _rms_norm}


def solve_ode(
    vector_field, y0, t0, t1, method="tsit5", rtol=1e-5, atol=1e-5, num_steps=None, max_steps=16384, error_norm="max"
):
    """Solve dy/dt = vector_field(t, y) from t0 to t1 (either direction); call inside jit.

    Args:
      vector_field: `(t scalar, y pytree) -> pytree like y`.
      num_steps: equal steps for fixed-step methods; ignored by adaptive ones.
      max_steps: attempted-step limit for adaptive methods.
      error_norm: a name in `ERROR_NORMS`, for adaptive methods.
    Returns:
      (y1, nfe, ok): the state at t1, the number of vector-field evaluations (rejected
      steps included), and whether the solve reached t1. Check `ok` on the host with
      `raise_if_failed` after the compiled call.
    """
    spec = METHODS[method]
    term = diffrax.ODETerm(lambda t, y, args: vector_field(t, y))
    if spec.adaptive:
        controller = diffrax.PIDController(rtol=rtol, atol=atol, norm=ERROR_NORMS[error_norm])
        dt0, limit = None, max_steps
    else:
        controller, dt0, limit = diffrax.ConstantStepSize(), (t1 - t0) / num_steps, num_steps
    sol = diffrax.diffeqsolve(
        term,
        spec.solver(),
        t0,
        t1,
        dt0,
        y0,
        stepsize_controller=controller,
        saveat=diffrax.SaveAt(t1=True),
        max_steps=limit,
        throw=False,
    )
    steps = sol.stats["num_steps"]
    nfe = spec.evals_per_step * steps + (1 if spec.adaptive else 0)
    y1 = jax.tree_util.tree_map(lambda leaf: leaf[-1], sol.ys)
    return y1, nfe, sol.result == diffrax.RESULTS.successful


def raise_if_failed(ok, nfe, method, max_steps):
    """Host-side check after a compiled solve: a solve that stopped early raises."""
    if not bool(ok):
        raise ODESolveError(
            f"The {method} ODE solve did not reach its end time (stopped after {int(nfe)} evaluations; "
            f"max_steps={max_steps}). Raise max_steps, loosen rtol/atol, or check the score "
            f"function for non-finite values."
        )


def probability_flow_drift(sde: sde_lib.SDE, score_fn):
    """`(t scalar, x (B, ...)) -> dx/dt`, the probability-flow ODE's drift."""
    rsde = sde.reverse(score_fn, probability_flow=True)

    def drift(t, x):
        return rsde.sde(x, jnp.full(x.shape[:1], t, x.dtype))[0]

    return drift


TIME_VARIABLES = ("t", "log_snr", "sigma")


class FlowCoordinates(NamedTuple):
    """The probability-flow ODE in a time variable u and a state y, for `solve_ode`.

    * "t": u = t, y = x, the drift of `probability_flow_drift`.
    * "sigma": u = sigma~(t) = sigma(t)/s(t), y = x/s(t) (Karras et al. 2022, eq. 4):
          dy/du = -u s(t) score(s(t) y, t),  t = sde.sigma_to_t(u),
      which has no linear part, so a step error no longer scales with the drift's f(t) x.
    * "log_snr": u = log sigma~(t) = -lambda_t (minus the half log-SNR, so u grows with t):
          dy/du = -u~^2 s(t) score(s(t) y, t) with u~ = e^u,
      smooth where the t-drift is singular (VP: sigma~ ~ sqrt(t) near 0), as DPM-Solver
      exploits. Rademacher probes give exactly the same Hutchinson integrand in every
      variable: v^T J_y v = v^T J_x v - D s'/s along the path; `log_det` adds back the
      D log s(T)/s(t0) that the scaling takes out.
    """

    field: Callable  # (u scalar, y (B, ...)) -> dy/du
    u_of_t: Callable  # t -> u
    to_y: Callable  # (x, t) -> y
    to_x: Callable  # (y, t) -> x
    log_det: Callable  # (t0, t1) -> log |d y / d x| at t1 minus at t0, per dimension


def flow_coordinates(sde: sde_lib.SDE, score_fn, variable: str = "t") -> FlowCoordinates:
    """The probability-flow ODE in one of `TIME_VARIABLES` (see `FlowCoordinates`)."""
    if variable == "t":
        identity = lambda x, t: x
        return FlowCoordinates(probability_flow_drift(sde, score_fn), lambda t: t, identity, identity, lambda t0, t1: 0.0)
    if variable not in TIME_VARIABLES:
        raise ValueError(f"Unknown time variable {variable!r}; valid names: {', '.join(TIME_VARIABLES)}.")

    def coeffs(t):
        s, std = sde.marginal_coeffs(jnp.reshape(t, (1,)))
        return s[0], std[0]

    def sigma_of_u(u):
        return jnp.exp(u) if variable == "log_snr" else u

    def field(u, y):
        sigma = sigma_of_u(u)
        t = sde.sigma_to_t(sigma)
        s = coeffs(t)[0]
        dsigma_du = sigma if variable == "log_snr" else 1.0
        return (-dsigma_du * sigma * s) * score_fn(s * y, jnp.full(y.shape[:1], t, y.dtype))

    def u_of_t(t):
        s, std = coeffs(t)
        return jnp.log(std) - jnp.log(s) if variable == "log_snr" else std / s

    return FlowCoordinates(
        field,
        u_of_t,
        lambda x, t: x / coeffs(t)[0],
        lambda y, t: y * coeffs(t)[0],
        lambda t0, t1: jnp.log(coeffs(t0)[0]) - jnp.log(coeffs(t1)[0]),
    )


def pinned_drift(sde: sde_lib.SDE, drift, constraint):
    """The drift with the constraint's known part on its path (x_k(t) = alpha_t data + sigma_t z
    for exact data): the unknown components are `drift` at the pinned state `pin(x, alpha_t,
    sigma_t)`, the known ones the path's d/dt (`imputation.Imputation.pin_velocity`)."""

    def coeffs(t):
        alpha, sigma = sde.marginal_coeffs(jnp.reshape(t, (1,)))
        return alpha[0], sigma[0]

    def field(t, x):
        (alpha, sigma), (dalpha, dsigma) = jax.jvp(coeffs, (t,), (jnp.ones_like(t),))
        return constraint.pin_velocity(drift(t, constraint.pin(x, alpha, sigma)), alpha, sigma, dalpha, dsigma)

    return field


def _validate_eps(sde, eps):
    eps = sde_lib.default_eps(sde) if eps is None else float(eps)
    if not 0.0 < eps < sde.T:
        raise ValueError(f"eps must lie in (0, T={sde.T}), got {eps}.")
    return eps


def ode_sample(
    key,
    sde: sde_lib.SDE,
    score_fn,
    shape,
    method: str = "tsit5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    num_steps: int | None = None,
    eps: float | None = None,
    z=None,
    denoise: bool = False,
    max_steps: int = 16384,
    constraint=None,
):
    """Sample by solving the probability-flow ODE from T down to eps.

    Args:
      shape: `(B, ...)` of the samples.
      method: adaptive `tsit5`, `dopri5`, `bosh3`, `dopri8`, or fixed-step `euler`,
        `heun`, `midpoint`, `ralston` (these need `num_steps`).
      z: latents `(B, ...)` at T to start from, instead of prior samples.
      denoise: finish with one reverse-diffusion step's mean at eps (one more evaluation).
      constraint: None, or a pytree with `guide(sde, score_fn) -> score_fn`,
        `pin(x, alpha, sigma) -> x` and `pin_velocity` (`imputation.Imputation`): the ODE of the guided score,
        its known part pinned to a path (`pinned_drift`). Traced, so new data does not recompile.
    Returns:
      (x `(B, ...)`, nfe). Raises `ODESolveError` if the solver stopped before eps.
    """
    check_method(method, num_steps)
    eps = _validate_eps(sde, eps)
    if z is not None and tuple(z.shape) != tuple(shape):
        raise ValueError(f"z has shape {tuple(z.shape)} but shape={tuple(shape)} was asked for.")
    parallel.check_divisible(shape[0])
    if z is None:
        z = sde.prior_sampling(key, tuple(shape))
    x, nfe, ok = _ode_sample(
        key, sde, as_score_model(score_fn), parallel.shard_batch(z), method, rtol, atol, num_steps, eps, denoise, max_steps, constraint
    )
    raise_if_failed(ok, nfe, method, max_steps)
    return x, int(nfe)


@functools.partial(jax.jit, static_argnames=("sde", "method", "num_steps", "denoise", "max_steps"))
def _ode_sample(key, sde, score_fn, z, method, rtol, atol, num_steps, eps, denoise, max_steps, constraint):
    if constraint is None:
        drift = probability_flow_drift(sde, score_fn)
    else:
        score_fn = constraint.guide(sde, score_fn)
        drift = pinned_drift(sde, probability_flow_drift(sde, score_fn), constraint)
    x, nfe, ok = solve_ode(drift, z, sde.T, eps, method, rtol, atol, num_steps, max_steps)
    if denoise:
        _, x = reverse_diffusion(sde, score_fn)(key, x, jnp.full(x.shape[:1], eps, x.dtype))
        nfe = nfe + 1
    return x, nfe, ok


def ode_encode(
    sde: sde_lib.SDE,
    score_fn,
    x,
    method: str = "tsit5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    num_steps: int | None = None,
    eps: float | None = None,
    max_steps: int = 16384,
):
    """Map data x `(B, ...)` at time eps to latents z at T along the probability-flow ODE.

    Returns (z `(B, ...)`, nfe); `ode_sample(..., z=z)` with the same settings decodes it.
    """
    check_method(method, num_steps)
    eps = _validate_eps(sde, eps)
    parallel.check_divisible(x.shape[0])
    z, nfe, ok = _ode_encode(sde, as_score_model(score_fn), parallel.shard_batch(x), method, rtol, atol, num_steps, eps, max_steps)
    raise_if_failed(ok, nfe, method, max_steps)
    return z, int(nfe)


@functools.partial(jax.jit, static_argnames=("sde", "method", "num_steps", "max_steps"))
def _ode_encode(sde, score_fn, x, method, rtol, atol, num_steps, eps, max_steps):
    return solve_ode(probability_flow_drift(sde, score_fn), x, eps, sde.T, method, rtol, atol, num_steps, max_steps)
