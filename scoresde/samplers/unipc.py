"""UniPC (Zhao et al. 2023): a unified predictor-corrector for the probability-flow ODE.

Multistep, in the half-log-SNR lambda like DPM-Solver++ (see `fast`), with the data
prediction m = x_0(x, t) (`predict_x0=True`) or the noise prediction m = eps(x, t).
From p0 to t, with h = lambda_t - lambda_p0, hh = -h (data) or h (noise), the previous
points p_j, r_j = (lambda_pj - lambda_p0) / h, D_j = (m_pj - m0) / r_j and B(h) = hh
("bh1") or e^hh - 1 ("bh2"):

    UniP-k:  x_t = L x - c_t (e^hh - 1) m0 - c_t B(h) sum_{j<k} rho^p_j D_j,
    UniC-k:  x_t = L x - c_t (e^hh - 1) m0 - c_t B(h) (sum_{j<k} rho^c_j D_j + rho^c_k (m_t - m0)),

L = sigma_t/sigma_0, c_t = alpha_t (data) or L = alpha_t/alpha_0, c_t = sigma_t (noise).
The rhos solve sum_j rho_j r_j^(i-1) = b_i = hh phi_{i+1}(hh) i! / B(h), i = 1..k, with
r_k = 1 for UniC (UniP: the first k - 1 rows and points); as the authors' code,
rho^p = 1/2 for k = 2 and rho^c = 1/2 for k = 1. UniP-2 with bh2 is DPM-Solver++(2M).

m_t is the model at the predicted x_t; it is also the next step's m0, so the corrector
costs no evaluation. It is skipped on the last step (it would cost one): nfe = num_steps.
UniC adds one order of accuracy to the local error, see `unipc_sample` for the global one.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from scoresde import parallel, sde_lib
from scoresde.samplers.fast import (
    _check, _coeffs, _initial, _lambda, _multistep_orders, _pinner, _step_coeffs, data_prediction,
    noise_prediction, sampling_grid,
)
from scoresde.score import as_score_model

VARIANTS = ("bh1", "bh2")


def phis(z, n: int):
    """[phi_1(z), ..., phi_n(z)], phi_k(z) = sum_j z^j / (j + k)!. For |z| >= 1 by the
    recursion phi_{k+1} = (phi_k - 1/k!) / z from phi_1 = (e^z - 1) / z; for |z| < 1, where
    that recursion cancels (phi_4 loses ~1/|z|^3: in float32 it is off by 1e-4 at z = -0.1,
    2% at -0.04), phi_n by its series and the others by phi_k = z phi_{k+1} + 1/k!, which
    is stable there."""
    small = jnp.abs(z) < 1.0
    z_big = jnp.where(small, 1.0, z)
    forward = [jnp.expm1(z_big) / z_big]
    for k in range(1, n):
        forward.append((forward[-1] - 1.0 / math.factorial(k)) / z_big)
    backward = [jnp.zeros_like(z) + 1.0 / math.factorial(n + 16)]  # truncation < 1e-16 phi_n
    for j in range(15, -1, -1):
        backward[0] = backward[0] * z + 1.0 / math.factorial(j + n)
    for k in range(n - 1, 0, -1):
        backward.insert(0, z * backward[0] + 1.0 / math.factorial(k))
    return [jnp.where(small, b, f) for b, f in zip(backward, forward)]


def _solve(rks, b):
    """rho with sum_j rho_j r_j^i = b_i, i = 0..k-1 (a transposed Vandermonde system), in
    closed form: rho_j = sum_i [x^i] L_j(x) b_i, L_j the Lagrange polynomial of node r_j."""
    rhos = []
    for j, r in enumerate(rks):
        poly, den = [1.0], 1.0  # prod_{l != j} (x - r_l) by increasing powers, its value at r_j
        for other in rks[:j] + rks[j + 1:]:
            poly = [a - other * c for a, c in zip([0.0] + poly, poly + [0.0])]  # times (x - r_l)
            den = den * (r - other)
        rhos.append(sum(c * bi for c, bi in zip(poly, b)) / den)
    return rhos


def unipc_coefficients(sde, times, *, order, bh1=False, predict_x0=True):
    """The scalars of one UniPC step of order k from p0 = times[2] to t = times[3], with
    B(h) = hh where `bh1` (a bool, traced or not), else e^hh - 1.

    times = (p2, p1, p0, t), of which only the last k + 1 are used. Returns
    (L, e, w_p `(2,)`, w_c `(3,)`) with which, m = (m_p1, m_p2, m_t),
      UniP-k: x_t = L x - e m0 - sum_{j<2} w_p[j] (m_j - m0),
      UniC-k: x_t = L x - e m0 - sum_{j<3} w_c[j] (m_j - m0)
    (the module docstring with e = c_t (e^hh - 1) and w_j = c_t B(h) rho_j / r_j, w_c[2] =
    c_t B(h) rho^c_k; the weights of points a step of order k does not use are 0).
    """
    p0, t = times[2], times[3]
    (alpha_0, sigma_0), (alpha_t, sigma_t), h = _step_coeffs(sde, p0, t)
    hh = -h if predict_x0 else h
    lin, c_t = (sigma_t / sigma_0, alpha_t) if predict_x0 else (alpha_t / alpha_0, sigma_t)
    B_h = jnp.where(bh1, hh, jnp.expm1(hh))
    phi = phis(hh, order + 1)
    b = [hh * phi[i] * math.factorial(i) / B_h for i in range(1, order + 1)]
    rks = [(_lambda(sde, times[2 - j]) - _lambda(sde, p0)) / h for j in range(1, order)]  # p1, p2
    rho_p = [0.5] if order == 2 else (_solve(rks, b[:-1]) if order == 3 else [])
    rho_c = [0.5] if order == 1 else _solve(rks + [jnp.ones_like(h)], b)
    zero = jnp.zeros_like(h)
    w_p = [c_t * B_h * rho / r for rho, r in zip(rho_p, rks)] + [zero] * (3 - order)
    w_c = [c_t * B_h * rho / r for rho, r in zip(rho_c, rks)] + [zero] * (3 - order) + [c_t * B_h * rho_c[-1]]
    return lin, c_t * jnp.expm1(hh), jnp.stack(w_p), jnp.stack(w_c)


def unipc_update(coeffs, x, ms, m_t=None):
    """UniP-k (m_t None) or UniC-k with `coeffs = unipc_coefficients(...)`; ms = (m_p2, m_p1,
    m0), the predictions at the last three grid points, m_t the prediction at UniP-k's x_t."""
    lin, e, w_p, w_c = coeffs
    m0 = ms[2]
    w, m = (w_p, (ms[1], ms[0])) if m_t is None else (w_c, (ms[1], ms[0], m_t))
    return lin * x - e * m0 - sum(w[j] * (m[j] - m0) for j in range(len(m)))


def coefficient_table(sde, ts, orders, bh1=False, corrector=True, predict_x0=True):
    """`unipc_coefficients` of every step i, from ts[i] to ts[i + 1], of order orders[i]
    (an int array, traced or not), stacked `(M, ...)`. Without `corrector` (a bool, traced
    or not) w_c is w_p with w_c[2] = 0, so that UniC-k gives UniP-k's x_t exactly.

    Each order k <= min(3, M) is vectorized over all steps, step i computed as step
    max(i, k - 1), which has the k - 1 earlier points order k needs (the steps below
    k - 1 are never of order k: they warm up), and selected where orders == k."""
    num_steps = len(ts) - 1
    table = None
    for k in range(1, min(3, num_steps) + 1):
        idx = jnp.maximum(jnp.arange(num_steps), k - 1)
        times = tuple(ts[jnp.maximum(idx + d, 0)] for d in (-2, -1, 0, 1))
        part = jax.vmap(lambda *tm: unipc_coefficients(sde, tm, order=k, bh1=bh1, predict_x0=predict_x0))(*times)
        pick = lambda p, rest: jnp.where(jnp.reshape(orders == k, (-1,) + (1,) * (p.ndim - 1)), p, rest)  # noqa: E731
        table = part if table is None else jax.tree_util.tree_map(pick, part, table)
    lin, e, w_p, w_c = table
    return lin, e, w_p, jnp.where(corrector, w_c, jnp.pad(w_p, ((0, 0), (0, 1))))


def unipc_sample(
    key,
    sde: sde_lib.SDE,
    score_fn,
    shape,
    num_steps: int = 10,
    eps: float | None = None,
    order: int = 2,
    variant: str = "bh2",
    spacing: str = "logSNR",
    predict_x0: bool = True,
    lower_order_final: bool = True,
    corrector: bool = True,
    timesteps=None,
    z=None,
    constraint=None,
):
    """UniPC-k (Zhao et al. 2023): multistep UniP-k predictor, UniC-k corrector.

    Args:
      num_steps: M steps on `time_grid(sde, M, eps, spacing)`; one evaluation each.
      order: k = 1, 2 or 3; the first k - 1 steps warm up at lower order.
      variant: B(h) = h ("bh1") or e^h - 1 ("bh2"). Where every rho is solved for, B(h)
        cancels: the variants differ only through the fixed rho = 1/2 of UniP-2 and UniC-1
        (so UniPC-3 only in its warm-up and lowered final steps). The authors' CIFAR-10
        example uses order 3 and bh1; diffusers defaults to bh2.
      predict_x0: data prediction (True) or noise prediction (False).
      lower_order_final: with fewer than 10 steps the last steps drop to lower order,
        as `fast.dpm_solver_sample` (the authors' code always lowers them; the rule here
        keeps the asymptotic order for M >= 10).
      corrector: UniC after every step but the last (False: UniP alone).
      timesteps: `(M + 1,)` times from T down to eps instead of `spacing` (`fast.sampling_grid`).
    z: latents at T instead of prior samples.
    constraint: see `fast`; pinned after the predictor and after the corrector.
    Global order: UniC-k's local error is O(h^(k+2)), so UniPC-1 and UniPC-2 are of order
    2 and 3 (UniP-k alone: k); UniPC-3 only of order 3, as its first step is UniC-1, of
    local error O(h^3) (damped on the way to eps: measured slopes 2.8-3.8).
    order, variant and corrector are traced: changing them does not recompile.
    Returns (x `(B, ...)` at eps, nfe = num_steps).
    """
    _check(shape, num_steps)
    if order not in (1, 2, 3):
        raise ValueError(f"order must be 1, 2 or 3, got {order!r}.")
    if variant not in VARIANTS:
        raise ValueError(f"variant must be 'bh1' or 'bh2', got {variant!r}.")
    ts = sampling_grid(sde, num_steps, eps, spacing, timesteps)
    z = _initial(key, sde, shape, z)
    # order, variant and corrector only change the coefficient table: traced.
    flags = jnp.asarray(order), jnp.asarray(variant == "bh1"), jnp.asarray(bool(corrector))
    x = _unipc_loop(sde, as_score_model(score_fn), z, ts, *flags, bool(predict_x0), bool(lower_order_final), constraint)
    return x, unipc_nfe(num_steps)


def unipc_nfe(num_steps: int, **_) -> int:
    """One evaluation per step: the corrector reuses the next step's."""
    return num_steps


@functools.partial(
    jax.jit,
    static_argnames=("sde", "predict_x0", "lower_order_final"),
)
def _unipc_loop(sde, score_fn, z, ts, order, bh1, corrector, predict_x0, lower_order_final, constraint):
    predict = data_prediction if predict_x0 else noise_prediction
    if constraint is not None:
        score_fn = constraint.guide(sde, score_fn)
    pin = _pinner(constraint)
    num_steps = ts.shape[0] - 1
    orders = jnp.asarray([_multistep_orders(num_steps, k, lower_order_final) for k in (1, 2, 3)])[order - 1]
    table = coefficient_table(sde, ts, orders, bh1, corrector, predict_x0)

    def settle(x, t):
        return parallel.constrain_batch(pin(x, *_coeffs(sde, t)))

    def step(carry, row):  # every step but the last: predict, evaluate, correct
        (x, ms), (coeffs, t) = carry, row  # ms: the last three predictions, newest last
        x_t = settle(unipc_update(coeffs, x, ms), t)
        m_t = predict(sde, score_fn, x_t, t)
        x_t = settle(unipc_update(coeffs, x, ms, m_t), t)  # UniP's x_t again without the corrector
        return (x_t, (ms[1], ms[2], m_t)), None

    x = parallel.constrain_batch(z)
    zeros = jnp.zeros_like(x)
    rows = (jax.tree_util.tree_map(lambda c: c[:-1], table), ts[1:-1])
    x, ms = jax.lax.scan(step, (x, (zeros, zeros, predict(sde, score_fn, x, ts[0]))), rows)[0]
    # The last step: the predictor alone, no evaluation at eps.
    last = jax.tree_util.tree_map(lambda c: c[-1], table)
    return settle(unipc_update(last, x, ms), ts[-1])
