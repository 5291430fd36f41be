"""Verification of the fast samplers (scoresde.samplers.fast and the registry) on
Gaussian-mixture targets whose score is exact (scoresde.analytic.separated_mixture).

1. Order of convergence (float64). Every deterministic solver is run from the same
   latents z as a tight adaptive reference of the same probability-flow ODE (dopri8,
   rtol = atol = 1e-12), and the RMS error against it is fitted as C N^-p over num_steps
   N. Expected p: 1 for DDIM and fixed-step Euler; 2 for EDM's Heun, fixed-step Heun,
   DPM-Solver++(2M) and singlestep DPM-Solver-2; 3 for singlestep DPM-Solver-3 and
   multistep DPM-Solver++(3M) / DPM-Solver-3M (data / noise prediction).
   The step counts lie in the asymptotic regime: every local slope log(e_N/e_2N)/log 2,
   not only the fit, is within 0.2 of p. Each num_steps is one compilation, so the
   ranges are the cheapest ones that are already asymptotic (measured from N = 25 to
   800 while writing these tests; see the comment above ORDER_CASES).
2. Samples at about 20 NFE match the target (weights and per-mode means) within 5
   standard errors plus a measured allowance for the discretization bias.
3. EDM with S_churn = 0 is the deterministic sampler exactly; with churn it differs and
   still puts the right mass on every mode.
4. The registry: every sampler runs with the same call, returns (x, nfe), and nfe is the
   number of score evaluations really made (counted with a host callback).
5. DDIM written with the data prediction (DPM-Solver++-1) is DDIM written with the noise
   prediction (DPM-Solver-1).

Cost: the samplers are jitted with sde and a plain score function as static arguments, so every score
function is built once per (target, SDE) (`target_score`) and reused, and every distinct
num_steps is one compilation; those dominate the running time.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scoresde import sde_lib
from scoresde.samplers import fast, registry
from scoresde.samplers.ode import ode_sample

# From tests/conftest.py, with the x64 fixture (float64 for one test, restored afterwards):
# K_SE (5 standard errors), the SDES by name, `target(dim)` (three well-separated modes,
# weights 1/9, 3/9, 5/9, covariance eigenvalues in [0.1, 0.5]) and its exact score
# `target_score(dim, sde_name)`, one function object per pair, so that every jitted sampler
# compiled for it is reused by every test.
from conftest import K_SE, SDES, CountingScore, assign_modes, target, target_score


# ---------------------------------------------------------------------------------------
# 1. Orders of convergence against a tight adaptive reference, in float64.

ORDER_DIM, ORDER_BATCH = 2, 32
KEY = jax.random.PRNGKey(0)


@functools.cache
def _reference(sde_name: str):
    """(z, x_ref, ref_error) for the order tests: latents at T, the dopri8 solution at eps
    with rtol = atol = 1e-12, and an estimate of its error (its distance to the solution
    at 1e-10; rtol/atol are traced, so this costs no second compilation)."""
    assert jax.config.jax_enable_x64, "the order tests need float64"
    sde = SDES[sde_name]
    score_fn = target_score(ORDER_DIM, sde_name)
    shape = (ORDER_BATCH, ORDER_DIM)
    z = sde.prior_sampling(jax.random.PRNGKey(1), shape)
    tight, _ = ode_sample(KEY, sde, score_fn, shape, method="dopri8", rtol=1e-12, atol=1e-12, z=z)
    loose, _ = ode_sample(KEY, sde, score_fn, shape, method="dopri8", rtol=1e-10, atol=1e-10, z=z)
    return z, tight, _rms(tight - loose)


def _rms(a) -> float:
    return float(jnp.sqrt(jnp.mean(jnp.square(a))))


def _run_solver(solver: str, sde, score_fn, z, n: int):
    shape = z.shape
    if solver == "ddim":
        return fast.ddim_sample(KEY, sde, score_fn, shape, num_steps=n, z=z)[0]
    if solver == "ode_euler":
        return ode_sample(KEY, sde, score_fn, shape, method="euler", num_steps=n, z=z)[0]
    if solver == "ode_heun":
        return ode_sample(KEY, sde, score_fn, shape, method="heun", num_steps=n, z=z)[0]
    if solver == "edm_heun":
        return fast.edm_sample(KEY, sde, score_fn, shape, num_steps=n, z=z)[0]
    if solver == "dpm_solver++_2m":  # the registry's "dpm_solver++"
        return fast.dpm_solver_sample(KEY, sde, score_fn, shape, num_steps=n, z=z)[0]
    if solver == "dpm_solver++_3m":
        return fast.dpm_solver_sample(KEY, sde, score_fn, shape, num_steps=n, order=3, z=z)[0]
    if solver == "dpm_solver_3m":  # noise prediction
        return fast.dpm_solver_sample(KEY, sde, score_fn, shape, num_steps=n, order=3, plus=False, z=z)[0]
    if solver == "dpm_solver_2s":
        return fast.dpm_solver_sample(
            KEY, sde, score_fn, shape, num_steps=n, order=2, method="singlestep", plus=False, z=z
        )[0]
    if solver == "dpm_solver_3s":  # the registry's "dpm_solver"
        return fast.dpm_solver_sample(
            KEY, sde, score_fn, shape, num_steps=n, order=3, method="singlestep", plus=False, z=z
        )[0]
    raise AssertionError(solver)


# (sde, solver, order, num_steps). Local slopes measured while writing these tests (VP,
# RMS error of 32 paths; N = 25, 50, 100, 200, 400, 800):
#   DDIM (time-uniform)  0.98 0.99 1.00 1.00 1.00     ODE Euler   1.11 1.05 1.02 1.01 1.01
#   ODE Heun             1.90 1.95 1.97 1.99 1.99     EDM Heun    2.19 2.08 2.04 2.02 2.01
#   DPM-Solver++(2M)     1.86 1.88 1.95 1.98 1.99     DPM-Solver-2S  2.05 2.03 2.01 2.00 2.00
#   DPM-Solver-3S        3.49 2.99 3.04 3.02 3.01     DPM-Solver++(3M) 2.75 3.19 3.27 3.19 3.11
#   DPM-Solver-3M (noise prediction) 2.22 2.76 2.96 3.01 3.01
# and on VE / subVP / cosine-VP the same picture (2M: 1.78 1.87 1.95 1.98 on VE, 2.08
# 1.84 1.92 1.97 on subVP, so 2M is measured from N = 100; 3S is at 3 from N = 50 on VP,
# VE and cosine-VP, from N = 100 on subVP: 4.34 2.79 3.05 3.03; 3M on VE from N = 50:
# 3.17 3.21 3.13 2.97 (data), 2.78 2.96 3.00 3.00 (noise)).
# DPM-Solver++(3M) approaches 3 from above (3.05 at N = 800 -> 1600, 2.99 at 1600 ->
# 3200), so it is measured at N = 200 and 800 (3.15). With D2 as in Lu et al.'s code,
# half the second derivative (see `fast._taylor_terms`), its slopes were 2.36 2.55 2.30
# 2.11 2.04 (noise: 2.04 2.31 2.28 2.17 2.09), and both cases below fail (2.08, 2.22).
# Strictly, 3M is of order 2 as N -> infinity: its first (warm-up) step is DDIM, of local
# error O(h^2). That step is at lambda_T, where m' is small (~ alpha_T): propagated to
# eps its error is 1.4e-4 h^2 here (2e-8 at N = 800, of 3.4e-7 in all; 1.2e-9 of 5.2e-9
# at N = 3200), so it would dominate only beyond N ~ 10^4.
_STEPS = (50, 100, 200)
_STEPS_2M = (100, 200, 400)
ORDER_CASES = [
    ("vp", "ddim", 1, _STEPS),
    ("vp", "ode_euler", 1, _STEPS),
    ("vp", "ode_heun", 2, _STEPS),
    ("vp", "edm_heun", 2, _STEPS),
    ("vp", "dpm_solver++_2m", 2, _STEPS_2M),
    ("vp", "dpm_solver_2s", 2, _STEPS),
    ("vp", "dpm_solver_3s", 3, _STEPS),
    ("vp", "dpm_solver++_3m", 3, (200, 800)),
    ("vp", "dpm_solver_3m", 3, (100, 400)),
    ("ve", "ddim", 1, _STEPS),
    ("ve", "edm_heun", 2, _STEPS),
    ("ve", "dpm_solver++_2m", 2, _STEPS_2M),
    ("ve", "dpm_solver_3s", 3, _STEPS),
    # subVP: t(lambda) by the generic bisection; pre-asymptotic at 50 -> 100 (2.79, then
    # 3.05, 3.03), so measured from N = 100.
    ("subvp", "dpm_solver_3s", 3, _STEPS_2M),
]
ORDER_TOL = 0.2


@pytest.mark.parametrize(
    "sde_name, solver, order, steps", ORDER_CASES, ids=[f"{c[0]}-{c[1]}" for c in ORDER_CASES]
)
def test_order_of_convergence(sde_name, solver, order, steps, x64):
    sde = SDES[sde_name]
    score_fn = target_score(ORDER_DIM, sde_name)
    z, ref, ref_error = _reference(sde_name)
    eps = sde_lib.default_eps(sde)
    if solver == "edm_heun":
        # EDM ends at sigma = 0 with an Euler step from sigma(eps): x_N = D(x; eps), the
        # data prediction of its state at eps. The same map applied to the reference.
        ref = fast.data_prediction(sde, score_fn, ref, eps)
    errors = []
    for n in steps:
        x = _run_solver(solver, sde, score_fn, z, n)
        assert x.dtype == jnp.float64 and x.shape == z.shape
        errors.append(_rms(x - ref))
    errors = np.asarray(errors)
    log_n, log_e = np.log(np.asarray(steps, float)), np.log(errors)
    local = -np.diff(log_e) / np.diff(log_n)
    fit = -np.polyfit(log_n, log_e, 1)[0]
    print(f"{sde_name} {solver}: N={steps} rms={errors} local slopes={np.round(local, 3)} fit={fit:.3f}")

    assert np.all(np.isfinite(errors))
    # The reference is far more accurate than the best solution it judges.
    assert ref_error < 1e-3 * errors.min(), (ref_error, errors)
    assert abs(fit - order) < ORDER_TOL, (fit, local)
    assert np.all(np.abs(local - order) < ORDER_TOL), local  # asymptotic: no curvature


# ---------------------------------------------------------------------------------------
# 2. Samples at about 20 NFE against the target (float32, as used in practice).

N_SAMPLES = 4000
SAMPLE_SDE_NAME = "vp"
SAMPLE_SDE = SDES[SAMPLE_SDE_NAME]
# An exact sample is misassigned (argmax of the posterior at t = 0) with probability
# below 1e-4: the modes are >= 5.6 apart and no standard deviation exceeds 0.71.
# Discretization moves a few samples across a boundary: measured against the dopri8
# solution from the same latents, the weights change by at most 0.003 (2-D, 2M at 20 NFE).
WEIGHT_BIAS = 0.005
# Discretization bias of each per-mode mean coordinate: measured as the per-mode mean of
# (x_sampler - x_exact ODE) from the same latents, N = 4000, two seeds, max over modes
# and coordinates:
#                               2-D     16-D
#   dpm_solver++ (2M), NFE 20   0.030   0.016
#   dpm_solver (3S),   NFE 18   0.062   0.015   (7 steps, NFE 21: 0.12 / 0.047)
#   edm_heun,          NFE 49   0.042   0.023
# so MEAN_BIAS covers each of them. The standard error of the lightest mode (weight 1/9,
# ~444 samples, variances <= 0.5) is <= 0.034 per coordinate, so the bound is at most
# 5 SE + 0.08 ~ 0.25, below the smallest mode standard deviation (0.32) and far below
# the distance between modes (>= 5.6): a wrong scale, sign or time grid fails it.
#
# EDM's Heun at 19-21 NFE (10-11 steps on the rho = 7 grid from sigma = 152 to 0.01) is
# visibly biased at this sample size: per-mode mean errors of 0.35-0.44 in 2-D and
# 0.20-0.22 in 16-D against the exact ODE (10-20 standard errors). Its rho = 7 grid puts
# most of the steps at sigma < 0.1, below the scale of this target (the mode widths are
# 0.3-0.7), and takes steps of ratio ~3 through sigma ~ 0.3-4 where the modes separate.
# The bias is 0.093 at 35 NFE (EDM's 18 steps), 0.069 at 39, 0.042 at 49 and falls
# as N^-2, so EDM is tested at 49 NFE (25 steps), the smallest of those with a margin.
MEAN_BIAS = 0.08
SAMPLE_CASES = [("dpm_solver++", 20), ("dpm_solver", 20), ("edm_heun", 49)]
EDM_SAMPLE_STEPS = registry.num_steps_for_nfe("edm_heun", 49)  # 25


def _check_weights(gmm, x):
    labels = assign_modes(gmm, x)  # the most probable component under the clean target
    freq = np.bincount(labels, minlength=gmm.num_components) / len(labels)
    w = gmm.weights
    se = np.sqrt(w * (1 - w) / len(labels))
    np.testing.assert_array_less(np.abs(freq - w), K_SE * se + WEIGHT_BIAS)
    return labels


def _check_means(gmm, x, labels):
    x = np.asarray(x, np.float64)
    for k in range(gmm.num_components):
        xs = x[labels == k]
        se = np.sqrt(np.diag(gmm.covs[k]) / len(xs))
        err = np.abs(xs.mean(0) - gmm.means[k])
        assert np.all(err < K_SE * se + MEAN_BIAS), (k, err, se)


@pytest.mark.parametrize("dim", [2, 16])
@pytest.mark.parametrize("name, nfe", SAMPLE_CASES, ids=[c[0] for c in SAMPLE_CASES])
def test_samples_match_target(name, nfe, dim):
    gmm = target(dim)
    num_steps = registry.num_steps_for_nfe(name, nfe)
    score_fn = target_score(dim, SAMPLE_SDE_NAME)
    x, used = registry.sample(KEY, SAMPLE_SDE, score_fn, (N_SAMPLES, dim), sampler=name, num_steps=num_steps)
    assert used <= nfe and used >= nfe - 2
    assert x.shape == (N_SAMPLES, dim) and bool(jnp.all(jnp.isfinite(x)))
    labels = _check_weights(gmm, x)
    _check_means(gmm, x, labels)


# ---------------------------------------------------------------------------------------
# 3. EDM's stochastic sampler: churn 0 is the deterministic sampler.


@pytest.mark.parametrize(
    "S_min, S_max, S_noise", [(0.0, math.inf, 1.0), (0.01, 50.0, 1.007), (0.5, 5.0, 1.3)]
)
def test_edm_churn_zero_is_deterministic(S_min, S_max, S_noise):
    # The churn parameters are traced, so these all share the compilation of test 2.
    args = (KEY, SAMPLE_SDE, target_score(2, SAMPLE_SDE_NAME), (N_SAMPLES, 2))
    x_det, nfe_det = fast.edm_sample(*args, num_steps=EDM_SAMPLE_STEPS)
    x, nfe = fast.edm_sample(
        *args, num_steps=EDM_SAMPLE_STEPS, S_churn=0.0, S_min=S_min, S_max=S_max, S_noise=S_noise
    )
    assert nfe == nfe_det
    np.testing.assert_array_equal(np.asarray(x), np.asarray(x_det))


def test_edm_deterministic_does_not_depend_on_key():
    # Regression: the churn noise std was sqrt(sigma^^2 - sigma^2), which XLA contracts
    # into an FMA; with gamma = 0 it left sqrt(rounding error of sigma^2) ~ 1e-4 sigma, so
    # the "deterministic" sampler added the key's noise (up to 2.9 apart in float32 for
    # two keys and the same z). Given z, the key must not matter.
    sde, score_fn, shape = SAMPLE_SDE, target_score(2, SAMPLE_SDE_NAME), (N_SAMPLES, 2)
    z = sde.prior_sampling(KEY, shape)
    a, _ = fast.edm_sample(KEY, sde, score_fn, shape, num_steps=EDM_SAMPLE_STEPS, z=z)
    b, _ = fast.edm_sample(jax.random.PRNGKey(1), sde, score_fn, shape, num_steps=EDM_SAMPLE_STEPS, z=z)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("dim", [2, 16])
def test_edm_churn_differs_and_keeps_mode_weights(dim):
    # EDM's CIFAR-10 settings (S_churn 10, S_min 0.01, S_max 50, S_noise 1.007). Only the
    # weights are checked: with churn the discretization bias at 25 steps is larger than
    # the deterministic sampler's (the means and variances are visibly off at 18 steps
    # and converge as num_steps grows).
    gmm = target(dim)
    args = (KEY, SAMPLE_SDE, target_score(dim, SAMPLE_SDE_NAME), (N_SAMPLES, dim))
    x_det, _ = registry.sample(*args, sampler="edm_heun", num_steps=EDM_SAMPLE_STEPS)
    x, nfe = registry.sample(*args, sampler="edm_stochastic", num_steps=EDM_SAMPLE_STEPS)
    assert nfe == 2 * EDM_SAMPLE_STEPS - 1
    assert bool(jnp.all(jnp.isfinite(x)))
    assert float(jnp.max(jnp.abs(x - x_det))) > 0.1  # the churn noise does act
    _check_weights(gmm, x)


# ---------------------------------------------------------------------------------------
# 4. The registry.

TINY_SHAPE = (8, 2)
# 50 evaluations: PC with reverse diffusion or ancestral sampling needs N >= 21 on the VP
# SDE (its DDPM chain has beta_max / N < 1 only then); 25 predictor-corrector steps.
TINY_NFE = 50


@functools.cache
def _counted_score():
    return CountingScore(target_score(TINY_SHAPE[1], SAMPLE_SDE_NAME))


@pytest.mark.parametrize("name", list(registry.SAMPLERS))
def test_registry_runs_every_sampler_and_counts_nfe(name):
    score = _counted_score()
    num_steps = registry.num_steps_for_nfe(name, TINY_NFE)
    options = {} if num_steps is None else {"num_steps": num_steps}  # None: adaptive
    score.reset()
    x, nfe = registry.sample(jax.random.PRNGKey(3), SAMPLE_SDE, score, list(TINY_SHAPE), sampler=name, **options)
    x = jax.block_until_ready(x)
    assert x.shape == TINY_SHAPE and x.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(x)))
    assert isinstance(nfe, int)
    assert nfe == score.total(), (nfe, score.count)  # the returned nfe is the true count
    if num_steps is not None:
        assert TINY_NFE - 2 <= nfe <= TINY_NFE  # num_steps_for_nfe keeps within the budget


def test_registry_documented_nfe():
    """nfe as documented: EDM 2N - 1, multistep N, singlestep order * N, DDIM N."""
    score = _counted_score()
    key, sde = jax.random.PRNGKey(3), SAMPLE_SDE
    # The step counts of test_registry_runs_every_sampler_and_counts_nfe: no new compilation.
    assert registry.sample(key, sde, score, TINY_SHAPE, "edm_heun", num_steps=25)[1] == 49
    assert registry.sample(key, sde, score, TINY_SHAPE, "dpm_solver++", num_steps=50)[1] == 50
    assert registry.sample(key, sde, score, TINY_SHAPE, "dpm_solver", num_steps=16)[1] == 48
    assert registry.sample(key, sde, score, TINY_SHAPE, "ddim", num_steps=50)[1] == 50
    assert registry.num_steps_for_nfe("edm_heun", 20) == 10
    assert registry.num_steps_for_nfe("dpm_solver", 20) == 6
    assert registry.num_steps_for_nfe("dpm_solver++", 20) == 20
    assert registry.num_steps_for_nfe("ode", 20) is None


def test_registry_unknown_names_raise():
    sde, score = SAMPLE_SDE, target_score(2, SAMPLE_SDE_NAME)
    with pytest.raises(ValueError, match="valid names") as info:
        registry.sample(KEY, sde, score, TINY_SHAPE, sampler="no_such_sampler")
    assert all(name in str(info.value) for name in registry.SAMPLERS)
    with pytest.raises(ValueError, match="valid names"):
        registry.sampler_options("no_such_sampler")
    with pytest.raises(ValueError, match="no option") as info:
        registry.sample(KEY, sde, score, TINY_SHAPE, sampler="edm_heun", num_steps=4, churn=1.0)
    assert "churn" in str(info.value)
    assert all(opt in str(info.value) for opt in registry.sampler_options("edm_heun"))


def test_sampler_options_defaults():
    edm = registry.sampler_options("edm_heun")
    assert edm["num_steps"] == 18 and edm["rho"] == 7.0 and edm["S_churn"] == 0.0
    stoch = registry.sampler_options("edm_stochastic")
    assert (stoch["S_churn"], stoch["S_min"], stoch["S_max"], stoch["S_noise"]) == (10.0, 0.01, 50.0, 1.007)
    dpm = registry.sampler_options("dpm_solver++")
    assert (dpm["order"], dpm["method"], dpm["spacing"], dpm["plus"], dpm["num_steps"]) == (
        2, "multistep", "logSNR", True, 20,
    )
    assert registry.sampler_options("dpm_solver++_3m")["order"] == 3
    dpm3 = registry.sampler_options("dpm_solver")
    assert (dpm3["order"], dpm3["method"], dpm3["plus"]) == (3, "singlestep", False)
    ddim = registry.sampler_options("ddim")
    assert ddim["num_steps"] == 50 and ddim["spacing"] == "time_uniform"
    assert registry.sampler_options("ode")["method"] == "tsit5"
    assert registry.sampler_options("ode_heun")["method"] == "heun"
    pc = registry.sampler_options("pc")
    assert (pc["predictor"], pc["corrector"], pc["snr"]) == ("reverse_diffusion", "langevin", 0.16)
    for name in registry.SAMPLERS:
        options = registry.sampler_options(name)
        assert not {"key", "sde", "score_fn", "shape"} & set(options)
        # An adaptive SDE solver has tolerances instead of a number of steps.
        assert ("num_steps" in options or {"rtol", "atol"} <= set(options)) and "eps" in options


# ---------------------------------------------------------------------------------------
# 5. DDIM in data prediction = DDIM in noise prediction.


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_ddim_data_and_noise_prediction_agree(sde_name, x64):
    # sigma_t/sigma_s x - alpha_t (e^-h - 1) x_0 with x_0 = (x - sigma_s eps)/alpha_s and
    # e^-h = alpha_s sigma_t / (alpha_t sigma_s) is alpha_t/alpha_s x - sigma_t (e^h - 1) eps.
    sde = SDES[sde_name]
    score_fn = target_score(ORDER_DIM, sde_name)
    z = _reference(sde_name)[0]
    n = _STEPS[0]  # plus=True on this grid is test 1's DDIM: a cached compilation
    common = dict(num_steps=n, order=1, spacing="time_uniform", z=z)
    x_plus, nfe_plus = fast.dpm_solver_sample(KEY, sde, score_fn, z.shape, plus=True, **common)
    x_noise, nfe_noise = fast.dpm_solver_sample(KEY, sde, score_fn, z.shape, plus=False, **common)
    x_ddim, _ = fast.ddim_sample(KEY, sde, score_fn, z.shape, num_steps=n, z=z)
    assert nfe_plus == nfe_noise == n
    np.testing.assert_array_equal(np.asarray(x_ddim), np.asarray(x_plus))
    np.testing.assert_allclose(np.asarray(x_noise), np.asarray(x_plus), rtol=1e-10, atol=1e-10)
    assert _rms(x_plus - _reference(sde_name)[1]) > 1e-4  # a real, nontrivial trajectory


@pytest.mark.parametrize("spacing", fast.SPACINGS)
def test_time_grid_takes_a_traced_eps(spacing):
    # Regression: "time_quadratic" took math.sqrt(eps), which fails on the traced eps of
    # the compiled samplers (dpm_solver_sample(..., spacing="time_quadratic") raised).
    ts = jax.jit(fast.time_grid, static_argnums=(0, 1, 3))(SAMPLE_SDE, 4, 1e-3, spacing)
    assert ts.shape == (5,) and bool(jnp.all(jnp.diff(ts) < 0))
    np.testing.assert_allclose([ts[0], ts[-1]], [SAMPLE_SDE.T, 1e-3], rtol=1e-5)


def test_karras_grid_is_uniform_in_sigma_to_the_one_seventh():
    """spacing="karras": sigma^ = sigma / alpha of the grid's times is uniform in sigma^(1/7)
    from sigma^(T) to sigma^(eps) (EDM's rho = 7 grid)."""
    ts = fast.time_grid(SAMPLE_SDE, 6, 1e-3, "karras")
    alpha, sigma = SAMPLE_SDE.marginal_coeffs(ts)
    root = np.asarray(sigma / alpha, np.float64) ** (1 / 7)
    np.testing.assert_allclose(np.diff(root), np.full(6, (root[-1] - root[0]) / 6), rtol=1e-4)
