"""Few-step samplers of the probability-flow ODE: EDM (Karras et al. 2022) and
DPM-Solver / DPM-Solver++ (Lu et al. 2022a, 2022b), with DDIM as DPM-Solver-1.

All of them work on every linear SDE of `sde_lib` through its marginal coefficients
x_t = alpha_t x_0 + sigma_t eps (alpha_t = s(t) in `sde.marginal_coeffs`) and a
plain `score_fn(x, t)`, from which the two predictions follow:

    data  x_0(x, t) = (x + sigma_t^2 score(x, t)) / alpha_t,
    noise eps(x, t) = -sigma_t score(x, t).

EDM steps in the noise-to-signal ratio sigma^(t) = sigma_t / alpha_t on x^ = x / alpha_t,
where the ODE reads dx^/dsigma^ = (x^ - x_0) / sigma^. DPM-Solver steps in the
half-log-SNR lambda_t = log(alpha_t / sigma_t), with h = lambda_t - lambda_s.

An optional `constraint` (see `samplers.imputation`) guides the score and pins the
known part of x after every step: `constraint.pin(x, alpha, sigma)` sets it to
alpha data + sigma z, in x^ = x / alpha for EDM (alpha = 1, sigma = sigma^).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from scoresde import parallel, sde_lib
from scoresde.score import as_score_model

SPACINGS = ("logSNR", "time_uniform", "time_quadratic", "karras")


def _coeffs(sde, t):
    """alpha_t, sigma_t for a scalar t."""
    s, sigma = sde.marginal_coeffs(jnp.reshape(t, (1,)))
    return s[0], sigma[0]


def data_prediction(sde, score_fn, x, t):
    """x_0(x, t) = (x + sigma_t^2 score) / alpha_t, for a scalar t."""
    alpha, sigma = _coeffs(sde, t)
    return (x + sigma**2 * score_fn(x, jnp.full(x.shape[:1], t, x.dtype))) / alpha


def noise_prediction(sde, score_fn, x, t):
    """eps(x, t) = -sigma_t score, for a scalar t."""
    _, sigma = _coeffs(sde, t)
    return -sigma * score_fn(x, jnp.full(x.shape[:1], t, x.dtype))


def _initial(key, sde, shape, z):
    """Latents at T: the given z `(B, ...)`, or prior samples (drawn with `key` itself)."""
    if z is None:
        return sde.prior_sampling(key, shape)
    if tuple(z.shape) != tuple(shape):
        raise ValueError(f"z has shape {tuple(z.shape)} but shape={tuple(shape)} was asked for.")
    return parallel.shard_batch(z)


def _check(shape, num_steps, minimum=1):
    if not (isinstance(num_steps, int) and num_steps >= minimum):
        raise ValueError(f"num_steps must be an integer >= {minimum}, got {num_steps!r}.")
    parallel.check_divisible(shape[0])


# ---------------------------------------------------------------------------------------
# EDM (Karras et al. 2022, Algorithms 1 and 2).


def edm_sigmas(sde, num_steps, eps, rho=7.0):
    """sigma_i = (sigma_max^(1/rho) + i/(N-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho,
    i < N, then sigma_N = 0; sigma_max = sigma^(T), sigma_min = sigma^(eps). `(N + 1,)`."""
    alpha_max, std_max = _coeffs(sde, jnp.asarray(sde.T))
    alpha_min, std_min = _coeffs(sde, jnp.asarray(eps))
    smax, smin = std_max / alpha_max, std_min / alpha_min
    ramp = jnp.linspace(0.0, 1.0, num_steps)
    sigmas = (smax ** (1 / rho) + ramp * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho
    return jnp.concatenate([sigmas, jnp.zeros((1,))])


def _pinner(constraint):
    """`pin(x, alpha, sigma)` of the constraint, or the identity without one."""
    return (lambda x, alpha, sigma: x) if constraint is None else constraint.pin


def _edm_denoiser(sde, score_fn):
    """D(x^; sigma^): the data prediction of x^ = x / alpha at noise-to-signal ratio sigma^."""

    def denoise(x_hat, sigma_hat):
        t = sde.sigma_to_t(sigma_hat)
        alpha, _ = _coeffs(sde, t)
        return data_prediction(sde, score_fn, alpha * x_hat, t)

    return denoise


def edm_sample(
    key,
    sde: sde_lib.SDE,
    score_fn,
    shape,
    num_steps: int = 18,
    eps: float | None = None,
    rho: float = 7.0,
    S_churn: float = 0.0,
    S_min: float = 0.0,
    S_max: float = float("inf"),
    S_noise: float = 1.0,
    z=None,
    constraint=None,
):
    """EDM's 2nd-order Heun sampler (deterministic with S_churn = 0, Algorithm 1) and its
    stochastic form (Algorithm 2), on the rho = 7 noise-level grid. Defaults are EDM's.

    Step i: gamma = min(S_churn/N, sqrt 2 - 1) if S_min <= sigma_i <= S_max (and capped
    so sigma^ stays within sigma_max); sigma^ = sigma_i (1 + gamma);
    x^ += sqrt(sigma^^2 - sigma_i^2) S_noise z; d = (x^ - D(x^; sigma^)) / sigma^;
    x_{i+1} = x^ + (sigma_{i+1} - sigma^) d, corrected by the trapezoid rule unless
    sigma_{i+1} = 0. `z`: latents at T instead of prior samples. `constraint`: see the
    module docstring; its known part is pinned after the churn and after every step.
    Returns (x `(B, ...)` at sigma = 0, nfe = 2N - 1).
    """
    _check(shape, num_steps)
    eps = sde_lib.default_eps(sde) if eps is None else float(eps)
    churn = (S_churn, S_min, S_max, S_noise)
    x = _edm_loop(key, sde, as_score_model(score_fn), _initial(key, sde, shape, z), num_steps, eps, rho, churn, constraint)
    return x, edm_nfe(num_steps)


def edm_nfe(num_steps: int, **_) -> int:
    """Two evaluations per Heun step, one for the last (Euler) step: 2N - 1."""
    return 2 * num_steps - 1


@functools.partial(jax.jit, static_argnames=("sde", "num_steps"))
def _edm_loop(key, sde, score_fn, z, num_steps, eps, rho, churn, constraint):
    S_churn, S_min, S_max, S_noise = churn
    if constraint is not None:
        score_fn = constraint.guide(sde, score_fn)
    pin = _pinner(constraint)
    denoise = _edm_denoiser(sde, score_fn)
    sigmas = edm_sigmas(sde, num_steps, eps, rho)
    alpha_T, _ = _coeffs(sde, jnp.asarray(sde.T))
    x = parallel.constrain_batch(z) / alpha_T

    def step(x, i):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        in_range = (sigma >= S_min) & (sigma <= S_max)
        gamma = jnp.where(in_range, jnp.minimum(S_churn / num_steps, math.sqrt(2.0) - 1.0), 0.0)
        sigma_hat = jnp.minimum(sigma * (1.0 + gamma), sigmas[0])
        noise = jax.random.normal(jax.random.fold_in(key, i + 1), x.shape, x.dtype)
        # (sigma^ - sigma)(sigma^ + sigma), not sigma^^2 - sigma^2: XLA contracts the latter
        # into an FMA that leaves sigma^2's rounding error, ~1e-4 sigma of noise after the
        # sqrt when gamma = 0; the product is exactly 0 then, so S_churn = 0 is deterministic.
        x_hat = x + jnp.sqrt(jnp.maximum((sigma_hat - sigma) * (sigma_hat + sigma), 0.0)) * S_noise * noise
        x_hat = pin(x_hat, 1.0, sigma_hat)
        d = (x_hat - denoise(x_hat, sigma_hat)) / sigma_hat
        x_next = x_hat + (sigma_next - sigma_hat) * d
        d_next = (x_next - denoise(x_next, sigma_next)) / sigma_next
        x_next = pin(x_hat + (sigma_next - sigma_hat) * 0.5 * (d + d_next), 1.0, sigma_next)
        return parallel.constrain_batch(x_next), None

    x, _ = jax.lax.scan(step, x, jnp.arange(num_steps - 1))
    # Last step to sigma = 0 is an Euler step: x_N = D(x; sigma_{N-1}).
    return denoise(x, sigmas[num_steps - 1])


# ---------------------------------------------------------------------------------------
# DPM-Solver and DPM-Solver++.


def _lambda(sde, t):
    alpha, sigma = _coeffs(sde, t)
    return jnp.log(alpha) - jnp.log(sigma)


def _t_of_lambda(sde, lam):
    return sde.sigma_to_t(jnp.exp(-lam))


def time_grid(sde, num_steps, eps, spacing="logSNR"):
    """`(num_steps + 1,)` times from T down to eps: uniform in lambda ("logSNR"), in t
    ("time_uniform"), in sqrt(t) ("time_quadratic", DPM-Solver's option for discrete models),
    or in sigma^(1/7), sigma^ = sigma / alpha ("karras": EDM's rho = 7 grid, `edm_sigmas`,
    k-diffusion's "Karras" schedule)."""
    if spacing == "time_uniform":
        return jnp.linspace(sde.T, eps, num_steps + 1)
    if spacing == "time_quadratic":
        return jnp.linspace(math.sqrt(sde.T), jnp.sqrt(eps), num_steps + 1) ** 2  # eps may be traced
    if spacing == "karras":
        ts = sde.sigma_to_t(edm_sigmas(sde, num_steps + 1, eps)[:-1])
        return ts.at[0].set(sde.T).at[-1].set(eps)
    if spacing == "logSNR":
        lam = jnp.linspace(_lambda(sde, jnp.asarray(sde.T)), _lambda(sde, jnp.asarray(eps)), num_steps + 1)
        ts = _t_of_lambda(sde, lam)
        return ts.at[0].set(sde.T).at[-1].set(eps)
    raise ValueError(f"Unknown step spacing {spacing!r}; valid names: {', '.join(SPACINGS)}.")


def sampling_grid(sde, num_steps, eps, spacing="logSNR", timesteps=None):
    """The `(num_steps + 1,)` times of a grid sampler from T down to eps: `time_grid`, or the
    given `timesteps` (e.g. `samplers.timesteps.optimize_timesteps`), which must be strictly
    decreasing from at most T to eps (`eps=None`: their last) and num_steps + 1 long; traced
    timesteps (inside a gradient) are checked for their shape only."""
    if spacing not in SPACINGS:
        raise ValueError(f"Unknown step spacing {spacing!r}; valid names: {', '.join(SPACINGS)}.")
    if timesteps is None:
        return time_grid(sde, num_steps, sde_lib.default_eps(sde) if eps is None else float(eps), spacing)
    ts = jnp.asarray(timesteps, jnp.float32)
    if ts.shape != (num_steps + 1,):
        raise ValueError(f"timesteps must have num_steps + 1 = {num_steps + 1} entries, got shape {ts.shape}.")
    if not isinstance(ts, jax.core.Tracer):
        check_timesteps(sde, ts, eps)
    return ts


def is_decreasing_grid(values) -> bool:
    """Whether `values` is a strictly decreasing 1-D sequence of at least two finite times > 0
    (the check of a `timesteps` option that needs no SDE; `check_timesteps` adds T and eps)."""
    try:
        ts = np.asarray(values, dtype=float)
    except (TypeError, ValueError):
        return False
    return ts.ndim == 1 and ts.shape[0] >= 2 and bool(np.all(np.isfinite(ts)) and np.all(np.diff(ts) < 0) and ts[-1] > 0)


def check_timesteps(sde, timesteps, eps=None):
    """A one-line ValueError unless `timesteps` is a strictly decreasing 1-D sequence of at
    least two finite times in (0, T], ending at eps when one is given."""
    if not is_decreasing_grid(timesteps):
        raise ValueError(f"timesteps must be a strictly decreasing 1-D sequence of at least 2 finite times > 0, "
                         f"got {timesteps!r}.")
    ts = np.asarray(timesteps, dtype=float)
    if ts[0] > sde.T * (1 + 1e-6):
        raise ValueError(f"timesteps must begin at most T = {sde.T} (the SDE's end time), got {timesteps!r}.")
    if eps is not None and not math.isclose(float(ts[-1]), float(eps), rel_tol=1e-5):
        raise ValueError(f"timesteps end at {float(ts[-1])!r} but eps={eps!r}: give one or the other.")


def _step_coeffs(sde, s, t):
    """(alpha_s, sigma_s), (alpha_t, sigma_t) and h = lambda_t - lambda_s."""
    return _coeffs(sde, s), _coeffs(sde, t), _lambda(sde, t) - _lambda(sde, s)


def ddim_data(sde, x, s, t, x0_s):
    """DPM-Solver++-1 (DDIM) from s to t: x_t = (sigma_t/sigma_s) x - alpha_t (e^{-h} - 1) x0_s."""
    (_, sigma_s), (alpha_t, sigma_t), h = _step_coeffs(sde, s, t)
    return sigma_t / sigma_s * x - alpha_t * jnp.expm1(-h) * x0_s


def ddim_noise(sde, x, s, t, eps_s):
    """DPM-Solver-1 (DDIM) from s to t: x_t = (alpha_t/alpha_s) x - sigma_t (e^h - 1) eps_s."""
    (alpha_s, _), (alpha_t, sigma_t), h = _step_coeffs(sde, s, t)
    return alpha_t / alpha_s * x - sigma_t * jnp.expm1(h) * eps_s


def _difference(sde, p_prev, p, m_prev, m, h):
    """r = (lambda_p - lambda_prev) / h and the divided difference D = (m - m_prev) / r."""
    r = (_lambda(sde, p) - _lambda(sde, p_prev)) / h
    return r, (m - m_prev) / r


def _taylor_terms(sde, times, ms, h):
    """D1 = h m'(lambda_0) + O(h^3) and D2 = h^2 m''(lambda_0) + O(h^3), the derivatives
    in lambda of the prediction m at p0 = times[2] from ms = (m2, m1, m0) at times[:3].

    With r0 h, r1 h the last two lambda gaps, D1_0 = (m0 - m1)/r0 = h m' - r0 h^2 m''/2 +
    O(h^3) and D1_1 = (m1 - m2)/r1 = h m' - (2 r0 + r1) h^2 m''/2 + O(h^3), so
    D1_0 - D1_1 = (r0 + r1) h^2 m''/2 + O(h^3): the second derivative is twice their
    divided difference. Lu et al.'s multistep code (and k-diffusion's, diffusers') omits
    that 2, which halves the h^3 phi_3 m'' term, a local error of O(h^3): their 3M is
    only second order. (Their singlestep 'taylor' update has the 2.)
    """
    r0, D1_0 = _difference(sde, times[1], times[2], ms[1], ms[2], h)
    r1, D1_1 = _difference(sde, times[0], times[1], ms[0], ms[1], h)
    D1 = D1_0 + r0 / (r0 + r1) * (D1_0 - D1_1)
    D2 = 2.0 * (D1_0 - D1_1) / (r0 + r1)
    return D1, D2


def dpmpp_multistep(sde, x, times, ms, order):
    """DPM-Solver++(kM), data prediction (Lu et al. 2022b, Algorithm 2; 3M after their code).

    times = (p2, p1, p0, t): the last three grid times and the target t; ms = (m2, m1, m0)
    the data predictions at p2, p1, p0. With phi_1 = e^{-h} - 1, phi_2 = phi_1/h + 1,
    phi_3 = phi_2/h - 1/2 and D1 ~ h m', D2 ~ h^2 m'' (`_taylor_terms`):
      2M: x_t = (sigma_t/sigma_0) x - alpha_t phi_1 m0 - alpha_t phi_1 D1_0 / 2,
      3M: x_t = (sigma_t/sigma_0) x - alpha_t (phi_1 m0 - phi_2 D1 + phi_3 D2),
    the exponential integrator of m's Taylor expansion in lambda to second order. 3M's D2
    is twice that of Lu et al.'s code, which makes it third order (theirs is second).
    """
    p0, t, m0 = times[2], times[3], ms[2]
    if order == 1:
        return ddim_data(sde, x, p0, t, m0)
    (_, sigma_0), (alpha_t, sigma_t), h = _step_coeffs(sde, p0, t)
    lin, phi_1 = sigma_t / sigma_0 * x, jnp.expm1(-h)
    if order == 2:
        _, D1_0 = _difference(sde, times[1], p0, ms[1], m0, h)
        return lin - alpha_t * phi_1 * m0 - 0.5 * alpha_t * phi_1 * D1_0
    D1, D2 = _taylor_terms(sde, times, ms, h)
    phi_2 = phi_1 / h + 1.0
    phi_3 = phi_2 / h - 0.5
    return lin - alpha_t * phi_1 * m0 + alpha_t * phi_2 * D1 - alpha_t * phi_3 * D2


def dpm_multistep(sde, x, times, ms, order):
    """Multistep DPM-Solver-k, noise prediction (Lu et al. 2022b, Appendix; their code,
    with 3M's D2 doubled as in `dpmpp_multistep`).

    As `dpmpp_multistep` with ms the noise predictions, phi_1 = e^h - 1, phi_2 = phi_1/h - 1
    and phi_3 = phi_2/h - 1/2:
      2M: x_t = (alpha_t/alpha_0) x - sigma_t phi_1 m0 - sigma_t phi_1 D1_0 / 2,
      3M: x_t = (alpha_t/alpha_0) x - sigma_t (phi_1 m0 + phi_2 D1 + phi_3 D2).
    """
    p0, t, m0 = times[2], times[3], ms[2]
    if order == 1:
        return ddim_noise(sde, x, p0, t, m0)
    (alpha_0, _), (alpha_t, sigma_t), h = _step_coeffs(sde, p0, t)
    lin, phi_1 = alpha_t / alpha_0 * x, jnp.expm1(h)
    if order == 2:
        _, D1_0 = _difference(sde, times[1], p0, ms[1], m0, h)
        return lin - sigma_t * phi_1 * m0 - 0.5 * sigma_t * phi_1 * D1_0
    D1, D2 = _taylor_terms(sde, times, ms, h)
    phi_2 = phi_1 / h - 1.0
    phi_3 = phi_2 / h - 0.5
    return lin - sigma_t * phi_1 * m0 - sigma_t * phi_2 * D1 - sigma_t * phi_3 * D2


def dpmpp_singlestep(sde, model, x, s, t, m_s, order):
    """DPM-Solver++(2S)/(3S), data prediction (Lu et al. 2022b, Algorithm 1; 3S as their code).

    Intermediate points at r = 1/2 (2S), or 1/3 and 2/3 (3S) of h in lambda; model(x, t)
    is the data prediction. With phi_1 = e^{-h} - 1 and u the DDIM step from s:
      2S: x_t = u(t) - alpha_t phi_1 (m_s1 - m_s),
      3S: x_t = u(t) + alpha_t phi_2 (m_s2 - m_s) / r2.
    """
    if order == 1:
        return ddim_data(sde, x, s, t, m_s)
    lam_s = _lambda(sde, s)
    h = _lambda(sde, t) - lam_s
    r1, r2 = (0.5, None) if order == 2 else (1.0 / 3.0, 2.0 / 3.0)
    s1 = _t_of_lambda(sde, lam_s + r1 * h)
    m_s1 = model(ddim_data(sde, x, s, s1, m_s), s1)
    alpha_t, _ = _coeffs(sde, t)
    phi_1 = jnp.expm1(-h)
    x_t1 = ddim_data(sde, x, s, t, m_s)
    if order == 2:
        return x_t1 - 0.5 / r1 * alpha_t * phi_1 * (m_s1 - m_s)
    s2 = _t_of_lambda(sde, lam_s + r2 * h)
    alpha_s2, _ = _coeffs(sde, s2)
    phi_22 = jnp.expm1(-r2 * h) / (r2 * h) + 1.0
    x_s2 = ddim_data(sde, x, s, s2, m_s) + r2 / r1 * alpha_s2 * phi_22 * (m_s1 - m_s)
    phi_2 = phi_1 / h + 1.0
    return x_t1 + alpha_t * phi_2 * (model(x_s2, s2) - m_s) / r2


def dpm_singlestep(sde, model, x, s, t, m_s, order):
    """DPM-Solver-2/3, noise prediction (Lu et al. 2022a, Algorithms 1 and 2, r1 = 1/2 or 1/3, r2 = 2/3).

    With phi_1 = e^h - 1 and u the DDIM step from s:
      DPM-Solver-2: x_t = u(t) - sigma_t phi_1 (m_s1 - m_s),
      DPM-Solver-3: x_t = u(t) - sigma_t phi_2 (m_s2 - m_s) / r2.
    """
    if order == 1:
        return ddim_noise(sde, x, s, t, m_s)
    lam_s = _lambda(sde, s)
    h = _lambda(sde, t) - lam_s
    r1, r2 = (0.5, None) if order == 2 else (1.0 / 3.0, 2.0 / 3.0)
    s1 = _t_of_lambda(sde, lam_s + r1 * h)
    m_s1 = model(ddim_noise(sde, x, s, s1, m_s), s1)
    _, sigma_t = _coeffs(sde, t)
    phi_1 = jnp.expm1(h)
    x_t1 = ddim_noise(sde, x, s, t, m_s)
    if order == 2:
        return x_t1 - 0.5 / r1 * sigma_t * phi_1 * (m_s1 - m_s)
    s2 = _t_of_lambda(sde, lam_s + r2 * h)
    _, sigma_s2 = _coeffs(sde, s2)
    phi_22 = jnp.expm1(r2 * h) / (r2 * h) - 1.0
    x_s2 = ddim_noise(sde, x, s, s2, m_s) - r2 / r1 * sigma_s2 * phi_22 * (m_s1 - m_s)
    phi_2 = phi_1 / h - 1.0
    return x_t1 - sigma_t * phi_2 * (model(x_s2, s2) - m_s) / r2


def dpm_solver_sample(
    key,
    sde: sde_lib.SDE,
    score_fn,
    shape,
    num_steps: int = 20,
    eps: float | None = None,
    order: int = 2,
    method: str = "multistep",
    spacing: str = "logSNR",
    plus: bool = True,
    lower_order_final: bool = True,
    timesteps=None,
    z=None,
    constraint=None,
):
    """DPM-Solver++ (`plus=True`, data prediction) or DPM-Solver (noise prediction).

    Args:
      num_steps: M steps on `time_grid(sde, M, eps, spacing)`.
      order: 1 (DDIM), 2 or 3.
      method: "multistep" (one evaluation per step; the first order - 1 steps warm up
        at lower order) or "singlestep" (`order` evaluations per step).
      lower_order_final: multistep only, as DPM-Solver's code: with fewer than 10 steps
        the last steps drop to lower order, which stabilises very few-step sampling.
      timesteps: `(M + 1,)` times from T down to eps instead of `spacing` (`sampling_grid`).
    z: latents at T instead of prior samples.
    constraint: see the module docstring; pinned after every step.
    Defaults are DPM-Solver++(2M) with 20 logSNR-uniform steps, as Lu et al. 2022b.
    Returns (x `(B, ...)` at eps, nfe).
    """
    _check(shape, num_steps)
    if order not in (1, 2, 3):
        raise ValueError(f"order must be 1, 2 or 3, got {order!r}.")
    if method not in ("multistep", "singlestep"):
        raise ValueError(f"method must be 'multistep' or 'singlestep', got {method!r}.")
    ts = sampling_grid(sde, num_steps, eps, spacing, timesteps)
    z = _initial(key, sde, shape, z)
    x = _dpm_loop(sde, as_score_model(score_fn), z, ts, order, method, plus, lower_order_final, constraint)
    return x, dpm_solver_nfe(num_steps, order, method)


def dpm_solver_nfe(num_steps: int, order: int = 1, method: str = "multistep", **_) -> int:
    """One evaluation per multistep step, `order` per singlestep step."""
    return num_steps * (order if method == "singlestep" else 1)


def _multistep_orders(num_steps, order, lower_order_final):
    """The order of each multistep step: warm-up, then `order`, then (optionally) a final descent."""
    orders = [min(order, i + 1) for i in range(num_steps)]
    if lower_order_final and num_steps < 10:
        orders = [min(o, num_steps - i) for i, o in enumerate(orders)]
    return orders


@functools.partial(
    jax.jit,
    static_argnames=("sde", "order", "method", "plus", "lower_order_final"),
)
def _dpm_loop(sde, score_fn, z, ts, order, method, plus, lower_order_final, constraint):
    predict = data_prediction if plus else noise_prediction
    if constraint is not None:
        score_fn = constraint.guide(sde, score_fn)
    pin = _pinner(constraint)

    def model(x, t):
        return predict(sde, score_fn, x, t)

    num_steps = ts.shape[0] - 1
    x = parallel.constrain_batch(z)
    if method == "singlestep":

        def step(x, i):
            update = dpmpp_singlestep if plus else dpm_singlestep
            x = update(sde, model, x, ts[i], ts[i + 1], model(x, ts[i]), order)
            return parallel.constrain_batch(pin(x, *_coeffs(sde, ts[i + 1]))), None

        return jax.lax.scan(step, x, jnp.arange(num_steps))[0]

    orders = jnp.asarray(_multistep_orders(num_steps, order, lower_order_final))
    update = dpmpp_multistep if plus else dpm_multistep
    updates = [functools.partial(update, sde, order=k) for k in (1, 2, 3)]

    def step(carry, i):
        x, times, ms = carry  # the last three grid times and their predictions, newest last
        t = ts[i + 1]
        x = jax.lax.switch(orders[i] - 1, updates, x, (*times, t), ms)
        x = parallel.constrain_batch(pin(x, *_coeffs(sde, t)))
        # The last step needs no prediction at eps: skip it, so nfe = num_steps.
        m = jax.lax.cond(i + 1 < num_steps, model, lambda x, t: jnp.zeros_like(x), x, t)
        return (x, (times[1], times[2], t), (ms[1], ms[2], m)), None

    zeros = jnp.zeros_like(x)
    carry = (x, (ts[0], ts[0], ts[0]), (zeros, zeros, model(x, ts[0])))
    return jax.lax.scan(step, carry, jnp.arange(num_steps))[0][0]


def ddim_sample(
    key, sde, score_fn, shape, num_steps: int = 50, eps: float | None = None, spacing="time_uniform", timesteps=None,
    z=None, constraint=None,
):
    """Deterministic DDIM (eta = 0): DPM-Solver-1 on time-uniform steps (Song, Meng & Ermon 2021)."""
    return dpm_solver_sample(
        key, sde, score_fn, shape, num_steps, eps, order=1, spacing=spacing, timesteps=timesteps, z=z,
        constraint=constraint,
    )
