"""Tests of scoresde.analytic: exact Gaussian-mixture targets under every SDE, and the toy data sets.

Ground truth is independent of the module: scipy's multivariate normal for densities,
jax.grad of the log-density for scores, sample-size standard errors (K_SE = 5 of them,
fixed seeds) for samplers. Work is done eagerly with shared shapes, so the compiled
primitives are reused across cases (compiling is what costs on the small test machine).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats
from scipy.special import logsumexp

from scoresde import analytic
from scoresde.analytic import GaussianMixture
from scoresde.sde_lib import CosineVPSDE, EDMPath, RectifiedFlow, VESDE, VPSDE, subVPSDE

from conftest import K_SE, LINEAR_PATH, check_gaussian

N_SAMPLES = 20000  # every sampler draws this many points (one shape, one compile per primitive)

# The SDEs, then the linear Gaussian paths (rectified flow, EDM's, conftest's user-defined one).
SDES = [VPSDE(), subVPSDE(), VESDE(), CosineVPSDE(), RectifiedFlow(), EDMPath(), LINEAR_PATH]
SDE_IDS = ["vp", "subvp", "ve", "cosinevp", "rf", "edm", "linear"]


def _mixture_params(dim, full, seed=0, K=3):
    """Unnormalized weights, means and (full `(K, D, D)` or diagonal `(K, D)`) covariances."""
    rng = np.random.default_rng(seed)
    weights = rng.uniform(0.5, 2.0, K)
    means = rng.normal(scale=2.0, size=(K, dim))
    if full:
        a = rng.normal(size=(K, dim, dim)) / math.sqrt(dim)
        covs = a @ np.swapaxes(a, 1, 2) + 0.1 * np.eye(dim)  # correlated, eigenvalues >= 0.1
    else:
        covs = rng.uniform(0.1, 1.5, size=(K, dim))
    return weights, means, covs


def _full(covs):
    return covs if covs.ndim == 3 else np.stack([np.diag(c) for c in covs])


def _draw(weights, means, covs, n, rng):
    """n points of the mixture, drawn with numpy (independent of GaussianMixture.sample)."""
    labels = rng.choice(len(weights), size=n, p=weights / weights.sum())
    chol = np.linalg.cholesky(_full(covs))
    z = rng.normal(size=(n, means.shape[1]))
    return means[labels] + np.einsum("nde,ne->nd", chol[labels], z)


def _scipy_log_components(weights, means, covs, x, s, sigma):
    """log w_k + log N(x_b; s_b mu_k, s_b^2 Sigma_k + sigma_b^2 I), `(B, K)`, with scipy."""
    w = weights / weights.sum()
    full = _full(covs)
    eye = np.eye(means.shape[1])
    return np.array([
        [math.log(w[k]) + stats.multivariate_normal(s_b * means[k], s_b**2 * full[k] + sig_b**2 * eye).logpdf(x_b)
         for k in range(len(w))]
        for x_b, s_b, sig_b in zip(x, s, sigma)
    ])


# Several t per batch (t is per example): from almost clean data to the prior.
T_FRACTIONS = np.array([1e-3, 1e-2, 0.1, 0.3, 0.6, 1.0])


def _noisy_points(weights, means, covs, sde, seed=1):
    """Points of p_t at t = T_FRACTIONS * T (two each), plus the same count three times farther out."""
    rng = np.random.default_rng(seed)
    t = np.repeat(T_FRACTIONS * sde.T, 2)
    with jax.enable_x64(True):
        s, sigma = map(np.asarray, sde.marginal_coeffs(jnp.asarray(t)))
    x0 = _draw(weights, means, covs, len(t), rng)
    x = s[:, None] * x0 + sigma[:, None] * rng.normal(size=x0.shape)
    return np.concatenate([x, 3.0 * x]), np.concatenate([t, t])


# ---------------------------------------------------------------------------------------
# 4. The analytic score is the gradient of the exact perturbed log-density, which is
#    the scipy mixture of N(s mu_k, s^2 Sigma_k + sigma^2 I).


@pytest.mark.parametrize("sde", SDES, ids=SDE_IDS)
@pytest.mark.parametrize("dim", [2, 16])
@pytest.mark.parametrize("full", [True, False], ids=["full_cov", "diag_cov"])
def test_score_is_grad_of_log_prob_t(sde, dim, full, x64):
    weights, means, covs = _mixture_params(dim, full)
    gm = GaussianMixture(weights, means, covs)
    x, t = map(jnp.asarray, _noisy_points(weights, means, covs, sde))
    score = np.asarray(gm.score_fn(sde)(x, t))
    grad = np.asarray(jax.grad(lambda y: jnp.sum(gm.log_prob_t(y, t, sde)))(x))  # examples are independent
    assert score.shape == x.shape
    # float64: both are exact to ~1e-13 relative; a wrong score is off by O(1).
    np.testing.assert_allclose(score, grad, rtol=1e-9, atol=1e-9 * np.abs(grad).max())


@pytest.mark.parametrize("sde", SDES, ids=SDE_IDS)
@pytest.mark.parametrize("dim", [2, 16])
@pytest.mark.parametrize("full", [True, False], ids=["full_cov", "diag_cov"])
def test_log_prob_t_matches_scipy_mixture(sde, dim, full, x64):
    weights, means, covs = _mixture_params(dim, full)
    gm = GaussianMixture(weights, means, covs)
    x, t = _noisy_points(weights, means, covs, sde)
    s, sigma = map(np.asarray, sde.marginal_coeffs(jnp.asarray(t)))
    log_comp = _scipy_log_components(weights, means, covs, x, s, sigma)
    np.testing.assert_allclose(gm.log_prob_t(jnp.asarray(x), jnp.asarray(t), sde), logsumexp(log_comp, axis=1),
                               rtol=1e-10)
    # The exact noisy classifier: the posterior over components.
    posterior = np.exp(log_comp - logsumexp(log_comp, axis=1, keepdims=True))
    np.testing.assert_allclose(gm.posterior_t(jnp.asarray(x), jnp.asarray(t), sde), posterior, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("full", [True, False], ids=["full_cov", "diag_cov"])
def test_log_prob_matches_scipy_mixture(full, x64):
    weights, means, covs = _mixture_params(2, full)
    x = _draw(weights, means, covs, 12, np.random.default_rng(2))
    log_comp = _scipy_log_components(weights, means, covs, x, np.ones(12), np.zeros(12))
    np.testing.assert_allclose(GaussianMixture(weights, means, covs).log_prob(jnp.asarray(x)),
                               logsumexp(log_comp, axis=1), rtol=1e-10)


def test_image_shaped_points(x64):
    """Points `(B, 4, 4, 1)` are flattened to D = 16: same log-density, score of x's shape."""
    weights, means, covs = _mixture_params(16, True)
    gm = GaussianMixture(weights, means, covs)
    sde = VPSDE()
    x, t = map(jnp.asarray, _noisy_points(weights, means, covs, sde))
    images = jnp.reshape(x, (-1, 4, 4, 1))
    np.testing.assert_allclose(gm.log_prob_t(images, t, sde), gm.log_prob_t(x, t, sde), rtol=1e-14)
    score = gm.score_fn(sde)(images, t)
    assert score.shape == images.shape
    np.testing.assert_allclose(np.reshape(score, x.shape), gm.score_fn(sde)(x, t), rtol=1e-14)


@pytest.mark.parametrize("use_x64", [False, True], ids=["float32", "float64"])
def test_dtypes_and_jit(use_x64):
    """float32 by default, float64 under x64; log_prob_t, the score and log_prob work under jit."""
    weights, means, covs = _mixture_params(2, True)
    gm = GaussianMixture(weights, means, covs)
    sde = VPSDE()
    x, t = _noisy_points(weights, means, covs, sde)
    with jax.enable_x64(use_x64):
        dtype = jnp.float64 if use_x64 else jnp.float32
        x, t = jnp.asarray(x, dtype), jnp.asarray(t, dtype)
        outs = jax.jit(lambda x, t: (gm.log_prob_t(x, t, sde), gm.score_fn(sde)(x, t), gm.log_prob(x)))(x, t)
        assert [out.dtype for out in outs] == [dtype] * 3
        assert [out.shape for out in outs] == [t.shape, x.shape, t.shape]
        if use_x64:  # jit against eager (whose float64 primitives the other tests compiled already)
            eager = (gm.log_prob_t(x, t, sde), gm.score_fn(sde)(x, t), gm.log_prob(x))
            for out, ref in zip(outs, eager):
                # Compiled and eager code may round differently: ~100 ulps of the largest value.
                tol = 100 * float(jnp.finfo(dtype).eps)
                np.testing.assert_allclose(out, ref, rtol=tol, atol=tol * float(jnp.max(jnp.abs(ref))))
        else:  # float32 against float64 at float32 precision
            with jax.enable_x64(True):
                ref = gm.log_prob_t(jnp.asarray(x, jnp.float64), jnp.asarray(t, jnp.float64), sde)
            np.testing.assert_allclose(outs[0], ref, rtol=1e-5)


# ---------------------------------------------------------------------------------------
# 6. Invalid parameters.

_W, _M, _C = _mixture_params(2, True)


@pytest.mark.parametrize(
    "build",
    [
        lambda: GaussianMixture(_W, _M[0], _C),  # means not (K, D)
        lambda: GaussianMixture(_W[:2], _M, _C),  # K mismatch
        lambda: GaussianMixture(np.array([1.0, 0.0, 1.0]), _M, _C),  # zero weight
        lambda: GaussianMixture(np.array([1.0, -1.0, 1.0]), _M, _C),  # negative weight
        lambda: GaussianMixture(_W, _M, _C[:2]),  # K mismatch in covs
        lambda: GaussianMixture(_W, _M, np.ones((3, 3))),  # diagonal of the wrong D
        lambda: GaussianMixture(_W, _M, np.ones((3, 2, 3))),  # not square
        lambda: GaussianMixture(_W, _M, np.ones(3)),  # not (K, D) nor (K, D, D)
        lambda: GaussianMixture(_W, _M, np.array([[1.0, 0.0], [1.0, 1.0], [0.5, 0.5]])),  # zero variance
        lambda: GaussianMixture(_W, _M, np.array([[1.0, 1.0], [-1.0, 1.0], [0.5, 0.5]])),  # negative variance
        lambda: GaussianMixture(_W, _M, np.stack([np.eye(2), [[1.0, 0.5], [0.0, 1.0]], np.eye(2)])),  # asymmetric
        lambda: GaussianMixture(_W, _M, np.stack([np.eye(2), [[1.0, 1.0], [1.0, 1.0]], np.eye(2)])),  # singular
        lambda: GaussianMixture(_W, _M, np.stack([np.eye(2), [[1.0, 2.0], [2.0, 1.0]], np.eye(2)])),  # indefinite
        lambda: GaussianMixture(_W, _M, -_C),  # negative definite
        lambda: analytic.toy_target("nosuchtarget"),
    ],
)
def test_invalid_parameters_raise(build):
    with pytest.raises(ValueError):
        build()


# ---------------------------------------------------------------------------------------
# 9. Samplers and toy targets.


@pytest.mark.parametrize("full", [True, False], ids=["full_cov", "diag_cov"])
def test_mixture_sample_matches_components(full):
    weights, means, covs = _mixture_params(2, full, seed=3)
    gm = GaussianMixture(weights, means, covs)
    key = jax.random.PRNGKey(0)
    x, labels = gm.sample(key, N_SAMPLES, return_labels=True)
    assert x.shape == (N_SAMPLES, 2) and labels.shape == (N_SAMPLES,) and x.dtype == jnp.float32
    np.testing.assert_array_equal(gm.sample(key, N_SAMPLES), x)  # the labels do not change the draw
    x, labels = np.asarray(x, np.float64), np.asarray(labels)
    w = weights / weights.sum()
    np.testing.assert_allclose(gm.weights, w, rtol=1e-15)
    cov = _full(covs)
    for k in range(len(w)):
        # Component frequency: binomial standard error.
        n_k = int(np.sum(labels == k))
        assert abs(n_k / N_SAMPLES - w[k]) < K_SE * math.sqrt(w[k] * (1 - w[k]) / N_SAMPLES)
        # Component mean and covariance: standard errors sqrt(Sigma_dd / n_k) per coordinate and,
        # for Gaussian data, Var(S_ij) = (Sigma_ii Sigma_jj + Sigma_ij^2) / (n - 1).
        check_gaussian(x[labels == k], means[k], cov[k])
    # Mixture mean and covariance properties against their definitions.
    mean = w @ means
    np.testing.assert_allclose(gm.mean, mean, rtol=1e-12)
    second = np.einsum("k,kde->de", w, cov + np.einsum("kd,ke->kde", means, means))
    np.testing.assert_allclose(gm.covariance, second - np.outer(mean, mean), rtol=1e-12, atol=1e-12)
    # And the overall sample mean (standard error from the mixture's covariance).
    np.testing.assert_array_less(np.abs(x.mean(0) - mean), K_SE * np.sqrt(np.diag(gm.covariance) / N_SAMPLES))


@pytest.mark.parametrize("name", list(analytic.TOY_TARGETS))
def test_toy_targets_sample(name):
    target = analytic.toy_target(name)
    assert target.dim == 2
    x = target.sample(jax.random.PRNGKey(1), N_SAMPLES)
    assert x.shape == (N_SAMPLES, 2) and x.dtype == jnp.float32
    assert np.all(np.isfinite(x))
    assert np.all(np.std(np.asarray(x), axis=0) > 0.1)  # a spread-out data set, not a point


def test_mixture_toy_targets_are_gaussian_mixtures():
    eight = analytic.toy_target("8gaussians")
    assert isinstance(eight, GaussianMixture) and isinstance(analytic.eight_gaussians(), GaussianMixture)
    assert eight.num_components == 8 and eight.dim == 2
    np.testing.assert_allclose(np.linalg.norm(eight.means, axis=1), 2.0, rtol=1e-12)
    angles = np.sort(np.mod(np.arctan2(eight.means[:, 1], eight.means[:, 0]), 2 * np.pi))
    np.testing.assert_allclose(angles, 2 * np.pi * np.arange(8) / 8, atol=1e-12)
    np.testing.assert_allclose(eight.covs, np.broadcast_to(0.2**2 * np.eye(2), (8, 2, 2)))
    np.testing.assert_allclose(eight.weights, 1 / 8)

    grid = analytic.toy_target("grid")
    assert isinstance(grid, GaussianMixture) and isinstance(analytic.gaussian_grid(), GaussianMixture)
    assert grid.num_components == 25 and grid.dim == 2
    ticks = np.arange(5) - 2.0
    np.testing.assert_allclose(np.sort(np.unique(grid.means[:, 0])), ticks)
    np.testing.assert_allclose(np.sort(np.unique(grid.means[:, 1])), ticks)
    assert len({tuple(m) for m in grid.means}) == 25
    np.testing.assert_allclose(grid.covs, np.broadcast_to(0.1**2 * np.eye(2), (25, 2, 2)))
    np.testing.assert_allclose(grid.weights, 1 / 25)


def test_checkerboard_density():
    board = analytic.Checkerboard()
    x = board.sample(jax.random.PRNGKey(2), N_SAMPLES)
    logp = np.asarray(board.log_prob(x))
    assert np.all(np.isfinite(logp))
    np.testing.assert_allclose(logp, math.log(1 / 8), rtol=1e-6)
    # The samples are uniform over the 8 dark unit squares (floor(x) + floor(y) even).
    cells = np.floor(np.asarray(x)).astype(int)
    assert np.all((cells >= -2) & (cells <= 1)) and np.all(cells.sum(1) % 2 == 0)
    counts = np.zeros((4, 4))
    np.add.at(counts, (cells[:, 0] + 2, cells[:, 1] + 2), 1)
    dark = (np.add.outer(np.arange(4), np.arange(4)) % 2 == 0)
    p = 1 / 8
    np.testing.assert_array_less(np.abs(counts[dark] - N_SAMPLES * p), K_SE * math.sqrt(N_SAMPLES * p * (1 - p)))
    # The density integrates to 1: it is constant on unit squares, so the midpoint rule on
    # a grid aligned with them (h = 1/32, midpoints h/2 from any edge) is exact.
    h = 1 / 32
    ticks = np.arange(-3.0 + h / 2, 3.0, h)
    grid = np.stack(np.meshgrid(ticks, ticks, indexing="ij"), -1).reshape(-1, 2)
    density = np.exp(np.asarray(board.log_prob(jnp.asarray(grid, jnp.float32)), np.float64))
    # Up to float32's rounding of log(1/8) (~2e-7 relative in the density).
    assert abs(density.sum() * h**2 - 1.0) < 1e-6
    # Zero density off the board and on the light squares.
    outside = jnp.array([[2.5, 0.5], [-2.5, -1.5], [0.5, 3.0], [-0.5, 0.5], [0.5, -0.5]])
    assert np.all(np.asarray(board.log_prob(outside)) == -np.inf)
