"""Log-likelihoods and bits/dim through the probability-flow ODE (Song et al. Appendix D.2).

With the probability-flow drift f~(x, t) = f(x, t) - 1/2 g(t)^2 score(x, t), the
instantaneous change of variables gives

    log p_eps(x(eps)) = log p_T(x(T)) + int_eps^T div_x f~(x(t), t) dt,

so one solve of the augmented ODE d/dt (x, delta) = (f~, div f~) from eps to T, on
device through `samplers.ode.solve_ode`, gives logp = prior_logp(x(T)) + delta(T).

The divergence is exact (the Jacobian's trace, D Jacobian-vector products) or the
Skilling--Hutchinson estimate E_v[v^T (d f~/dx) v], v Rademacher or Gaussian, with
the probes drawn once and held fixed for the whole solve.

Instead of that solve, a fixed-step exponential integrator in the half-log-SNR lambda = log(alpha/sigma)
(`method="dpm_solver_2m"` or `"dpm_solver_3m"`): with eps^(x, lambda) = -sigma score the
noise prediction, the flow is dx/dlambda = (d log alpha/dlambda) x - sigma eps^, whose
linear part DPM-Solver integrates exactly (`samplers.fast.dpm_multistep`, here from eps up
to T), and whose divergence splits the same way:

    logp = prior_logp(x(T)) + D log(alpha_T / alpha_eps) - int_{lambda_eps}^{lambda_T} sigma div eps^ dlambda.

The integral is a quadrature over the step points themselves (`quadrature_weights`: cubic
through the nearest four), where each evaluation of eps^ also gives div eps^.

Bits per dimension (the convention of Song et al. and of the likelihood tables in the
literature). Discrete data with K levels per dimension, stored as k/(K - 1) in [0, 1],
are uniformly dequantized, u = (k + U(0, 1)) / K, then mapped to the model's range
(u itself, or 2u - 1 when `centered`). With D dimensions,

    bpd = -logp(model input) / (D ln 2) + log2(K / w),

where w is the width of the model's data range: w = 1 for [0, 1] and w = 2 for
[-1, 1]. At K = 256 the offset is 8 for [0, 1] and 7 for [-1, 1], as in the
reference; the bundled digits have K = 17. The value is an upper bound on the
discrete data's negative log2-likelihood per dimension (in expectation over the
dequantization noise), and it is what is reported for CIFAR-10 (2.99 bpd for DDPM++ cont.).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from scoresde import parallel, sde_lib
from scoresde.samplers import fast, ode
from scoresde.samplers.registry import _number, check_numbers
from scoresde.score import as_score_model

DIVERGENCES = ("rademacher", "gaussian", "exact")
# Fixed-step exponential integrators in lambda (module docstring): name -> multistep order.
EXPONENTIAL_METHODS = {"dpm_solver_2m": 2, "dpm_solver_3m": 3}
# The settings of `scoresde likelihood` (`experiment.likelihood_report`) unless told otherwise. On
# the quick-start digits model they are 8x more accurate than dopri5 at rtol = atol = 1e-5 at test
# digits and about as accurate at its samples, for 2.5x fewer evaluations
# (experiments/results/likelihood_default_check.md). `log_likelihood` itself keeps the
# error-controlled adaptive solve as its default.
REPORT_METHOD, REPORT_STEPS = "dpm_solver_3m", 256
_GAUSS_LEGENDRE_3 = np.polynomial.legendre.leggauss(3)


def _flat(x):
    return jnp.reshape(x, (x.shape[0], -1))


def drift_and_divergence(fn, x, probes=None):
    """fn(x) `(B, ...)` and its divergence `(B,)`, from one linearization of fn at x.

    With `probes` `(P, B, ...)`: the Skilling--Hutchinson estimate, the mean over probes of
    v^T (d fn/dx) v. Without: the exact trace of the per-example Jacobian, by D JVPs
    (`fn` must act on each example independently, as a score network in eval mode does).
    """
    fx, jvp = jax.linearize(fn, x)
    if probes is not None:  # the probes' JVPs batched through one linearization
        return fx, jnp.mean(jnp.sum(jnp.reshape(jax.vmap(jvp)(probes) * probes, (*probes.shape[:2], -1)), axis=2), axis=0)
    dim = math.prod(x.shape[1:])

    def diagonal_entry(i):
        basis = jnp.zeros((dim,), x.dtype).at[i].set(1.0)
        return _flat(jvp(jnp.broadcast_to(jnp.reshape(basis, x.shape[1:]), x.shape)))[:, i]

    return fx, jnp.sum(jax.lax.map(diagonal_entry, jnp.arange(dim)), axis=0)


def quadrature_weights(nodes) -> np.ndarray:
    """w `(M + 1,)` with sum_i w_i g(nodes_i) = int_{nodes_0}^{nodes_M} g (signed: negative for
    decreasing nodes), for monotone nodes `(M + 1,)`: on each interval, the integral of the
    polynomial through the (up to) four nearest nodes, by 3-point Gauss-Legendre (exact for
    cubics). Fourth order in the spacing."""
    nodes = np.asarray(nodes, np.float64)
    num = nodes.shape[0]
    weights = np.zeros(num)
    points, gauss_weights = _GAUSS_LEGENDRE_3
    for i in range(num - 1):
        a, b = nodes[i], nodes[i + 1]
        first = min(max(i - 1, 0), max(num - 4, 0))
        near = range(first, min(first + 4, num))
        u, du = (a + b) / 2 + (b - a) / 2 * points, (b - a) / 2 * gauss_weights
        for j in near:
            basis = np.prod([(u - nodes[k]) / (nodes[j] - nodes[k]) for k in near if k != j], axis=0)
            weights[j] += np.sum(du * basis)
    return weights


def _probes(key, divergence, num_probes, shape, dtype):
    shape = (num_probes, *shape)
    if divergence == "rademacher":
        return jax.random.rademacher(key, shape, dtype)
    return jax.random.normal(key, shape, dtype)


def log_likelihood(
    key,
    sde: sde_lib.SDE,
    score_fn,
    x,
    divergence: str = "rademacher",
    num_probes: int = 1,
    method: str = "dopri5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    eps: float = 1e-5,
    num_steps: int | None = None,
    max_steps: int = 16384,
    time_variable: str = "sigma",
    error_norm: str = "max",
):
    """log p_eps(x) in nats, by the augmented probability-flow ODE from eps to T.

    Args:
      x: data `(B, ...)` in the model's range (see `bits_per_dim` for dequantization).
      divergence: "rademacher" or "gaussian" (Hutchinson, `num_probes` probes averaged)
        or "exact" (D Jacobian-vector products per evaluation; small D only).
      time_variable: the variable the ODE is solved in, a name in `ode.TIME_VARIABLES`
        ("t"; "sigma" or "log_snr" with the state scaled by 1/s(t), see
        `ode.FlowCoordinates`). The same ODE, so the same logp up to the solver's error.
        The default, dopri5 in sigma, was the most accurate per evaluation on a trained
        digits U-Net (experiments/results/bench_likelihood_digits.md).
      error_norm: "max" binds every example's delta log p (see `ode.ERROR_NORMS`);
        "rms" is the reference's (scipy's) norm over the whole flattened state.
      method: an `ode.METHODS` name, or "dpm_solver_2m" / "dpm_solver_3m": `num_steps`
        exponential multistep steps uniform in lambda (module docstring), num_steps + 1
        evaluations; time_variable, error_norm, rtol and atol do not apply to them.
    Returns:
      (logp `(B,)`, z `(B, ...)` the latent at T, nfe the number of ODE right-hand-side
      evaluations; each costs one score evaluation plus its JVPs).
    """
    if divergence not in DIVERGENCES:
        raise ValueError(f"Unknown divergence {divergence!r}; valid names: {', '.join(DIVERGENCES)}.")
    if not (isinstance(num_probes, int) and num_probes >= 1):
        raise ValueError(f"num_probes must be an integer >= 1, got {num_probes!r}.")
    if time_variable not in ode.TIME_VARIABLES:
        raise ValueError(f"Unknown time variable {time_variable!r}; valid names: {', '.join(ode.TIME_VARIABLES)}.")
    if error_norm not in ode.ERROR_NORMS:
        raise ValueError(f"Unknown error norm {error_norm!r}; valid names: {', '.join(ode.ERROR_NORMS)}.")
    if method in EXPONENTIAL_METHODS:
        if not (_number(num_steps, integer=True) and num_steps >= 1):
            raise ValueError(f"The fixed-step method {method!r} needs num_steps, an integer >= 1; got {num_steps!r}.")
    else:
        try:
            ode.check_method(method, num_steps)
        except ValueError as err:
            raise ValueError(f"{err} Or an exponential integrator: {', '.join(EXPONENTIAL_METHODS)}.") from None
    check_numbers("log_likelihood's", rtol=rtol, atol=atol, max_steps=max_steps, eps=eps)
    if not 0.0 < eps < sde.T:
        raise ValueError(f"eps must lie in (0, T={sde.T}), got {eps}.")
    parallel.check_divisible(x.shape[0])
    x = parallel.shard_batch(x)
    if method in EXPONENTIAL_METHODS:
        ts = fast.time_grid(sde, num_steps, eps, "logSNR")[::-1]  # eps up to T
        lambdas = np.asarray(jax.vmap(functools.partial(fast._lambda, sde))(ts), np.float64)
        weights = jnp.asarray(quadrature_weights(lambdas), x.dtype)
        logp, z = _exponential_log_likelihood(
            key, sde, as_score_model(score_fn), x, ts.astype(x.dtype), weights, divergence, num_probes,
            EXPONENTIAL_METHODS[method],
        )
        return logp, z, num_steps + 1
    logp, z, nfe, ok = _log_likelihood(
        key, sde, as_score_model(score_fn), x, divergence, num_probes, method, rtol, atol, eps, num_steps, max_steps,
        time_variable, error_norm,
    )
    ode.raise_if_failed(ok, nfe, method, max_steps)
    return logp, z, int(nfe)


@functools.partial(
    jax.jit,
    static_argnames=("sde", "divergence", "num_probes", "method", "num_steps", "max_steps", "time_variable", "error_norm"),
)
def _log_likelihood(
    key, sde, score_fn, x, divergence, num_probes, method, rtol, atol, eps, num_steps, max_steps, time_variable, error_norm
):
    flow = ode.flow_coordinates(sde, score_fn, time_variable)
    probes = None if divergence == "exact" else _probes(key, divergence, num_probes, x.shape, x.dtype)

    def augmented(u, state):
        return drift_and_divergence(functools.partial(flow.field, u), state[0], probes)

    eps, T = jnp.asarray(eps, x.dtype), jnp.asarray(sde.T, x.dtype)
    state0 = (flow.to_y(x, eps), jnp.zeros(x.shape[:1], x.dtype))
    (y, delta), nfe, ok = ode.solve_ode(
        augmented, state0, flow.u_of_t(eps), flow.u_of_t(T), method, rtol, atol, num_steps, max_steps, error_norm
    )
    z = flow.to_x(y, T)
    dim = math.prod(x.shape[1:])
    return sde.prior_logp(z) + delta - dim * flow.log_det(eps, T), z, nfe, ok


@functools.partial(jax.jit, static_argnames=("sde", "divergence", "num_probes", "order"))
def _exponential_log_likelihood(key, sde, score_fn, x, ts, weights, divergence, num_probes, order):
    """logp `(B,)` and z by DPM-Solver-`order`M on the grid ts `(M + 1,)` from eps up to T
    and the quadrature `weights` of the lambda integral (module docstring)."""
    probes = None if divergence == "exact" else _probes(key, divergence, num_probes, x.shape, x.dtype)

    def evaluate(x, t):  # eps^(x, t) `(B, ...)` and its divergence `(B,)`
        return drift_and_divergence(lambda y: fast.noise_prediction(sde, score_fn, y, t), x, probes)

    num_steps = ts.shape[0] - 1
    orders = jnp.asarray([min(order, i + 1) for i in range(num_steps)])
    updates = [functools.partial(fast.dpm_multistep, sde, order=k) for k in (1, 2, 3)]

    def step(carry, i):
        x, times, ms = carry  # the last three grid times and their predictions, newest last
        m, div = evaluate(x, ts[i])
        times, ms = (times[1], times[2], ts[i]), (ms[1], ms[2], m)
        return (jax.lax.switch(orders[i] - 1, updates, x, (*times, ts[i + 1]), ms), times, ms), div

    zeros = jnp.zeros_like(x)
    (z, _, _), divs = jax.lax.scan(step, (x, (ts[0],) * 3, (zeros,) * 3), jnp.arange(num_steps))
    divs = jnp.concatenate([divs, evaluate(z, ts[-1])[1][None]])  # (M + 1, B)
    alphas, sigmas = sde.marginal_coeffs(ts)
    integral = jnp.sum((weights * sigmas)[:, None] * divs, axis=0)
    dim = math.prod(x.shape[1:])
    return sde.prior_logp(z) + dim * (jnp.log(alphas[-1]) - jnp.log(alphas[0])) - integral, z


def dequantize(key, x, num_bins: int = 256, centered: bool = False):
    """Uniform dequantization of discrete data x = k/(K - 1) in [0, 1], `(B, ...)`.

    Returns u = (k + U(0, 1)) / K in [0, 1], mapped to [-1, 1] if `centered`.
    """
    levels = jnp.round(x * (num_bins - 1))
    u = (levels + jax.random.uniform(key, x.shape, x.dtype)) / num_bins
    return 2.0 * u - 1.0 if centered else u


def bpd_offset(num_bins: int = 256, centered: bool = False) -> float:
    """log2(K / w): 8 for K = 256 on [0, 1], 7 on [-1, 1]."""
    return math.log2(num_bins / (2.0 if centered else 1.0))


def bits_per_dim(key, sde, score_fn, x, num_bins: int = 256, centered: bool = False, **likelihood_kwargs):
    """Bits/dim of discrete data x = k/(K - 1) in [0, 1] `(B, ...)`, one dequantization draw.

    bpd = -logp(u) / (D ln 2) + log2(K / w), see the module docstring. Returns
    (bpd `(B,)`, nfe). Extra arguments go to `log_likelihood`.
    """
    x = jnp.asarray(x)
    if float(jnp.min(x)) < 0.0 or float(jnp.max(x)) > 1.0:
        raise ValueError("bits_per_dim takes discrete data scaled to [0, 1] (k / (num_bins - 1)); got values outside.")
    deq_key, ll_key = jax.random.split(key)
    u = dequantize(deq_key, x, num_bins, centered)
    logp, _, nfe = log_likelihood(ll_key, sde, score_fn, u, **likelihood_kwargs)
    dim = math.prod(x.shape[1:])
    return -logp / (dim * math.log(2.0)) + bpd_offset(num_bins, centered), nfe


def evaluate_bpd(
    key,
    sde,
    score_fn,
    data,
    batch_size: int,
    num_bins: int = 256,
    centered: bool = False,
    num_passes: int = 5,
    progress: bool = True,
    **likelihood_kwargs,
):
    """Bits/dim of a whole split `(N, ...)` (values k/(K - 1) in [0, 1]), in chunks.

    Repeats the evaluation over `num_passes` independent dequantizations (the reference
    used 5). The last chunk is padded to the batch size and the padding dropped.
    Returns a report: per-pass mean bpd, the mean over passes with its standard error
    (across examples, of each example's mean over passes), and the mean NFE per batch.
    """
    data = np.asarray(data)
    n = data.shape[0]
    per_pass, values, nfes = [], [], []
    total = num_passes * math.ceil(n / batch_size)
    with tqdm(total=total, desc="bits/dim", disable=not progress) as bar:
        for p in range(num_passes):
            pass_values = []
            for start in range(0, n, batch_size):
                chunk = data[start : start + batch_size]
                pad = batch_size - chunk.shape[0]
                if pad:
                    chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, 0)])
                bpd, nfe = bits_per_dim(
                    jax.random.fold_in(jax.random.fold_in(key, p), start),
                    sde,
                    score_fn,
                    chunk,
                    num_bins,
                    centered,
                    **likelihood_kwargs,
                )
                pass_values.append(np.asarray(bpd)[: batch_size - pad])
                nfes.append(nfe)
                bar.update()
                bar.set_postfix(bpd=f"{np.mean(np.concatenate(pass_values)):.4f}", nfe=nfe)
            pass_values = np.concatenate(pass_values)
            per_pass.append(float(pass_values.mean()))
            values.append(pass_values)
    per_example = np.mean(values, axis=0)  # averaged over the passes' dequantizations
    return {
        "bpd": float(per_example.mean()),
        "bpd_stderr": float(per_example.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan"),
        "bpd_per_pass": per_pass,
        "num_examples": n,
        "num_passes": num_passes,
        "num_bins": num_bins,
        "centered": centered,
        "mean_nfe_per_batch": float(np.mean(nfes)),
    }
