"""Verification of the probability-flow likelihood and bits/dim against exact densities.

Gaussian-mixture targets have exact scores and exact perturbed densities log p_t under
every SDE, so the ODE likelihood can be compared with the truth. All solves run in
float64 (the `x64` fixture), so that the comparison sees the ODE solver's error and not
float32 rounding. Each (sde, score_fn, shape, divergence, num_probes) compiles once; the
score functions are cached per (target, sde) for that reason, and rtol/atol/eps/keys are
traced arguments, so varying them reuses the compiled solve.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special, stats

from scoresde import analytic, likelihood, sde_lib
from scoresde.likelihood import bits_per_dim, bpd_offset, dequantize, evaluate_bpd, log_likelihood
from scoresde.samplers import ode_encode

from conftest import SDES, target, target_score

EPS = 1e-5  # log_likelihood's default starting time (Song et al.'s likelihood eps)
TOL = dict(rtol=1e-5, atol=1e-5)
BATCH = 32


def data(dim: int):
    return target(dim).sample(jax.random.key(100 + dim), BATCH).astype(jnp.float64)


@functools.cache
def exact_logp(dim: int, sde_name: str):
    """Cached (logp, z) of the exact-divergence solve at TOL, in float64."""
    with jax.enable_x64(True):
        logp, z, _ = log_likelihood(
            jax.random.key(0), SDES[sde_name], target_score(dim, sde_name), data(dim), divergence="exact", eps=EPS, **TOL
        )
        return np.asarray(logp), z


def prior_mismatch(g, sde, z):
    """log N(z; prior) - log p_T(z): the prior N(0, I) (or N(0, sigma_max^2 I)) is not the exact
    p_T, whose means are s(T) mu_k (not 0) and covariances s(T)^2 Sigma_k + sigma(T)^2 I."""
    return np.asarray(sde.prior_logp(z)) - np.asarray(g.log_prob_t(z, jnp.full(z.shape[:1], sde.T, z.dtype), sde))


# ---------------------------------------------------------------------------------------
# Exact divergence against the analytic density.

EXACT_CASES = [(d, s) for d in (2, 8, 16) for s in ("vp", "subvp", "ve")] + [(8, "cosine")]


@pytest.mark.parametrize("dim,sde_name", EXACT_CASES, ids=lambda v: str(v))
def test_exact_divergence_logp_matches_analytic_density(x64, dim, sde_name):
    """logp agrees with the analytic log p_eps(x) to 1e-3 nats per example.

    The library integrates from the prior, logp = prior_logp(z) + delta. The prior is not
    the exact p_T (see prior_mismatch), so the exact comparison replaces sde.prior_logp(z)
    by the exact g.log_prob_t(z, T): that removes the modelling error of the prior and
    leaves only the ODE solver's, which at rtol = atol = 1e-5 measured up to 8.7e-4 nats
    (VE, 16-D, 64 examples), hence the 1e-3 bound.
    """
    g, sde = target(dim), SDES[sde_name]
    x = data(dim)
    logp, z = exact_logp(dim, sde_name)
    assert z.shape == x.shape and z.dtype == jnp.float64
    exact = np.asarray(g.log_prob_t(x, jnp.full((BATCH,), EPS), sde))
    mismatch = prior_mismatch(g, sde, z)
    corrected = logp - mismatch
    np.testing.assert_array_less(np.abs(corrected - exact), 1e-3)
    # Uncorrected, logp is off from the truth by the prior mismatch (up to the solver
    # error); the mismatch is small but far above the solver's error (measured 0.03-0.14
    # nats: s(T) mu ~ 0.03 for VP-type SDEs; data spread ~4 against sigma_max = 50 for VE).
    np.testing.assert_array_less(np.abs(logp - exact), np.abs(mismatch) + 1e-3)
    assert np.max(np.abs(mismatch)) < 0.5
    assert np.max(np.abs(logp - exact)) > 1e-2  # the correction above is not vacuous


# The time variables and norms, each on several kinds of path: the same accuracy bound.
OPTION_CASES = [
    ("vp", "t", "max", "tsit5"), ("subvp", "log_snr", "max", "tsit5"), ("ve", "log_snr", "rms", "dopri5"),
    ("rf", "sigma", "rms", "tsit5"), ("linear", "t", "rms", "dopri5"),
]


@pytest.mark.parametrize("sde_name,time_variable,error_norm,method", OPTION_CASES, ids=lambda v: str(v))
def test_time_variables_and_norms_match_analytic_density(x64, sde_name, time_variable, error_norm, method):
    """Solved in t (the default before), or in sigma~ = sigma/s (the default's variable, on
    paths beside the SDEs above) or log sigma~ with the state x/s (`ode.flow_coordinates`),
    and with the reference's RMS norm at a tolerance that makes its delta log p bind
    (rms over B D + B components lets each delta be sqrt(D + 1) times the tolerance
    off), logp still agrees with the analytic log p_eps(x) to 1e-3 nats per example.
    The 8-D target, exact divergence; the prior mismatch (computed from the returned z,
    so a wrong to_x scaling fails too) removed as above."""
    g, sde, dim = target(8), SDES[sde_name], 8
    x = data(dim)
    eps = max(EPS, sde_lib.default_eps(sde)) if sde_name in ("rf", "linear") else EPS
    tol = dict(rtol=1e-6, atol=1e-6) if error_norm == "rms" else TOL
    logp, z, _ = log_likelihood(
        jax.random.key(0), sde, target_score(dim, sde_name), x, divergence="exact", eps=eps,
        time_variable=time_variable, error_norm=error_norm, method=method, **tol,
    )
    exact = np.asarray(g.log_prob_t(x, jnp.full((BATCH,), eps), sde))
    np.testing.assert_array_less(np.abs(np.asarray(logp) - prior_mismatch(g, sde, z) - exact), 1e-3)


# The fixed-step exponential integrators in log-SNR (`method="dpm_solver_2m"/"dpm_solver_3m"`).
EXPONENTIAL_SDES = ["vp", "subvp", "ve", "cosine", "linear"]


@pytest.mark.parametrize("sde_name", EXPONENTIAL_SDES)
def test_exponential_integrator_matches_analytic_density(x64, sde_name):
    """DPM-Solver-3M in lambda for x, with the quadrature of sigma div eps^ over its own
    points: with 256 steps logp agrees with the analytic log p_eps(x) to 1e-3 nats per
    example (8-D target, exact divergence, prior mismatch removed as above; measured at
    most 4.7e-4, subVP); with 8 steps it does not (the bound is not vacuous)."""
    g, sde, dim = target(8), SDES[sde_name], 8
    x = data(dim)
    eps = max(EPS, sde_lib.default_eps(sde)) if sde_name == "linear" else EPS
    exact = np.asarray(g.log_prob_t(x, jnp.full((BATCH,), eps), sde))
    errors = {}
    for steps in (8, 256):
        logp, z, nfe = log_likelihood(jax.random.key(0), sde, target_score(dim, sde_name), x, divergence="exact",
                                      eps=eps, method="dpm_solver_3m", num_steps=steps)
        assert nfe == steps + 1 and z.dtype == jnp.float64
        errors[steps] = np.abs(np.asarray(logp) - prior_mismatch(g, sde, z) - exact)
    np.testing.assert_array_less(errors[256], 1e-3)
    assert errors[8].max() > 1e-2, errors[8].max()


def test_exponential_integrator_order(x64):
    """The order of convergence against the analytic density (8-D target, VP, exact
    divergence): from 64 to 128 steps the error falls at least 3x for 2M (second order,
    4x) and at least 8x for 3M (measured 12x; 3M with the cubic quadrature)."""
    g, sde, x = target(8), SDES["vp"], data(8)
    exact = np.asarray(g.log_prob_t(x, jnp.full((BATCH,), EPS), sde))
    for order, factor in ((2, 3.0), (3, 8.0)):
        err = {}
        for steps in (64, 128):
            logp, z, _ = log_likelihood(jax.random.key(0), sde, target_score(8, "vp"), x, divergence="exact",
                                        method=f"dpm_solver_{order}m", num_steps=steps)
            err[steps] = float(np.mean(np.abs(np.asarray(logp) - prior_mismatch(g, sde, z) - exact)))
        assert err[128] < err[64] / factor, (order, err)


def test_quadrature_weights():
    """Exact for cubics on uneven, decreasing nodes (the signed integral), fourth order on a
    smooth function, and the single-interval and three-node cases."""
    nodes = np.array([7.0, 5.5, 5.0, 3.0, 1.2, 0.0, -2.0, -5.0])
    cubic = lambda u: 2 * u**3 - u**2 + 0.5 * u - 3  # noqa: E731
    antiderivative = lambda u: u**4 / 2 - u**3 / 3 + u**2 / 4 - 3 * u  # noqa: E731
    w = likelihood.quadrature_weights(nodes)
    assert w @ cubic(nodes) == pytest.approx(antiderivative(-5.0) - antiderivative(7.0), rel=1e-12)
    for few in ([1.0, 0.0], [2.0, 1.0, -1.0]):  # linear and quadratic through all the nodes
        assert likelihood.quadrature_weights(few) @ (np.array(few) ** (len(few) - 1)) == pytest.approx(
            (few[-1] ** len(few) - few[0] ** len(few)) / len(few), rel=1e-12)
    errors = [abs(likelihood.quadrature_weights(np.linspace(7, -5, n + 1)) @ np.sin(np.linspace(7, -5, n + 1))
                  - (np.cos(7.0) - np.cos(-5.0))) for n in (12, 24)]
    assert errors[1] < errors[0] / 12, errors


def test_latent_is_the_ode_encode_latent(x64):
    """z from log_likelihood is ode_encode's latent (same method, tolerances and eps).

    The two solves are not step-for-step identical: the augmented state (x, delta logp)
    enters the error norm (max over its parts), so the adaptive step sequence differs and
    each z carries its own solver error, of order the tolerance. Measured relative
    difference 1e-5 - 3e-5 at rtol = atol = 1e-5, hence the bound 1e-4; that it is solver
    error and not a different latent shows by tightening both to 1e-9, where the
    difference must shrink below 1e-7.
    """
    sde, sf, x = SDES["vp"], target_score(8, "vp"), data(8)
    _, z = exact_logp(8, "vp")
    z_enc, _ = ode_encode(sde, sf, x, eps=EPS, **TOL)
    rel = float(jnp.linalg.norm(z - z_enc) / jnp.linalg.norm(z_enc))
    assert rel < 1e-4, rel
    _, z_tight, _ = log_likelihood(jax.random.key(0), sde, sf, x, divergence="exact", eps=EPS, rtol=1e-9, atol=1e-9)
    z_enc_tight, _ = ode_encode(sde, sf, x, eps=EPS, rtol=1e-9, atol=1e-9)
    rel_tight = float(jnp.linalg.norm(z_tight - z_enc_tight) / jnp.linalg.norm(z_enc_tight))
    assert rel_tight < 1e-7, rel_tight


# ---------------------------------------------------------------------------------------
# Hutchinson estimators.

NUM_CALIBRATION_KEYS = 16  # K = 1 runs that estimate each example's per-probe sd
NUM_TEST_KEYS = 8  # runs per K for the tests


def _hutchinson_errors(divergence, num_probes, keys, exact):
    sde, sf, x = SDES["vp"], target_score(8, "vp"), data(8)
    errors = []
    for k in keys:
        logp, _, _ = log_likelihood(
            jax.random.key(k), sde, sf, x, divergence=divergence, num_probes=num_probes, eps=EPS, **TOL
        )
        errors.append(np.asarray(logp) - exact)
    return np.array(errors)  # (keys, examples)


@pytest.mark.parametrize("divergence", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased_with_one_over_sqrt_k_spread(x64, divergence):
    """The Skilling--Hutchinson logp is unbiased and its sd falls as 1/sqrt(K) with K probes.

    8-D VP target, 32 examples: every example is an independent estimate (its own probes).
    The reference is the exact-divergence logp at the same tolerances, so their common
    solver error cancels (the difference of solver errors, ~1e-5 nats, is far below the
    estimators' sd, 0.1-2 nats).

    * sd: 16 runs with K = 1 (fresh keys) give each example's per-probe sd, sigma_b, with
      nu = 15 degrees of freedom.
    * Unbiasedness, for K in {1, 16, 64}: with 8 more keys each, u = sqrt(K) e / sigma_b
      (e the error of one K-probe estimate) is a t-like ratio of mean 0 and variance
      nu / (nu - 2) whatever K (e and sigma_b come from independent probes), so the mean
      of the 8 x 32 values of u must lie within 4.5 SE of 0. That bounds the bias at
      ~0.3 sigma_b / sqrt(K) per estimate, e.g. 0.005 nats for Rademacher, K = 64.
    * 1/sqrt(K): for K = 16 and 64, the per-example variance across the 8 keys, s_K^2, has
      s_K^2 ~ (sigma_b^2 / K) chi^2_7 / 7 (a mean of >= 16 probes is Gaussian by the CLT), so
      log(64 s_64^2 / (16 s_16^2)) has mean 0 and variance 2 psi'(7/2) (trigamma, the
      variance of log chi^2_7); its mean over the 32 examples must lie within 4 SE of 0.
      The same test against K = 1 is not exact because one probe's estimate is not
      Gaussian (a sample variance then has kurtosis-dependent spread), so K = 1 enters
      the rate check through the standardized u instead: mean(u^2) is tested below.
    """
    exact, _ = exact_logp(8, "vp")
    calibration = _hutchinson_errors(divergence, 1, range(1000, 1000 + NUM_CALIBRATION_KEYS), exact)
    sigma = calibration.std(axis=0, ddof=1)  # (examples,)
    nu = NUM_CALIBRATION_KEYS - 1
    assert np.all(sigma > 1e-3), "the estimator has no spread: probes are not random"
    spreads = {}
    for K in (1, 16, 64):
        errors = _hutchinson_errors(divergence, K, range(2000 + 100 * K, 2000 + 100 * K + NUM_TEST_KEYS), exact)
        u = math.sqrt(K) * errors / sigma
        se = math.sqrt(nu / (nu - 2) / u.size)
        assert abs(u.mean()) < 4.5 * se, f"K={K}: mean standardized error {u.mean():.3f} (SE {se:.3f})"
        # The spread at K probes is sigma_b / sqrt(K): E[u^2] = nu / (nu - 2) = 1.15. With
        # 256 values and the sigma_b uncertainty, mean(u^2) within a factor 2 of it is a
        # loose but K-discriminating check (K off by 4x moves it by 4x).
        assert 0.5 < np.mean(u**2) / (nu / (nu - 2)) < 2.0, f"K={K}: mean u^2 {np.mean(u**2):.3f}"
        spreads[K] = errors.var(axis=0, ddof=1)
    dof = NUM_TEST_KEYS - 1
    log_ratio = np.log(64 * spreads[64] / (16 * spreads[16]))
    se = math.sqrt(2 * special.polygamma(1, dof / 2) / log_ratio.size)
    assert abs(log_ratio.mean()) < 4 * se, f"mean log variance ratio {log_ratio.mean():.3f} (SE {se:.3f})"


# ---------------------------------------------------------------------------------------
# Bits per dimension.

BPD_DIM, BPD_BATCH = 4, 4


@functools.cache
def gaussian_target():
    """A one-component mixture N(m, s^2 I) with m in [0.3, 0.7], s^2 = 0.05."""
    return analytic.GaussianMixture([1.0], [np.linspace(0.3, 0.7, BPD_DIM)], np.full((1, BPD_DIM), 0.05))


@functools.cache
def gaussian_score():
    return gaussian_target().score_fn(SDES["vp"])


def discrete_data(n, num_bins=256, seed=0):
    """Values k / (K - 1) in [0, 1]."""
    rng = np.random.default_rng(seed)
    x = np.clip(rng.normal(0.5, 0.2, size=(n, BPD_DIM)), 0, 1)
    return np.round(x * (num_bins - 1)) / (num_bins - 1)


def test_bpd_offset_values():
    assert bpd_offset(256, False) == 8.0
    assert bpd_offset(256, True) == 7.0
    assert bpd_offset(17, False) == pytest.approx(math.log2(17))


@pytest.mark.parametrize("centered", [False, True])
def test_bits_per_dim_matches_closed_form(x64, centered):
    """For discrete x, bpd = -log p_eps(u) / (D ln 2) + log2(K / w), with u the dequantized
    input (built with the same key split as bits_per_dim) and w the width of the model's
    data range (1 for [0, 1], 2 for [-1, 1]).

    log p_eps(u) is the Gaussian's exact density, with the prior-mismatch term of the
    library's uncorrected prior added back (prior_logp(z) - log p_T(z), z the latent of the
    same solve), so the two sides differ only by the ODE error (< 1e-3 nats, see
    test_exact_divergence_logp_matches_analytic_density): < 1e-3 / (D ln 2) bits/dim.
    """
    g, sde, sf = gaussian_target(), SDES["vp"], gaussian_score()
    x = jnp.asarray(discrete_data(BPD_BATCH))
    key = jax.random.key(7)
    kwargs = dict(divergence="exact", eps=EPS, **TOL)
    bpd, nfe = bits_per_dim(key, sde, sf, x, 256, centered, **kwargs)
    deq_key, ll_key = jax.random.split(key)
    u = dequantize(deq_key, x, 256, centered)
    lo, hi = (-1.0, 1.0) if centered else (0.0, 1.0)
    assert np.all((u >= lo) & (u <= hi))
    # The same solve, for its latent z and the wiring check.
    logp, z, _ = log_likelihood(ll_key, sde, sf, u, **kwargs)
    offset = 7.0 if centered else 8.0
    np.testing.assert_allclose(bpd, -np.asarray(logp) / (BPD_DIM * math.log(2)) + offset, rtol=0, atol=1e-12)
    exact_logp_u = np.asarray(g.log_prob_t(u, jnp.full((BPD_BATCH,), EPS), sde)) + prior_mismatch(g, sde, z)
    closed_form = -exact_logp_u / (BPD_DIM * math.log(2)) + offset
    np.testing.assert_allclose(bpd, closed_form, rtol=0, atol=1e-3 / (BPD_DIM * math.log(2)))


def test_evaluate_bpd_report(x64):
    """10 examples in batches of 4 (the last padded), 2 passes: the report's values are
    the per-example bits_per_dim of each chunk's key, averaged as documented."""
    sde, sf = SDES["vp"], gaussian_score()
    data_set = discrete_data(10, seed=1)
    key = jax.random.key(11)
    kwargs = dict(divergence="rademacher", eps=EPS, **TOL)
    report = evaluate_bpd(key, sde, sf, data_set, batch_size=BPD_BATCH, num_passes=2, progress=False, **kwargs)
    per_pass = []
    for p in range(2):
        values = []
        for start in range(0, 10, BPD_BATCH):
            chunk = data_set[start : start + BPD_BATCH]
            padded = np.concatenate([chunk, np.repeat(chunk[-1:], BPD_BATCH - len(chunk), 0)])
            bpd, _ = bits_per_dim(jax.random.fold_in(jax.random.fold_in(key, p), start), sde, sf, padded, **kwargs)
            values.append(np.asarray(bpd)[: len(chunk)])
        per_pass.append(np.concatenate(values))
    per_pass = np.array(per_pass)  # (passes, examples)
    per_example = per_pass.mean(0)
    assert report["num_examples"] == 10 and report["num_passes"] == 2
    assert report["num_bins"] == 256 and report["centered"] is False
    np.testing.assert_allclose(report["bpd_per_pass"], per_pass.mean(1), rtol=1e-12)
    assert report["bpd"] == pytest.approx(per_example.mean(), rel=1e-12)
    assert report["bpd"] == pytest.approx(np.mean(report["bpd_per_pass"]), rel=1e-12)
    assert report["bpd_stderr"] == pytest.approx(per_example.std(ddof=1) / math.sqrt(10), rel=1e-9)
    assert report["bpd_stderr"] > 0 and report["mean_nfe_per_batch"] > 0
    assert np.all(np.isfinite(per_pass)) and not np.allclose(per_pass[0], per_pass[1])


# ---------------------------------------------------------------------------------------
# Bad inputs.


@pytest.mark.parametrize("bad", [1.2, -0.1])
def test_data_outside_unit_interval_raises(bad):
    data_set = discrete_data(4)
    data_set[0, 0] = bad
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        evaluate_bpd(jax.random.key(0), SDES["vp"], gaussian_score(), data_set, batch_size=4, progress=False)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        bits_per_dim(jax.random.key(0), SDES["vp"], gaussian_score(), data_set)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(divergence="hutch"), "rademacher"),
        (dict(num_probes=0), "num_probes"),
        (dict(num_probes=2.0), "num_probes"),
        (dict(eps=0.0), "eps"),
        (dict(eps=-1e-3), "eps"),
        (dict(eps=1.0), "eps"),
        (dict(eps=1.5), "eps"),
        (dict(method="rk4"), "tsit5"),
        (dict(method="euler"), "num_steps"),
        (dict(method="dpm_solver_2m"), "needs num_steps"),
        (dict(method="dpm_solver_3m", num_steps=0), "needs num_steps"),
        (dict(method="dpm_solver_3m", num_steps=True), "needs num_steps"),
        (dict(method="dpm_solver_3m", num_steps=8.0), "needs num_steps"),
        (dict(method="rk4"), "dpm_solver_2m"),
        (dict(time_variable="lambda"), "log_snr"),
        (dict(error_norm="l2"), "rms"),
    ],
    ids=lambda v: str(v),
)
def test_bad_likelihood_arguments_raise(kwargs, match):
    sde, sf = SDES["vp"], gaussian_score()
    x = jnp.asarray(discrete_data(4))
    with pytest.raises(ValueError, match=match):
        log_likelihood(jax.random.key(0), sde, sf, x, **kwargs)
    with pytest.raises(ValueError, match=match):
        evaluate_bpd(jax.random.key(0), sde, sf, np.asarray(x), batch_size=4, progress=False, **kwargs)


def test_unknown_divergence_lists_valid_names():
    with pytest.raises(ValueError) as info:
        log_likelihood(jax.random.key(0), SDES["vp"], gaussian_score(), jnp.zeros((4, BPD_DIM)), divergence="hutch")
    assert all(name in str(info.value) for name in likelihood.DIVERGENCES)
