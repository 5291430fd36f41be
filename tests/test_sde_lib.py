"""Tests of scoresde.sde_lib: forward SDEs, their discretizations, reverse forms and priors.

Statistical checks use K_SE = 5 standard errors (a false alarm has probability ~6e-7
per comparison, and every seed is fixed, so the tests are deterministic).
Deterministic float64 checks use tolerances far below the error of any wrong formula.

The machine running these is small and shared, and compiling is what costs: each
SDE's jitted work is gathered into a few cached functions, and random draws reuse
few shapes (each new shape of a jax.random draw is a new compile).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from scoresde import sde_lib
from scoresde.sde_lib import (
    SDE, CosineVPSDE, EDMPath, LinearGaussianPath, LinearPath, RectifiedFlow, VESDE, VPSDE, batch_broadcast, subVPSDE,
)

from conftest import K_SE, LINEAR_PATH, check_gaussian

# Every SDE with its default parameters. VE keeps the default sigma_max = 50, the value
# used in practice (the cost is the same as with a smaller one); the Euler--Maruyama,
# chain and prior tests also run VE with sigma_max = 5, to check that the coefficients
# follow the parameters. Then the linear Gaussian paths: rectified flow (T = 0.999), EDM's
# sigma(t) = t on [0, 80], and conftest's user-defined alpha = e^-t, sigma = t on [0, 5].
SDES = [VPSDE(), subVPSDE(), VESDE(), CosineVPSDE(), RectifiedFlow(), EDMPath(), LINEAR_PATH]
SDE_IDS = ["vp", "subvp", "ve", "cosinevp", "rf", "edm", "linear"]
sde_params = pytest.mark.parametrize("sde", SDES, ids=SDE_IDS)
# The reverse-time algebra is the same for every SDE: checked on the SDEs with their own chains.
sde_params_classic = pytest.mark.parametrize("sde", SDES[:4], ids=SDE_IDS[:4])
sde_params_ve5 = pytest.mark.parametrize("sde", SDES + [VESDE(sigma_max=5.0)], ids=SDE_IDS + ["ve_sigma5"])


def _noise_ratio(sde, t):
    s, sigma = sde.marginal_coeffs(t)
    return sigma / s


def _prior_std(sde):
    """The prior's std: sigma_max for VE and EDM, sigma(T) for the other paths, else 1."""
    if isinstance(sde, (VESDE, EDMPath)):
        return sde.sigma_max
    if isinstance(sde, RectifiedFlow):
        return sde.T
    if isinstance(sde, LinearPath):
        return float(sde.sigma_fn(np.float64(sde.T)))
    return 1.0


# ---------------------------------------------------------------------------------------
# 1. marginal_prob against an Euler--Maruyama simulation of the forward SDE.

N_PATHS = 4000
N_EM = 1000  # Euler--Maruyama steps (dt = 1e-3 for T = 1)
X0 = np.array([-1.0, 3.0])  # two fixed starting points, simulated side by side


def _em_grid(sde):
    """The Euler--Maruyama time grid, N_EM steps from 0 to T."""
    if isinstance(sde, (CosineVPSDE, RectifiedFlow)):
        # beta(t) ~ 2 / (1 - t) diverges at t = 1 (beta(T) ~ 370 at T = 0.9946), so a
        # uniform step would give beta dt ~ 0.4 near T. 700 uniform steps up to t = 0.9
        # (where beta ~ 20, as VP's beta_max), then 300 steps uniform in -log(1 - t),
        # which keep beta dt ~ 2 d(-log(1 - t)) ~ 0.02 up to T. The same for the
        # rectified flow: f = -1/(1 - t), g^2 = 2t/(1 - t) (T = 0.999: |f| dt ~ 0.015).
        head = np.linspace(0.0, 0.9, N_EM - 300 + 1)
        tail = 1.0 - 0.1 * ((1.0 - sde.T) / 0.1) ** (np.arange(1, 301) / 300)
        return np.concatenate([head, tail])
    return sde.T * np.arange(N_EM + 1) / N_EM


@pytest.fixture(scope="module")
def em_noise():
    """Standard normal noise for the initial draw and every step, shared by all SDEs."""
    return np.random.default_rng(0).standard_normal((N_EM + 1, N_PATHS, len(X0)), dtype=np.float32)


@functools.partial(jax.jit, static_argnums=0)
def _simulate_em(sde, noise, grid):
    """Euler--Maruyama paths of the forward SDE from x0 = X0 (one column each).

    Returns the sample mean and variance over the paths of x(grid[k + 1]), `(N_EM, D)`
    each, the drift coefficient a(t) (f(x, t) = a(t) x) and diffusion g(t) on grid[:-1],
    and sigma(0).

    The paths start from the kernel at t = 0, x(0) ~ N(s(0) x0, sigma(0)^2): for VE that
    is N(x0, sigma_min^2), the convention (Song et al.) under which
    sigma(t)^2 = sigma_min^2 (sigma_max/sigma_min)^(2t) is the variance at t.
    """
    x0 = jnp.broadcast_to(jnp.asarray(X0, noise.dtype), noise.shape[1:])
    mean0, std0 = sde.marginal_prob(x0, jnp.zeros(N_PATHS))
    x = mean0 + batch_broadcast(std0, x0) * noise[0]

    def step(x, inputs):
        t, dt, z = inputs
        drift, diffusion = sde.sde(x, jnp.full((N_PATHS,), t))
        x = x + drift * dt + batch_broadcast(diffusion, x) * jnp.sqrt(dt) * z
        return x, (jnp.mean(x, 0), jnp.var(x, 0, ddof=1))

    moments = jax.lax.scan(step, x, (grid[:-1], jnp.diff(grid), noise[1:]))[1]
    coefficients = sde.sde(jnp.ones(grid.shape[0] - 1), grid[:-1])
    return moments, coefficients, std0[0]


def _em_exact_moments(a, g, std0, grid):
    """Exact mean coefficient and variance of the Euler--Maruyama chain on `grid` (float64).

    The SDEs are linear, f(x, t) = a(t) x, so the chain's moments obey
    m_{k+1} = (1 + a dt) m_k and v_{k+1} = (1 + a dt)^2 v_k + g^2 dt. Comparing them with
    marginal_prob gives the discretization bias of the simulation.
    """
    m, v = 1.0, float(std0) ** 2
    means, variances = [], []
    for a_k, g_k, dt_k in zip(np.asarray(a, np.float64).tolist(), np.asarray(g, np.float64).tolist(), np.diff(grid)):
        m, v = (1 + a_k * dt_k) * m, (1 + a_k * dt_k) ** 2 * v + g_k**2 * dt_k
        means.append(m)
        variances.append(v)
    return np.array(means), np.array(variances)


@sde_params_ve5
def test_marginal_prob_matches_euler_maruyama(sde, em_noise):
    grid = _em_grid(sde)
    assert len(grid) == N_EM + 1
    (emp_mean, emp_var), (a, g), std0 = _simulate_em(sde, em_noise, jnp.asarray(grid, jnp.float32))
    emp_mean, emp_var = np.asarray(emp_mean, np.float64), np.asarray(emp_var, np.float64)
    chain_m, chain_v = _em_exact_moments(a, g, std0, grid)
    rows = [int(np.argmin(np.abs(grid[1:] - frac * sde.T))) for frac in (0.25, 0.5, 1.0)]  # row k: t = grid[k + 1]
    times = grid[1:][rows]
    mean, std = sde.marginal_prob(jnp.asarray(np.tile(X0, (3, 1)), jnp.float32), jnp.asarray(times, jnp.float32))
    mean = np.asarray(mean, np.float64)
    var = np.broadcast_to(np.asarray(std, np.float64)[:, None] ** 2, mean.shape)
    emp_mean, emp_var = emp_mean[rows], emp_var[rows]
    se_mean = np.sqrt(emp_var / N_PATHS)
    se_var = var * math.sqrt(2.0 / (N_PATHS - 1))
    # Discretization bias of the simulation, computed exactly from the chain's moments.
    # The grid is fine enough for it to be negligible: at most half a standard error
    # (asserted), against a tolerance of K_SE standard errors.
    bias_mean = np.abs(chain_m[rows, None] * X0 - mean)
    bias_var = np.abs(chain_v[rows, None] - var)
    np.testing.assert_array_less(bias_mean, 0.5 * se_mean, err_msg=f"EM bias of the mean, t={times}")
    np.testing.assert_array_less(bias_var, 0.5 * se_var, err_msg=f"EM bias of the variance, t={times}")
    np.testing.assert_array_less(np.abs(emp_mean - mean), K_SE * se_mean + bias_mean, err_msg=f"mean, t={times}")
    np.testing.assert_array_less(np.abs(emp_var - var), K_SE * se_var + bias_var, err_msg=f"variance, t={times}")


# ---------------------------------------------------------------------------------------
# 2. The discrete chain converges to the SDE's marginal at T as N grows.

CHAIN_STEPS = (30, 100, 1000)  # N >= 30: the DDPM chain needs beta_max / N < 1 (beta_max = 20)


def _chain_times(sde):
    """The time at which `discretize` takes the chain's step i, i = 0 .. N - 1."""
    N = sde.N
    if isinstance(sde, subVPSDE):
        return np.arange(N) * (sde.T / N)  # Euler--Maruyama, dt = T / N
    if isinstance(sde, LinearGaussianPath):
        return np.arange(1, N + 1) * (sde.T / N)  # step i: the exact kernel from i T/N to (i + 1) T/N
    # VP and VE chains: step i is indexed by i = floor(t (N - 1) / T), i.e. t in
    # [i T/(N-1), (i+1) T/(N-1)). Take the middle of each cell (grid points themselves can
    # round down to i - 1) and t = T for the last step.
    return np.minimum((np.arange(N) + 0.5) / (N - 1), 1.0) * sde.T


@functools.partial(jax.jit, static_argnums=0)
def _chain_steps(sdes, times):
    """For each SDE (one per N): discretize at x = 1 and x = 2 for every step (one per
    batch entry), and the VP chain's index; and the marginal coefficients at T."""
    out = []
    for sde, t in zip(sdes, times):
        ones = jnp.ones_like(t)
        index = sde._index(t) if isinstance(sde, sde_lib.VariancePreserving) else jnp.arange(sde.N)
        out.append((sde.discretize(ones, t), sde.discretize(2.0 * ones, t), index))
    return out, sdes[0].marginal_coeffs(jnp.full((1,), sdes[0].T))


@sde_params_ve5
def test_discretization_converges_to_marginal(sde, x64):
    chains = tuple(sde.with_steps(N) for N in CHAIN_STEPS)
    assert [chain.N for chain in chains] == list(CHAIN_STEPS)
    steps, (s_T, std_T) = _chain_steps(chains, [_chain_times(chain) for chain in chains])
    s_T, var_T = float(s_T[0]), float(std_T[0]) ** 2
    errors = []
    for N, ((f, G), (f2, G2), index) in zip(CHAIN_STEPS, steps):
        np.testing.assert_array_equal(index, np.arange(N))
        # The chain is linear, x_{i+1} = (1 + c_i) x_i + G_i z, so Gaussian moments
        # propagate exactly: m <- (1 + c_i) m, v <- (1 + c_i)^2 v + G_i^2, from x_0 = 1.
        np.testing.assert_allclose(f2, 2.0 * np.asarray(f), rtol=1e-12, atol=1e-300)
        np.testing.assert_array_equal(G2, G)
        m, v = 1.0, 0.0
        for c_i, G_i in zip(np.asarray(f).tolist(), np.asarray(G).tolist()):
            m, v = (1.0 + c_i) * m, (1.0 + c_i) ** 2 * v + G_i**2
        assert np.isfinite(m) and np.isfinite(v)
        errors.append(max(abs(m - s_T) / s_T, abs(v - var_T) / var_T))  # relative errors
    errors = np.array(errors)
    if isinstance(sde, (VESDE, CosineVPSDE, LinearGaussianPath)):
        # These chains are exact at T for every N: SMLD's increments telescope to
        # sigma_max^2, the cosine betas are 1 - alpha-bar(t_{i+1}) / alpha-bar(t_i), and a
        # path's chain is its exact kernel between grid times.
        np.testing.assert_array_less(errors, 1e-10)
    else:
        # DDPM and Euler--Maruyama are first-order: each ~3x and ~10x increase of N must
        # shrink the error at least ~proportionally (factor 2 of slack for the constants).
        assert np.all(errors > 0), errors
        assert errors[1] < errors[0] * (CHAIN_STEPS[0] / CHAIN_STEPS[1]) * 2, errors
        assert errors[2] < errors[1] * (CHAIN_STEPS[1] / CHAIN_STEPS[2]) * 2, errors


# ---------------------------------------------------------------------------------------
# 3. prior_logp and prior_sampling.

PRIOR_SHAPE = (500, 4, 4, 3)  # image-shaped; one shape for every prior draw (one compile)
ALL_SDES = tuple(SDES) + (VESDE(sigma_max=5.0),)


@functools.partial(jax.jit, static_argnums=0)
def _jit_prior_samples(sdes, key):
    return [sde.prior_sampling(key, PRIOR_SHAPE) for sde in sdes]


@sde_params_ve5
def test_prior_logp_is_gaussian(sde, x64):
    std = _prior_std(sde)
    z = np.asarray(sde.prior_sampling(jax.random.PRNGKey(1), PRIOR_SHAPE))[:5]
    expected = stats.norm.logpdf(z, scale=std).sum(axis=(1, 2, 3))
    expected_mvn = stats.multivariate_normal(np.zeros(48), std**2 * np.eye(48)).logpdf(z.reshape(5, -1))
    logp = np.asarray(sde.prior_logp(jnp.asarray(z)))
    assert logp.shape == (5,)
    np.testing.assert_allclose(logp, expected, rtol=1e-12)
    np.testing.assert_allclose(logp, expected_mvn, rtol=1e-12)
    # Off the prior's typical set too (points at another scale).
    expected = stats.norm.logpdf(3.0 * z, scale=std).sum((1, 2, 3))
    np.testing.assert_allclose(sde.prior_logp(jnp.asarray(3.0 * z)), expected, rtol=1e-12)
    # float32 (the default) agrees to float32 precision: 48 summed terms, ~1e-6 relative.
    with jax.enable_x64(False):
        logp32 = sde.prior_logp(jnp.asarray(z, jnp.float32))
        assert logp32.dtype == jnp.float32
    np.testing.assert_allclose(logp32, logp, rtol=1e-5)


@sde_params_ve5
def test_prior_sampling_has_prior_moments(sde):
    std = _prior_std(sde)
    samples = _jit_prior_samples(ALL_SDES, jax.random.PRNGKey(2))  # under jit, float32
    z = samples[ALL_SDES.index(sde)]
    assert z.shape == PRIOR_SHAPE and z.dtype == jnp.float32
    # Every entry is an independent draw of N(0, std^2).
    check_gaussian(np.asarray(z, np.float64).reshape(-1, 1), np.zeros(1), np.full((1, 1), std**2))


# ---------------------------------------------------------------------------------------
# 5. Reverse-time SDE and probability-flow ODE.


def _test_score(x, t):
    """An arbitrary nonlinear, time-dependent 'score' to check the algebra with."""
    return jnp.sin(x) * batch_broadcast(1.0 + t, x) - 0.5 * x


@functools.partial(jax.jit, static_argnums=0)
def _forward_and_reverse(sde, x, t):
    out = {"forward": (sde.sde(x, t), sde.discretize(x, t)), "score": _test_score(x, t)}
    for name, pf in (("sde", False), ("ode", True)):
        rsde = sde.reverse(_test_score, probability_flow=pf)
        out[name] = (rsde.sde(x, t), rsde.discretize(x, t), rsde.prior_logp(x), rsde.marginal_prob(x, t))
    out["forward_extra"] = (sde.prior_logp(x), sde.marginal_prob(x, t))
    # A reverse SDE given N = 50 steps, and the reverse of the forward SDE with 50 steps.
    out["with_steps"] = (sde.reverse(_test_score).with_steps(50).discretize(x, t),
                         sde.with_steps(50).reverse(_test_score).discretize(x, t))
    return out


@functools.lru_cache(maxsize=None)
def _reverse_results(sde):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(4, 4, 4, 3))
    t = rng.uniform(0.01, sde.T, size=4)
    with jax.enable_x64(True):
        out = _forward_and_reverse(sde, jnp.asarray(x), jnp.asarray(t))
        return x, t, jax.tree.map(np.asarray, out)


@sde_params_classic
@pytest.mark.parametrize("probability_flow", [False, True], ids=["reverse_sde", "pf_ode"])
def test_reverse_drift_and_diffusion(sde, probability_flow):
    rsde = sde.reverse(_test_score, probability_flow=probability_flow)
    assert rsde.N == sde.N and rsde.T == sde.T and rsde.probability_flow == probability_flow
    x, t, out = _reverse_results(sde)
    (f, g), (f_chain, G) = out["forward"]
    score = out["score"]
    (rev_f, rev_g), (rev_f_chain, rev_G), logp, marginal = out["ode" if probability_flow else "sde"]
    assert rev_f.shape == x.shape and rev_f_chain.shape == x.shape and rev_g.shape == rev_G.shape == (4,)
    weight = 0.5 if probability_flow else 1.0
    # Reverse SDE: f - g^2 score with diffusion g; probability-flow ODE: f - g^2 score / 2, no diffusion.
    np.testing.assert_allclose(rev_f, f - weight * g[:, None, None, None] ** 2 * score, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(rev_g, np.zeros(4) if probability_flow else g)
    # The same for the discrete chain: f_i - G_i^2 score (x 1/2), and G_i or 0.
    np.testing.assert_allclose(rev_f_chain, f_chain - weight * G[:, None, None, None] ** 2 * score, rtol=1e-12,
                               atol=1e-12)
    np.testing.assert_array_equal(rev_G, np.zeros(4) if probability_flow else G)
    # The reverse process starts from the forward prior and reports the forward marginals.
    forward_logp, forward_marginal = out["forward_extra"]
    np.testing.assert_array_equal(logp, forward_logp)
    jax.tree.map(np.testing.assert_array_equal, marginal, forward_marginal)


@sde_params_classic
def test_reverse_with_steps_discretizes_with_new_steps(sde):
    """Changing N on a reverse SDE changes the chain it reverses, not only its label."""
    rsde = sde.reverse(_test_score).with_steps(50)
    expected = sde.with_steps(50).reverse(_test_score)
    assert rsde.N == 50 and rsde.forward.N == 50 and rsde == expected
    assert rsde.with_steps(None) is rsde and rsde.with_steps(50) is rsde
    got, want = _reverse_results(sde)[2]["with_steps"]
    jax.tree.map(np.testing.assert_array_equal, got, want)


# ---------------------------------------------------------------------------------------
# 6. Invalid parameters.


@pytest.mark.parametrize(
    "build",
    [
        lambda: VPSDE(beta_min=1.0, beta_max=1.0),
        lambda: VPSDE(beta_min=2.0, beta_max=1.0),
        lambda: VPSDE(beta_min=0.0),
        lambda: VPSDE(beta_min=-0.1),
        lambda: VPSDE(beta_max=float("inf")),
        lambda: VPSDE(N=0),
        lambda: subVPSDE(beta_min=20.0, beta_max=0.1),
        lambda: subVPSDE(beta_min=5.0, beta_max=5.0),
        lambda: subVPSDE(beta_max=-1.0),
        lambda: subVPSDE(N=-5),
        lambda: VESDE(sigma_min=0.0),
        lambda: VESDE(sigma_min=-0.01),
        lambda: VESDE(sigma_max=0.0),
        lambda: VESDE(sigma_min=5.0, sigma_max=5.0),
        lambda: VESDE(sigma_min=10.0, sigma_max=1.0),
        lambda: VESDE(sigma_max=float("nan")),
        lambda: VESDE(N=0),
        lambda: VESDE(N=2.5),
        lambda: CosineVPSDE(T=1.0),
        lambda: CosineVPSDE(T=0.0),
        lambda: CosineVPSDE(s=0.0),
        lambda: CosineVPSDE(N=0),
        lambda: VPSDE().with_steps(0),
        lambda: VESDE().with_steps(-1),
        lambda: sde_lib.get_sde("nosuchsde"),
        lambda: sde_lib.get_sde("ddpm"),
        lambda: RectifiedFlow(T=1.0),
        lambda: RectifiedFlow(T=0.0),
        lambda: RectifiedFlow(eps=0.0),
        lambda: RectifiedFlow(T=0.5, eps=0.5),
        lambda: RectifiedFlow(N=0),
        lambda: EDMPath(sigma_min=80.0, sigma_max=80.0),
        lambda: EDMPath(sigma_min=0.0),
        lambda: EDMPath(sigma_max=float("inf")),
        lambda: LinearPath(1.0, jnp.sqrt),
        lambda: LinearPath(lambda t: 2.0 - t, lambda t: t),  # alpha(0) = 2
        lambda: LinearPath(lambda t: 1.0 - t, lambda t: t, T=1.0),  # alpha(1) = 0
        lambda: LinearPath(lambda t: jnp.ones_like(t), lambda t: jnp.sin(4.0 * t)),  # sigma/alpha decreases
        lambda: LinearPath(lambda t: jnp.ones_like(t), lambda t: t, T=1.0, eps=1.0),
        lambda: LinearPath(lambda t: jnp.ones(()), lambda t: t),  # not elementwise
    ],
)
def test_invalid_parameters_raise(build):
    with pytest.raises(ValueError):
        build()


def test_get_sde_builds_by_name():
    assert isinstance(sde_lib.get_sde("VPSDE", beta_max=10.0), VPSDE)
    assert sde_lib.get_sde("subvpsde") == subVPSDE()
    assert sde_lib.get_sde("VESDE", sigma_max=5.0, N=10) == VESDE(sigma_max=5.0, N=10)
    assert isinstance(sde_lib.get_sde("cosinevpsde"), CosineVPSDE)
    assert sde_lib.get_sde("rectified_flow", T=0.99) == RectifiedFlow(T=0.99)
    assert sde_lib.get_sde("EDM", sigma_max=10.0) == EDMPath(sigma_max=10.0)
    # Paths hash and compare by value (LinearPath by its functions), so jit caches per path.
    assert hash(RectifiedFlow()) == hash(RectifiedFlow()) and RectifiedFlow() != RectifiedFlow(T=0.99)
    assert LinearPath(LINEAR_PATH.alpha_fn, LINEAR_PATH.sigma_fn, T=5.0) == LINEAR_PATH
    assert LinearPath(lambda t: jnp.exp(-t), LINEAR_PATH.sigma_fn, T=5.0) != LINEAR_PATH
    # The samplers' default last time: a path's eps (EDM's sigma_min).
    assert [sde_lib.default_eps(s) for s in (RectifiedFlow(), EDMPath(), EDMPath().reverse(None))] == [1e-3, 2e-3, 2e-3]


# ---------------------------------------------------------------------------------------
# 7. Shapes and dtypes; jit, vmap and grad.
# 8. sigma_to_t inverts sigma(t) / s(t).

B, IMAGE = 3, (4, 4, 2)
_PER_EXAMPLE_SHAPES = ["x", "b", "x", "b", "b", "b", "x", "b", "b", "b"]


def _outputs(sde, x, t):
    """Every deterministic per-example output, as a flat tuple (shapes: _PER_EXAMPLE_SHAPES)."""
    drift, diffusion = sde.sde(x, t)
    mean, std = sde.marginal_prob(x, t)
    s, sigma = sde.marginal_coeffs(t)
    f, G = sde.discretize(x, t)
    return drift, diffusion, mean, std, s, sigma, f, G, sde.prior_logp(x), sde.sigma_to_t(sigma / s)


def _inputs(sde):
    rng = np.random.default_rng(4)
    return rng.normal(size=(B,) + IMAGE), rng.uniform(0.05, sde.T, size=B)


# t on which sigma_to_t is inverted, as fractions of T (0 included), and noise ratios.
T_FRACTIONS = np.concatenate([np.zeros(1), np.geomspace(1e-4, 1.0, 30)])


@functools.partial(jax.jit, static_argnums=0)
def _float32_results(sde, x, t, t_grid):
    return _outputs(sde, x, t), sde.sigma_to_t(_noise_ratio(sde, t_grid))


@functools.partial(jax.jit, static_argnums=0)
def _float64_results(sde, x, t, t_grid, r_grid):
    out = {"jit": _outputs(sde, x, t)}
    # Each example alone, as a batch of one, under vmap.
    out["vmap"] = jax.vmap(lambda xi, ti: _outputs(sde, xi[None], ti[None]))(x, t)

    # Gradients, with central finite differences (h = 1e-6) to compare.
    h = 1e-6

    def central(fn, u):
        return (fn(u + h) - fn(u - h)) / (2 * h)

    for i, name in enumerate(("s", "sigma")):  # per-example, so the grad of the sum is elementwise
        coeff = lambda u: sde.marginal_coeffs(u)[i]
        out[name] = (jax.grad(lambda u: jnp.sum(coeff(u)))(t), central(coeff, t))
    out["drift"] = (jax.grad(lambda y: jnp.sum(sde.sde(y, t)[0]))(x), sde.sde(jnp.ones_like(t), t)[0])
    out["prior_logp"] = jax.grad(lambda z: jnp.sum(sde.prior_logp(z)))(x)
    # The marginal coefficients by autodiff, and the SDE's f(t) (f(x, t) = f(t) x) and g(t).
    (s, sigma), (ds, dsigma) = jax.jvp(sde.marginal_coeffs, (t,), (jnp.ones_like(t),))
    out["moment_odes"] = (s, ds, sigma**2, 2 * sigma * dsigma, *sde.sde(jnp.ones_like(t), t))
    ratio = functools.partial(_noise_ratio, sde)
    out["sigma_to_t_grad"] = (jax.grad(lambda r: jnp.sum(sde.sigma_to_t(r)))(ratio(t)), 1.0 / central(ratio, t))

    # sigma_to_t: closed form and generic bisection on r(t_grid), and r(t(r)) on r_grid.
    r = ratio(t_grid)
    out["sigma_to_t"] = (sde.sigma_to_t(r), SDE.sigma_to_t(sde, r), ratio(sde.sigma_to_t(r_grid)))
    return out


@functools.lru_cache(maxsize=None)
def _results(sde, x64):
    """Jitted outputs of every method, in float32 (x64=False) or float64; cached per SDE."""
    x, t = _inputs(sde)
    t_grid = T_FRACTIONS * sde.T
    with jax.enable_x64(x64):
        if not x64:
            out = _float32_results(sde, jnp.asarray(x, jnp.float32), jnp.asarray(t, jnp.float32),
                                   jnp.asarray(t_grid, jnp.float32))
            return jax.tree.map(np.asarray, out)  # numpy keeps the dtypes the tests check
        s, sigma = sde.marginal_coeffs(jnp.asarray(t_grid[[1, -1]]))
        r_grid = np.geomspace(*np.asarray(sigma / s), 25)
        out = jax.tree.map(np.asarray, _float64_results(sde, jnp.asarray(x), jnp.asarray(t), jnp.asarray(t_grid),
                                                        jnp.asarray(r_grid)))
        out["r_grid"] = r_grid
        return out


def _check_shapes_and_dtype(outputs, dtype):
    for out, kind in zip(outputs, _PER_EXAMPLE_SHAPES):
        assert out.shape == ((B,) + IMAGE if kind == "x" else (B,))
        assert out.dtype == dtype
        assert np.all(np.isfinite(out))


@sde_params
def test_shapes_and_float32_default(sde):
    outputs, _ = _results(sde, False)
    _check_shapes_and_dtype(outputs, jnp.float32)


@sde_params
def test_float64_under_x64(sde, x64):
    _check_shapes_and_dtype(_results(sde, True)["jit"], jnp.float64)
    prior = sde.prior_sampling(jax.random.PRNGKey(5), PRIOR_SHAPE)
    assert prior.shape == PRIOR_SHAPE and prior.dtype == jnp.float64


@sde_params
def test_jit_and_vmap_agree_with_eager(sde, x64):
    x, t = _inputs(sde)
    eager = _outputs(sde, jnp.asarray(x), jnp.asarray(t))
    _check_shapes_and_dtype(eager, jnp.float64)
    out = _results(sde, True)
    for e, j, v in zip(eager, out["jit"], out["vmap"]):
        np.testing.assert_allclose(j, e, rtol=1e-12, atol=1e-300)
        np.testing.assert_allclose(v[:, 0], e, rtol=1e-12, atol=1e-300)


@sde_params
def test_grad(sde):
    x, _ = _inputs(sde)
    out = _results(sde, True)
    # d s(t) / dt and d sigma(t) / dt against finite differences.
    np.testing.assert_allclose(*out["s"], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(*out["sigma"], rtol=1e-6, atol=1e-9)
    # f(x, t) = a(t) x, so d/dx of the drift's sum is a(t) everywhere.
    grad, a = out["drift"]
    np.testing.assert_allclose(grad, np.broadcast_to(a[:, None, None, None], x.shape), rtol=1e-12)
    # grad of the prior log-density: -z / std^2.
    np.testing.assert_allclose(out["prior_logp"], -x / _prior_std(sde) ** 2, rtol=1e-12)
    # d sigma_to_t / d r = 1 / (d r / dt), r(t) = sigma(t) / s(t) (the bisection included).
    np.testing.assert_allclose(*out["sigma_to_t_grad"], rtol=1e-6)


@sde_params
def test_marginal_coefficients_solve_the_moment_odes(sde):
    """The kernel N(s x0, sigma^2 I) of dx = f x dt + g dw solves ds/dt = f s and
    d sigma^2/dt = 2 f sigma^2 + g^2: the SDE's f and g against autodiff of marginal_coeffs
    (for the paths this checks f = alpha'/alpha and g^2 = (sigma^2)' - 2 f sigma^2, closed
    forms and autodiff alike)."""
    s, ds, var, dvar, f, g = _results(sde, True)["moment_odes"]
    np.testing.assert_allclose(ds, f * s, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(dvar, 2 * f * var + g**2, rtol=1e-10, atol=1e-14)


def test_subvp_uses_generic_bisection():
    assert subVPSDE.sigma_to_t is SDE.sigma_to_t and LinearPath.sigma_to_t is SDE.sigma_to_t
    for cls in (VPSDE, VESDE, CosineVPSDE, RectifiedFlow, EDMPath):
        assert cls.sigma_to_t is not SDE.sigma_to_t  # closed forms, checked against the bisection below


@sde_params
def test_sigma_to_t_inverts_noise_ratio(sde):
    out = _results(sde, True)
    closed, bisection, r_back = out["sigma_to_t"]
    t = T_FRACTIONS * sde.T
    # float64: exact to far below the error of any wrong inverse.
    np.testing.assert_allclose(closed, t, rtol=1e-9, atol=1e-12)
    # The generic bisection agrees (for subVP it is the same function).
    np.testing.assert_allclose(bisection, t, rtol=1e-9, atol=1e-12)
    # And the other way round: r(t(r)) = r on a grid of noise levels.
    np.testing.assert_allclose(r_back, out["r_grid"], rtol=1e-9)


@sde_params
def test_sigma_to_t_float32(sde):
    _, t_back = _results(sde, False)
    assert t_back.dtype == jnp.float32
    # float32 rounding of r (~1e-7 relative) moves t by at most ~1e-5 for these schedules
    # (t -> 0 for the VP types excepted, where r ~ sqrt(t): there the error is ~1e-7 relative).
    t = T_FRACTIONS * sde.T
    np.testing.assert_allclose(t_back, t, rtol=1e-5, atol=1e-5)
