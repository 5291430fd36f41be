"""UniPC (scoresde.samplers.unipc): local and global orders, the corrector's gain, samples
of an exact mixture, and the registry entry.

1. Local orders, with one small compilation: one step from the exact solution of the
   probability-flow ODE of a Gaussian (closed form), with the exact predictions as
   history. UniP-k's local error is O(h^(k+1)), UniC-k's O(h^(k+2)) (Zhao et al. 2023,
   Thm 3.1: the corrector adds one order); halving h divides them by 2^(k+1), 2^(k+2).
   UniP-1 is DDIM, UniP-2 with bh2 is DPM-Solver++(2M) and UniP-3 is DPM-Solver++(3M)
   (either variant: its rhos are solved for, so B(h) cancels), to rounding.
2. Global orders against test_fast_samplers' dopri8 reference (float64), as there: the
   error at N = 100 and 400 gives p within 0.2. Measured (VP, RMS
   over 32 paths, local slopes N = 25 .. 800):
     UniPC-1            1.82 1.89 1.95 1.97 1.99 -> 2
     UniPC-2 (bh2)      2.20 2.90 3.08 3.07 3.05 -> 3
     UniPC-2 (bh1)      2.38 3.02 3.16 3.12 3.07 -> 3
     UniP-2 alone       1.86 1.88 1.95 1.98 1.99 -> 2 (= DPM-Solver++(2M))
     UniPC-3 (either)   3.88 4.90 2.78 3.55 3.82
     UniP-3 alone       2.75 3.19 3.27 3.19 3.11
   (VE the same to 0.1.) UniP-3 alone is DPM-Solver++(3M) (see 1), third order; the 3M of
   Lu et al.'s code, which weights its D2 term by half, falls to 2 (2.55 2.30 2.11 at
   N = 50 .. 400; `fast._taylor_terms`). UniPC-k is of order k + 1 for k = 1, 2.
   UniPC-3's steps are of local order 5, but its first (warm-up) step is UniC-1, of
   local order 3, so it is globally of order 3 only; that step is at high noise, where
   errors are damped on the way to eps, so its h^3 term is small and the slopes wander
   between 3 and 4 over this range; it is checked to be at least 3, and far more
   accurate than UniPC-2.
3. The corrector improves the same predictor at equal NFE, at 10 steps too.
4. Samples at 15 NFE against the exact target, within what the sample size explains
   (test_samplers' checks).
5. Registry: cost, defaults, one-line errors.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scoresde.samplers import fast, imputation, registry, unipc

from conftest import SDES, target_score
from test_fast_samplers import KEY, ORDER_TOL, _reference, _rms
from test_samplers import check_samples

# ---------------------------------------------------------------------------------------
# 1. Local orders on a Gaussian, whose ODE flow is exact: data N(mu, diag(s^2)), marginal
# N(alpha mu, diag(v)), v = alpha^2 s^2 + sigma^2, flow x_t = alpha_t mu + sqrt(v_t/v_s)(x_s - alpha_s mu).

MU, S2 = np.asarray([0.7, -1.3, 2.0]), np.asarray([0.05, 0.4, 2.5])  # float64 under x64
LOCAL_SDE = SDES["vp"]
LAMBDA_0 = 0.5  # mid-range: alpha ~ 0.73


def _gaussian(lam, x_ref=None, lam_ref=None):
    """t(lam), and the exact x on the trajectory through x_ref at lam_ref (x at lam_ref if None)."""
    t = fast._t_of_lambda(LOCAL_SDE, jnp.asarray(lam))
    alpha, sigma = fast._coeffs(LOCAL_SDE, t)
    if x_ref is None:
        return t, jnp.asarray([[0.3, 1.1, -2.2]])
    t_ref = fast._t_of_lambda(LOCAL_SDE, jnp.asarray(lam_ref))
    alpha_r, sigma_r = fast._coeffs(LOCAL_SDE, t_ref)
    v, v_r = alpha**2 * S2 + sigma**2, alpha_r**2 * S2 + sigma_r**2
    return t, alpha * MU + jnp.sqrt(v / v_r) * (x_ref - alpha_r * MU)


def _model(x, t, predict_x0):
    alpha, sigma = fast._coeffs(LOCAL_SDE, t)
    x0 = MU + alpha * S2 / (alpha**2 * S2 + sigma**2) * (x - alpha * MU)
    return x0 if predict_x0 else (x - alpha * x0) / sigma


@jax.jit
def _local_errors(hs):
    """max |x_t - exact| after one step of size h from lambda_0 with exact history, for each
    h in hs, `(order 1..3, data/noise prediction, bh2/bh1, UniP/UniC, len(hs))`."""

    def one_step(h, order, predict_x0, bh1):
        lams = [LAMBDA_0 - 2 * h, LAMBDA_0 - h, LAMBDA_0, LAMBDA_0 + h]
        _, x_ref = _gaussian(LAMBDA_0)
        path = [_gaussian(lam, x_ref, LAMBDA_0) for lam in lams]
        times = tuple(t for t, _ in path)
        ms = tuple(_model(x, t, predict_x0) for t, x in path[:3])
        coeffs = unipc.unipc_coefficients(LOCAL_SDE, times, order=order, bh1=bh1, predict_x0=predict_x0)
        x_p = unipc.unipc_update(coeffs, path[2][1], ms)
        x_c = unipc.unipc_update(coeffs, path[2][1], ms, _model(x_p, times[3], predict_x0))
        return jnp.stack([jnp.max(jnp.abs(x_p - path[3][1])), jnp.max(jnp.abs(x_c - path[3][1]))])

    return jnp.stack([
        jnp.stack([
            jax.vmap(lambda bh1: jax.vmap(lambda h: one_step(h, order, predict_x0, bh1), out_axes=1)(hs))(
                jnp.asarray([False, True]))
            for predict_x0 in (True, False)
        ])
        for order in (1, 2, 3)
    ])


LOCAL_H = (0.2, 0.1, 0.05)


def test_local_orders(x64):
    errors = np.asarray(_local_errors(jnp.asarray(LOCAL_H)))
    for (order, prediction, variant, corrector), e in zip(
        np.ndindex(errors.shape[:-1]), errors.reshape(-1, len(LOCAL_H))
    ):
        expected = order + 2 + corrector  # local error O(h^expected) for order + 1
        slopes = np.log2(e[:-1] / e[1:])
        case = f"order {order + 1} {('data', 'noise')[prediction]} {('bh2', 'bh1')[variant]} corrector={corrector}"
        print(f"{case}: {e} slopes {slopes}")
        assert np.all(e > 1e-13), (case, e)  # far above rounding: the slopes mean something
        assert np.all(np.abs(slopes - expected) < 0.3), (case, e, slopes)


def test_predictor_is_ddim_and_dpm_solver_multistep(x64):
    """UniP-1 is DDIM; UniP-2 with B(h) = e^h - 1 is DPM-Solver++(2M) and UniP-3 is
    DPM-Solver++(3M) (and DPM-Solver-2M, -3M in noise prediction), with non-uniform step
    ratios. Both are exact for m quadratic in lambda: the same coefficients (with Lu et
    al.'s D2, half the second derivative, 3M differs from UniP-3 by 0.05-0.07 here)."""
    times = tuple(jnp.asarray(t) for t in (0.9, 0.6, 0.45, 0.2))
    ms = tuple(jnp.asarray([[1.0 + i, -0.5 * i]]) for i in range(3))
    x = jnp.asarray([[0.3, 0.8]])

    @jax.jit
    def both():
        pairs = []
        for predict_x0, ref in ((True, fast.dpmpp_multistep), (False, fast.dpm_multistep)):
            for order in (1, 2, 3):
                coeffs = unipc.unipc_coefficients(LOCAL_SDE, times, order=order, bh1=False, predict_x0=predict_x0)
                pairs.append((unipc.unipc_update(coeffs, x, ms), ref(LOCAL_SDE, x, times, ms, order)))
        return pairs

    for ours, theirs in both():
        np.testing.assert_allclose(ours, theirs, rtol=1e-13, atol=1e-13)


def test_phis_are_accurate_near_zero(x64):
    """phi_k(z) = sum_j z^j/(j + k)! on both sides of |z| = 1 (series / recursion)."""
    import math

    z = np.asarray([-3.0, -1.0, -0.999, -0.2, -1e-4, 0.0, 1e-3, 0.6, 1.5])
    exact = [np.asarray([sum(v**j / math.factorial(j + k) for j in range(40)) for v in z]) for k in (1, 2, 3, 4)]
    for dtype, tol in ((jnp.float64, 1e-13), (jnp.float32, 1e-6)):
        for got, want in zip(jax.jit(unipc.phis, static_argnums=1)(jnp.asarray(z, dtype), 4), exact):
            np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=tol)


# ---------------------------------------------------------------------------------------
# 2-3. Global orders and the corrector's gain (float64). order, variant and corrector are
# traced, so every case shares one compilation per num_steps.

STEPS = (100, 400)  # 4x apart, in the asymptotic range of every case (see the slopes above)


def _errors(sde_name, steps, **options):
    sde, score_fn = SDES[sde_name], target_score(2, sde_name)
    z, ref, ref_error = _reference(sde_name)
    errors = []
    for n in steps:
        x, nfe = unipc.unipc_sample(KEY, sde, score_fn, z.shape, num_steps=n, z=z, **options)
        assert x.dtype == jnp.float64 and nfe == n
        errors.append(_rms(x - ref))
    errors = np.asarray(errors)
    assert np.all(np.isfinite(errors)) and ref_error < 1e-3 * errors.min(), (ref_error, errors)
    return errors


def _slopes(steps, errors):
    log_n, log_e = np.log(np.asarray(steps, float)), np.log(errors)
    return -np.diff(log_e) / np.diff(log_n), -np.polyfit(log_n, log_e, 1)[0]


ORDER_CASES = [  # (options, global order)
    (dict(order=1), 2),
    (dict(order=2, variant="bh2"), 3),
    (dict(order=2, variant="bh1"), 3),
    (dict(order=2, corrector=False), 2),
]


@pytest.mark.parametrize("options, order", ORDER_CASES, ids=["unipc1", "unipc2-bh2", "unipc2-bh1", "unip2-alone"])
def test_order_of_convergence(options, order, x64):
    errors = _errors("vp", STEPS, **options)
    local, fit = _slopes(STEPS, errors)
    print(f"{options}: N={STEPS} rms={errors} local slopes={np.round(local, 3)} fit={fit:.3f}")
    assert abs(fit - order) < ORDER_TOL, (fit, local)
    assert np.all(np.abs(local - order) < ORDER_TOL), local


def test_unipc3_is_at_least_third_order_and_beats_unipc2(x64):
    errors = _errors("vp", STEPS, order=3)
    local, fit = _slopes(STEPS, errors)
    print(f"UniPC-3: N={STEPS} rms={errors} local slopes={np.round(local, 3)} fit={fit:.3f}")
    assert fit > 3 - ORDER_TOL, (fit, local)
    # UniPC-2: 3.3e-4, 4.6e-6; UniPC-3: 2.5e-5, 3.1e-7.
    assert np.all(errors < 0.2 * _errors("vp", STEPS, order=2)), errors


@pytest.mark.parametrize("variant", ["bh2", "bh1"])
def test_corrector_improves_the_same_predictor(variant, x64):
    """At equal NFE, UniC-2 after UniP-2 is closer to the exact ODE solution than UniP-2
    alone: at 10 steps (measured 0.087 vs 0.147 for bh2, 0.24 vs 0.55 for bh1) and, by the
    orders above, ever more so as N grows (at 100 steps, 3.3e-4 vs 1.2e-3)."""
    for steps in ((10,), STEPS[:1]):
        with_c = _errors("vp", steps, order=2, variant=variant)[0]
        without = _errors("vp", steps, order=2, variant=variant, corrector=False)[0]
        print(f"{variant} N={steps[0]}: UniPC {with_c:.4g}, UniP alone {without:.4g}")
        assert with_c < 0.8 * without, (steps, with_c, without)


# ---------------------------------------------------------------------------------------
# 4. Samples at 15 NFE (float32) against the exact target, with test_samplers' checks
# (per-mode weights, means, covariances and a sliced W2, each within what n explains).
# Measured over 12 keys, as the largest ratio statistic / bound of each run: 16-D, n = 1000:
# 0.98 at 12 NFE, 0.88 at 15 (median 0.74), no failure. 2-D, n = 4000 sees the
# discretization bias: every key fails at 10 NFE, 5 of 12 at 15 and 1 of 12 at 20
# (DPM-Solver++(2M): 3 of 12 at 20, and 4 of 4 at 15).


def test_samples_match_target():
    # The score evaluations are counted by test_fast_samplers' registry test (a counting
    # score would cost a compilation of its own here).
    dim, n, nfe = 16, 1000, 15
    score = target_score(dim, "vp")
    x, used = registry.sample(jax.random.PRNGKey(5), SDES["vp"], score, (n, dim), "unipc", num_steps=nfe)
    assert used == nfe and x.shape == (n, dim) and x.dtype == jnp.float32
    check_samples(dim, x)


# ---------------------------------------------------------------------------------------
# 5. The registry.


def test_registry_entry():
    entry = registry.get_sampler("unipc")
    assert entry.nfe(10) == 10 and entry.nfe(7, order=3, corrector=False) == 7
    assert entry.steps_for_nfe(10) == 10
    options = registry.sampler_options("unipc")
    assert (options["order"], options["variant"], options["spacing"]) == (2, "bh2", "logSNR")
    assert options["corrector"] is True
    assert options["predict_x0"] is True and options["lower_order_final"] is True and options["num_steps"] == 10


@pytest.mark.parametrize(
    "options, message",
    [
        ({"order": 4}, "order must be 1, 2 or 3"),
        ({"order": True}, "order must be 1, 2 or 3"),
        ({"variant": "bh3"}, "variant must be 'bh1' or 'bh2'"),
        ({"variant": None}, "variant must be 'bh1' or 'bh2'"),
        ({"num_steps": 0}, "num_steps must be an integer >= 1"),
        ({"eps": 0.0}, "eps must be a finite number > 0"),
        ({"churn": 1.0}, "has no option"),
    ],
)
def test_bad_options_raise_one_line(options, message):
    sde, score, data = SDES["vp"], target_score(2, "vp"), jnp.zeros((4, 2))
    with pytest.raises(ValueError, match=message) as err:
        registry.sample(KEY, sde, score, (4, 2), "unipc", **options)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match=message):
        imputation.inpaint(KEY, sde, score, data, jnp.ones_like(data), "unipc", **options)


def test_direct_call_checks_its_options():
    sde, score = SDES["vp"], target_score(2, "vp")
    for options, message in (({"variant": "B2"}, "variant"), ({"order": 0}, "order"), ({"spacing": "x"}, "spacing")):
        with pytest.raises(ValueError, match=message):
            unipc.unipc_sample(KEY, sde, score, (4, 2), **options)
