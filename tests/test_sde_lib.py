"""Tests of scoresde.sde_lib: forward SDEs, their discretizations, reverse forms and priors.

Statistical checks use k = 5 standard errors (a false alarm has probability ~6e-7 per
comparison, and every key is fixed, so the tests are deterministic). Deterministic
float64 checks use tolerances far below any real error of a wrong formula.
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
from scoresde.sde_lib import SDE, CosineVPSDE, VESDE, VPSDE, batch_broadcast, subVPSDE

K_SE = 5.0  # tolerance of every statistical comparison, in standard errors

# Every SDE with its default parameters, plus VE with sigma_max = 5: the default
# sigma_max = 50 is what is used in practice, the smaller one checks that the
# coefficients really follow the parameters (the cost of the tests is the same).
SDES = [VPSDE(), subVPSDE(), VESDE(), VESDE(sigma_max=5.0), CosineVPSDE()]
SDE_IDS = ["vp", "subvp", "ve", "ve_sigma5", "cosinevp"]
sde_params = pytest.mark.parametrize("sde", SDES, ids=SDE_IDS)


@pytest.fixture
def x64():
    """Enable float64 for one test; the previous setting comes back afterwards."""
    with jax.enable_x64(True):
        yield


# ---------------------------------------------------------------------------------------
# 1. marginal_prob against an Euler--Maruyama simulation of the forward SDE.

N_PATHS = 4000
N_EM = 1000
X0 = np.array([-1.0, 0.5, 2.0])  # three fixed starting points, simulated side by side


def _em_grid(sde):
    """The Euler--Maruyama time grid from 0 to T: N_EM uniform steps (dt = 1e-3 for T = 1)."""
    if isinstance(sde, CosineVPSDE):
        # beta(t) ~ 2 / (1 - t) diverges at t = 1 (beta(T) ~ 370 at T = 0.9946), so a
        # uniform step would give beta dt ~ 0.4 near T. Uniform steps of 1e-3 up to
        # t = 0.9 (where beta ~ 20, as VP's beta_max), then 300 steps uniform in
        # -log(1 - t), which keep beta dt ~ 2 d(-log(1 - t)) ~ 0.02 up to T.
        head = np.linspace(0.0, 0.9, 901)
        tail = 1.0 - 0.1 * ((1.0 - sde.T) / 0.1) ** (np.arange(1, 301) / 300)
        return np.concatenate([head, tail])
    return sde.T * np.arange(N_EM + 1) / N_EM


@functools.partial(jax.jit, static_argnums=0)
def _simulate_em(sde, key, x0, grid):
    """Per-step sample mean and variance (over N_PATHS paths) of x(grid[k + 1]), `(N_EM, D)` each.

    The paths start from the kernel at t = 0, x(0) ~ N(s(0) x0, sigma(0)^2): for VE that
    is N(x0, sigma_min^2), the convention (Song et al.) under which
    sigma(t)^2 = sigma_min^2 (sigma_max/sigma_min)^(2t) is the variance at t.
    """
    x0 = jnp.broadcast_to(x0, (N_PATHS,) + x0.shape)
    key0, key = jax.random.split(key)
    mean0, std0 = sde.marginal_prob(x0, jnp.zeros(N_PATHS))
    x = mean0 + batch_broadcast(std0, x0) * jax.random.normal(key0, x0.shape)

    def step(x, inputs):
        k, t, dt = inputs
        drift, diffusion = sde.sde(x, jnp.full((N_PATHS,), t))
        z = jax.random.normal(jax.random.fold_in(key, k), x.shape)
        x = x + drift * dt + batch_broadcast(diffusion, x) * jnp.sqrt(dt) * z
        return x, (jnp.mean(x, 0), jnp.var(x, 0, ddof=1))

    inputs = (jnp.arange(grid.shape[0] - 1), grid[:-1], jnp.diff(grid))
    return jax.lax.scan(step, x, inputs)[1]


def _em_exact_moments(sde, grid):
    """Exact mean coefficient and variance of the Euler--Maruyama chain on `grid` (float64).

    The SDEs are linear, f(x, t) = a(t) x, so the chain's moments obey
    m_{k+1} = (1 + a dt) m_k and v_{k+1} = (1 + a dt)^2 v_k + g^2 dt. Comparing them with
    marginal_prob gives the discretization bias of the simulation.
    """
    t, dt = grid[:-1], np.diff(grid)
    drift, g = sde.sde(jnp.ones(len(t)), jnp.asarray(t, jnp.float32))
    a, g = np.asarray(drift, np.float64), np.asarray(g, np.float64)
    m, v = 1.0, float(sde.marginal_prob(jnp.ones(1), jnp.zeros(1))[1][0]) ** 2
    means, variances = [], []
    for a_k, g_k, dt_k in zip(a, g, dt):
        m, v = (1 + a_k * dt_k) * m, (1 + a_k * dt_k) ** 2 * v + g_k**2 * dt_k
        means.append(m)
        variances.append(v)
    return np.array(means), np.array(variances)


@sde_params
def test_marginal_prob_matches_euler_maruyama(sde):
    grid = _em_grid(sde)
    emp_mean, emp_var = map(np.asarray, _simulate_em(sde, jax.random.PRNGKey(0), jnp.asarray(X0, jnp.float32),
                                                      jnp.asarray(grid, jnp.float32)))
    chain_m, chain_v = _em_exact_moments(sde, grid)
    for frac in (0.25, 0.5, 1.0):
        k = int(np.argmin(np.abs(grid[1:] - frac * sde.T)))  # row k is the state at grid[k + 1]
        t = grid[k + 1]
        mean, std = sde.marginal_prob(jnp.asarray(X0[None], jnp.float32), jnp.full((1,), t, jnp.float32))
        mean, var = np.asarray(mean[0], np.float64), float(std[0]) ** 2
        se_mean = np.sqrt(emp_var[k] / N_PATHS)
        se_var = var * math.sqrt(2.0 / (N_PATHS - 1))
        # Discretization bias of the simulation, computed exactly from the chain's moments.
        # The grid is fine enough for it to be negligible: at most half a standard error
        # (asserted), against a tolerance of K_SE standard errors.
        bias_mean = np.abs(chain_m[k] * X0 - mean)
        bias_var = abs(chain_v[k] - var)
        assert np.all(bias_mean <= 0.5 * se_mean) and bias_var <= 0.5 * se_var, (t, bias_mean, bias_var)
        np.testing.assert_array_less(np.abs(emp_mean[k] - mean), K_SE * se_mean + bias_mean, err_msg=f"mean, t={t}")
        np.testing.assert_array_less(np.abs(emp_var[k] - var), K_SE * se_var + bias_var, err_msg=f"var, t={t}")


# ---------------------------------------------------------------------------------------
# 2. The discrete chain converges to the SDE's marginal at T as N grows.

CHAIN_STEPS = (30, 100, 1000)  # N >= 30: the DDPM chain needs beta_max / N < 1 (beta_max = 20)


def _chain_times(sde, N):
    """The time at which `discretize` takes the chain's step i, i = 0 .. N - 1."""
    if isinstance(sde, subVPSDE):
        return np.arange(N) * (sde.T / N)  # Euler--Maruyama, dt = T / N
    # VP and VE chains: step i is indexed by i = floor(t (N - 1) / T), i.e. t in
    # [i T/(N-1), (i+1) T/(N-1)). Take the middle of each cell (grid points themselves can
    # round down to i - 1) and t = T for the last step.
    return np.minimum((np.arange(N) + 0.5) / (N - 1), 1.0) * sde.T


def _chain_moments_at_T(sde, N):
    """Mean coefficient and variance of x_N given x_0 = x, through N chain steps (float64)."""
    sde = sde.with_steps(N)
    assert sde.N == N
    t = jnp.asarray(_chain_times(sde, N))
    if isinstance(sde, sde_lib.VariancePreserving):
        np.testing.assert_array_equal(sde._index(t), np.arange(N))
    ones = jnp.ones(N)
    f, G = sde.discretize(ones, t)  # step i at x = 1, one step per batch entry
    f2, G2 = sde.discretize(2.0 * ones, t)
    # The chain is linear, x_{i+1} = (1 + c_i) x_i + G_i z, so Gaussian moments propagate exactly.
    np.testing.assert_allclose(f2, 2.0 * f, rtol=1e-12, atol=1e-300)
    np.testing.assert_array_equal(G2, G)
    m, v = 1.0, 0.0
    for c_i, G_i in zip(np.asarray(f), np.asarray(G)):
        m, v = (1.0 + c_i) * m, (1.0 + c_i) ** 2 * v + G_i**2
    return m, v


@sde_params
def test_discretization_converges_to_marginal(sde, x64):
    s_T, std_T = sde.marginal_prob(jnp.ones(1), jnp.full(1, sde.T))
    s_T, var_T = float(s_T[0]), float(std_T[0]) ** 2
    errors = []
    for N in CHAIN_STEPS:
        m, v = _chain_moments_at_T(sde, N)
        assert np.isfinite(m) and np.isfinite(v)
        # Relative errors of the mean coefficient and of the variance.
        errors.append(max(abs(m - s_T) / s_T, abs(v - var_T) / var_T))
    errors = np.array(errors)
    if isinstance(sde, (VESDE, CosineVPSDE)):
        # These chains are exact at T for every N: SMLD's increments telescope to
        # sigma_max^2, and the cosine betas are 1 - alpha-bar(t_{i+1}) / alpha-bar(t_i).
        np.testing.assert_array_less(errors, 1e-10)
    else:
        # DDPM and Euler--Maruyama are first-order: each ~3x and ~10x increase of N must
        # shrink the error at least ~proportionally (factor 2 of slack for the constants).
        assert np.all(errors > 0), errors
        assert errors[1] < errors[0] * (CHAIN_STEPS[0] / CHAIN_STEPS[1]) * 2, errors
        assert errors[2] < errors[1] * (CHAIN_STEPS[1] / CHAIN_STEPS[2]) * 2, errors
        assert errors[2] < 0.05, errors


# ---------------------------------------------------------------------------------------
# 3. prior_logp and prior_sampling.


@sde_params
def test_prior_logp_is_gaussian(sde, x64):
    std = sde.sigma_max if isinstance(sde, VESDE) else 1.0
    z = sde.prior_sampling(jax.random.PRNGKey(1), (5, 4, 4, 3))
    assert z.shape == (5, 4, 4, 3)
    z = np.asarray(z)
    expected = stats.norm.logpdf(z, scale=std).sum(axis=(1, 2, 3))
    flat = z.reshape(5, -1)
    expected_mvn = stats.multivariate_normal(np.zeros(48), std**2 * np.eye(48)).logpdf(flat)
    logp = np.asarray(sde.prior_logp(jnp.asarray(z)))
    assert logp.shape == (5,)
    np.testing.assert_allclose(logp, expected, rtol=1e-12)
    np.testing.assert_allclose(logp, expected_mvn, rtol=1e-12)
    # Off the prior's samples too (points at other scales).
    np.testing.assert_allclose(sde.prior_logp(jnp.asarray(3.0 * z)), stats.norm.logpdf(3.0 * z, scale=std).sum((1, 2, 3)),
                               rtol=1e-12)
    # float32 (the default) agrees to float32 precision: 48 summed terms, ~1e-6 relative.
    logp32 = np.asarray(sde.prior_logp(jnp.asarray(z, jnp.float32)))
    np.testing.assert_allclose(logp32, expected, rtol=1e-5)


@sde_params
def test_prior_sampling_has_prior_moments(sde):
    std = sde.sigma_max if isinstance(sde, VESDE) else 1.0
    z = np.asarray(sde.prior_sampling(jax.random.PRNGKey(2), (500, 4, 4, 3)), np.float64).ravel()
    n = z.size
    assert abs(z.mean()) < K_SE * std / math.sqrt(n)
    assert abs(z.var(ddof=1) - std**2) < K_SE * std**2 * math.sqrt(2.0 / (n - 1))


# ---------------------------------------------------------------------------------------
# 5. Reverse-time SDE and probability-flow ODE.


def _test_score(x, t):
    """An arbitrary nonlinear, time-dependent 'score' to check the algebra with."""
    return jnp.sin(x) * batch_broadcast(1.0 + t, x) - 0.5 * x


@sde_params
@pytest.mark.parametrize("probability_flow", [False, True], ids=["reverse_sde", "pf_ode"])
def test_reverse_drift_and_diffusion(sde, probability_flow, x64):
    key_x, key_t = jax.random.split(jax.random.PRNGKey(3))
    x = jax.random.normal(key_x, (4, 4, 4, 3))
    t = jax.random.uniform(key_t, (4,), minval=0.01, maxval=sde.T)
    rsde = sde.reverse(_test_score, probability_flow=probability_flow)
    assert rsde.N == sde.N and rsde.T == sde.T
    weight = 0.5 if probability_flow else 1.0
    score = _test_score(x, t)

    f, g = sde.sde(x, t)
    rev_f, rev_g = rsde.sde(x, t)
    g2 = np.asarray(g)[:, None, None, None] ** 2
    np.testing.assert_allclose(rev_f, np.asarray(f) - weight * g2 * np.asarray(score), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(rev_g, np.zeros(4) if probability_flow else g, rtol=0, atol=0)
    assert rev_f.shape == x.shape and rev_g.shape == (4,)

    f, G = sde.discretize(x, t)
    rev_f, rev_G = rsde.discretize(x, t)
    G2 = np.asarray(G)[:, None, None, None] ** 2
    np.testing.assert_allclose(rev_f, np.asarray(f) - weight * G2 * np.asarray(score), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(rev_G, np.zeros(4) if probability_flow else G, rtol=0, atol=0)

    # The reverse process starts from the forward prior and reports the forward marginals.
    np.testing.assert_array_equal(rsde.prior_logp(x), sde.prior_logp(x))
    np.testing.assert_array_equal(rsde.marginal_prob(x, t)[1], sde.marginal_prob(x, t)[1])


@pytest.mark.parametrize("sde", [VPSDE(), subVPSDE(), VESDE(), CosineVPSDE()], ids=["vp", "subvp", "ve", "cosinevp"])
def test_reverse_with_steps_discretizes_with_new_steps(sde, x64):
    """Changing N on a reverse SDE changes the chain it reverses, not only its label."""
    x = jnp.ones((3, 2))
    t = jnp.array([0.1, 0.5, 0.9]) * sde.T
    rsde = sde.reverse(_test_score).with_steps(50)
    expected = sde.with_steps(50).reverse(_test_score)
    assert rsde.N == 50 and rsde.forward.N == 50
    for got, want in zip(rsde.discretize(x, t), expected.discretize(x, t)):
        np.testing.assert_array_equal(got, want)


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


# ---------------------------------------------------------------------------------------
# 7. Shapes and dtypes; jit, vmap and grad.

B, IMAGE = 3, (4, 4, 2)


def _outputs(sde, x, t):
    """Every deterministic per-example output, as a flat tuple."""
    drift, diffusion = sde.sde(x, t)
    mean, std = sde.marginal_prob(x, t)
    s, sigma = sde.marginal_coeffs(t)
    f, G = sde.discretize(x, t)
    return drift, diffusion, mean, std, s, sigma, f, G, sde.prior_logp(x), sde.sigma_to_t(sigma / s)


_PER_EXAMPLE_SHAPES = ["x", "b", "x", "b", "b", "b", "x", "b", "b", "b"]


def _inputs(sde, dtype):
    key_x, key_t = jax.random.split(jax.random.PRNGKey(4))
    x = jax.random.normal(key_x, (B,) + IMAGE, dtype)
    t = jax.random.uniform(key_t, (B,), dtype, minval=0.05, maxval=sde.T)
    return x, t


def _check_shapes_and_dtype(sde, x, t, dtype):
    outs = _outputs(sde, x, t)
    for out, kind in zip(outs, _PER_EXAMPLE_SHAPES):
        assert out.shape == (x.shape if kind == "x" else (B,))
        assert out.dtype == dtype
        assert np.all(np.isfinite(out))
    prior = sde.prior_sampling(jax.random.PRNGKey(5), x.shape)
    assert prior.shape == x.shape and prior.dtype == dtype
    return outs


@sde_params
def test_shapes_and_float32_default(sde):
    x, t = _inputs(sde, jnp.float32)
    _check_shapes_and_dtype(sde, x, t, jnp.float32)


@sde_params
def test_float64_under_x64(sde, x64):
    x, t = _inputs(sde, jnp.float64)
    _check_shapes_and_dtype(sde, x, t, jnp.float64)


@sde_params
def test_jit_and_vmap_agree_with_eager(sde, x64):
    x, t = _inputs(sde, jnp.float64)
    eager = _outputs(sde, x, t)
    jitted = jax.jit(_outputs, static_argnums=0)(sde, x, t)
    # vmap over examples, each evaluated as a batch of one.
    per_example = jax.vmap(lambda xi, ti: _outputs(sde, xi[None], ti[None]))(x, t)
    for e, j, v in zip(eager, jitted, per_example):
        np.testing.assert_allclose(j, e, rtol=1e-12, atol=1e-300)
        np.testing.assert_allclose(v[:, 0], e, rtol=1e-12, atol=1e-300)
    # prior_sampling under jit with a static shape.
    sample = jax.jit(sde.prior_sampling, static_argnums=1)(jax.random.PRNGKey(6), x.shape)
    np.testing.assert_array_equal(sample, sde.prior_sampling(jax.random.PRNGKey(6), x.shape))


@sde_params
def test_grad(sde, x64):
    x, t = _inputs(sde, jnp.float64)
    h = 1e-6

    def central(fn, u):
        return (fn(u + h) - fn(u - h)) / (2 * h)

    # d sigma(t) / dt and d s(t) / dt (per example, so the grad of the sum is elementwise).
    for which in (0, 1):
        coeff = lambda u: sde.marginal_coeffs(u)[which]
        grad = jax.grad(lambda u: jnp.sum(coeff(u)))(t)
        np.testing.assert_allclose(grad, central(coeff, t), rtol=1e-6, atol=1e-9)

    # d/dx of the drift's sum: f(x, t) = a(t) x, so the gradient is a(t) everywhere.
    drift_coef = sde.sde(jnp.ones(B), t)[0]
    grad = jax.grad(lambda y: jnp.sum(sde.sde(y, t)[0]))(x)
    np.testing.assert_allclose(grad, jnp.broadcast_to(batch_broadcast(drift_coef, x), x.shape), rtol=1e-12)

    # grad of the prior log-density: -z / std^2.
    var = sde.sigma_max**2 if isinstance(sde, VESDE) else 1.0
    np.testing.assert_allclose(jax.grad(lambda z: jnp.sum(sde.prior_logp(z)))(x), -x / var, rtol=1e-12)

    # d sigma_to_t / d r = 1 / (d r / dt), r(t) = sigma(t) / s(t) (the bisection included).
    ratio = lambda u: (lambda s, sigma: sigma / s)(*sde.marginal_coeffs(u))
    r = ratio(t)
    dt_dr = jax.grad(lambda u: jnp.sum(sde.sigma_to_t(u)))(r)
    np.testing.assert_allclose(dt_dr, 1.0 / central(ratio, t), rtol=1e-6)


# ---------------------------------------------------------------------------------------
# 8. sigma_to_t inverts sigma(t) / s(t).


def test_subvp_uses_generic_bisection():
    assert subVPSDE.sigma_to_t is SDE.sigma_to_t


@sde_params
def test_sigma_to_t_inverts_noise_ratio(sde, x64):
    t = jnp.concatenate([jnp.zeros(1), jnp.geomspace(1e-4, 1.0, 30)]) * sde.T
    s, sigma = sde.marginal_coeffs(t)
    r = sigma / s
    # float64: exact to far below the error of any wrong inverse.
    np.testing.assert_allclose(sde.sigma_to_t(r), t, rtol=1e-9, atol=1e-12)
    # The generic bisection agrees with every closed form.
    np.testing.assert_allclose(SDE.sigma_to_t(sde, r), t, rtol=1e-9, atol=1e-12)
    # And the other way round: r(t(r)) = r on a grid of noise levels.
    r_grid = jnp.geomspace(float(r[1]), float(r[-1]), 25)
    s2, sigma2 = sde.marginal_coeffs(sde.sigma_to_t(r_grid))
    np.testing.assert_allclose(sigma2 / s2, r_grid, rtol=1e-9)


@sde_params
def test_sigma_to_t_float32(sde):
    t = jnp.linspace(0.02, 1.0, 20, dtype=jnp.float32) * sde.T
    s, sigma = sde.marginal_coeffs(t)
    out = sde.sigma_to_t(sigma / s)
    assert out.dtype == jnp.float32
    # float32 rounding of r (~1e-7 relative) moves t by at most ~1e-5 for these schedules.
    np.testing.assert_allclose(out, t, rtol=0, atol=1e-4)
