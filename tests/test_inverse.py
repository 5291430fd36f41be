"""Linear inverse problems y = A x (+ sigma_y n) (scoresde.samplers.operators, imputation.solve_inverse).

On a Gaussian image model x ~ N(mu, S), 4x4x1 (16-D, a random covariance), the posterior is
exact and written here independently of the library: with A the 4 x 16 matrix of 2x2 average
pooling (built in numpy) and G = A S A^T + sigma_y^2 I,

    E[x | y] = mu + S A^T G^-1 (y - A mu),   Cov[x | y] = S - S A^T G^-1 A S.

TMPD: each example has its own y = A x_true + 0.3 n, x_true ~ N(mu + 1, S) (off the prior
mean, so that a wrong gain moves the residuals' mean), solved as exact (sigma_y = 0) and as
noisy (sigma_y = 0.3); the residuals x - E[x | y] are N(0, Cov[x | y]) for every example.
Their sample mean and covariance are compared entry by entry within K_SE = 5 standard errors
(conftest.check_gaussian: SE_i = sqrt(C_ii / n), SE_ij = sqrt((C_ii C_jj + C_ij^2) / (n - 1))).
Exact y: A x = y to 1e-12, and the residuals are compared in an orthonormal basis of the null
space of A (Cov[x | y] has rank 12). Replacement is compared with its own law (moment ODEs).

Euler-Maruyama with 100 steps, n = 2000: the exact discrete-time laws of these linear chains
(computed in numpy while writing this) are within 0.4 SE of the continuous-time ones used here.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.integrate import solve_ivp
from scipy.optimize import brentq
from scipy.signal import correlate2d

from scoresde import analytic
from scoresde.samplers import imputation, inpaint, operators, solve_inverse, super_resolve

from conftest import K_SE, SDES, TracingScore, check_gaussian
from test_imputation import coefficients

SHAPE = (4, 4, 1)
D = 16
N = 2000
STEPS = 100
SIGMA_Y = 0.3
EPS = 1e-3  # the VP samplers' last time


@functools.cache
def gaussian():
    rng = np.random.default_rng(16)
    q = np.linalg.qr(rng.normal(size=(D, D)))[0]
    return rng.normal(size=D), q @ np.diag(rng.uniform(0.2, 2.0, D)) @ q.T


@functools.cache
def score(sde_name="vp"):
    mu, S = gaussian()
    return analytic.GaussianMixture([1.0], [mu], [S]).score_fn(SDES[sde_name])


def pool_matrix(h=4, w=4, f=2):
    """The (h w / f^2) x (h w) matrix of f x f average pooling on row-major pixels, in numpy."""
    A = np.zeros((h // f * (w // f), h * w))
    for i in range(h):
        for j in range(w):
            A[(i // f) * (w // f) + j // f, i * w + j] = 1.0 / f**2
    return A


def posterior(A, y, sigma_y):
    """Exact E[x | y] `(n, D)` for y `(n, m)`, and Cov[x | y]."""
    mu, S = gaussian()
    gain = S @ A.T @ np.linalg.inv(A @ S @ A.T + sigma_y**2 * np.eye(len(A)))
    return mu + (y - A @ mu) @ gain.T, S - gain @ A @ S


def null_basis(A):
    """An orthonormal basis `(D, D - rank)` of the null space of A."""
    _, s, vt = np.linalg.svd(A)
    return vt[int(np.sum(s > 1e-12)) :].T


def observations(A, sigma_y, n=N, seed=0, shift=0.0):
    """y = A x_true + sigma_y n for n draws x_true ~ N(mu + shift, S), `(n, m)`."""
    mu, S = gaussian()
    rng = np.random.default_rng(seed)
    x = rng.multivariate_normal(mu + shift, S, n)
    return x @ A.T + sigma_y * rng.normal(size=(n, len(A)))


def as_images(v, shape):
    return jnp.asarray(v.reshape((len(v),) + shape))


def check_posterior(x, A, y, sigma_y):
    """x `(n, D)`: residuals against the exact posterior within K_SE standard errors; returns
    the largest (mean, covariance) errors in SE."""
    mean, cov = posterior(A, y, sigma_y)
    r = x - mean
    if sigma_y == 0:
        np.testing.assert_allclose(x @ A.T, y, rtol=0, atol=1e-12)  # A x = y
        V = null_basis(A)
        return check_gaussian(r @ V, np.zeros(V.shape[1]), V.T @ cov @ V)
    return check_gaussian(r, np.zeros(D), cov)


# ---------------------------------------------------------------------------------------
# TMPD is exact for Gaussian targets: average pooling, noiseless and noisy y.


@functools.cache
def tmpd_samples(sigma_y):
    """Super-resolution of the same y's by TMPD, solved with noise sigma_y (cg_iters = 4 = m)."""
    with jax.enable_x64(True):
        y = observations(pool_matrix(), SIGMA_Y, shift=1.0)
        x, nfe = super_resolve(jax.random.key(1), SDES["vp"], score(), as_images(y, (2, 2, 1)), 2, sigma_y,
                               "euler_maruyama", "tmpd", 4, num_steps=STEPS)
        assert x.shape == (N,) + SHAPE and nfe == STEPS * (2 + 4)
        return np.asarray(x).reshape(N, D), y


@pytest.mark.parametrize("sigma_y", [0.0, SIGMA_Y])
def test_tmpd_super_resolution_is_the_exact_posterior(sigma_y):
    """2x2 average pooling of the 4x4 Gaussian image, exact and noisy y."""
    x, y = tmpd_samples(sigma_y)
    z_mean, z_cov = check_posterior(x, pool_matrix(), y, sigma_y)
    print(f"TMPD sigma_y={sigma_y}: mean {z_mean:.2f} SE, covariance {z_cov:.2f} SE (bound 5)")


@pytest.mark.parametrize("sigma_y", [0.0, SIGMA_Y])
def test_the_posterior_check_sees_the_noise(sigma_y):
    """The check has power: samples for exact y fail against the noisy posterior and back."""
    x, y = tmpd_samples(sigma_y)
    with pytest.raises(AssertionError, match="off by|Not equal") as info:
        check_posterior(x, pool_matrix(), y, SIGMA_Y - sigma_y)
    first_line = str(info.value).splitlines()[0][:60]
    print(f"TMPD sigma_y={sigma_y} vs the sigma_y={SIGMA_Y - sigma_y} posterior: {first_line}")


# ---------------------------------------------------------------------------------------
# Replacement: its own law, not the posterior (as for masks, tests/test_imputation.py).


def rotated(A):
    """Q = [V_k, V_u]: V_k = A^T / s (orthonormal columns, s^2 = 1/4), V_u the null space."""
    return np.concatenate([2.0 * A.T, null_basis(A)], axis=1)


@functools.cache
def replacement_samples(sigma_y):
    """Replacement with one y for all examples (the law below is for a fixed observation), an
    atypical one (x_true ~ N(mu + 2, S)), where replacement's bias is larger."""
    with jax.enable_x64(True):
        A = pool_matrix()
        y = np.tile(observations(A, sigma_y, n=1, seed=3, shift=2.0), (N, 1))
        x, nfe = super_resolve(jax.random.key(2), SDES["vp"], score(), as_images(y, (2, 2, 1)), 2, sigma_y,
                               "euler_maruyama", num_steps=STEPS)
        assert nfe == STEPS
        return np.asarray(x).reshape(N, D), y


def moments(drift, m0, V0, t0, t1):
    """Mean and covariance at t1 of the reverse-time SDE dx = (B x + c) dt + g dw-bar from (m0, V0)
    at t0 > t1, drift(t) = (B, c): dm/dt = B m + c, dV/dt = B V + V B^T - g^2 I (as test_imputation)."""
    d = len(m0)

    def rhs(t, state):
        B, c = drift(t)
        m, V = state[:d], state[d:].reshape(d, d)
        return np.concatenate([B @ m + c, (B @ V + V @ B.T - coefficients("vp", t)[3] * np.eye(d)).ravel()])

    sol = solve_ivp(rhs, (t0, t1), np.concatenate([m0, V0.ravel()]), method="LSODA", rtol=1e-10, atol=1e-12)
    assert sol.success, sol.message
    return sol.y[:d, -1], sol.y[d:, -1].reshape(d, d)


def replacement_law(sigma_y, y):
    """The law of w = Q^T x under replacement (Euler-Maruyama's continuous-time limit, VP) in the
    rotated basis, where the observed coordinates w_k = V_k^T x = 2 A x are 2 y for exact y
    and x ~ N(mu_w, S_w): of the unobserved w_u for exact y, of all of w for noisy y.

    Phase 1, from T: the reverse SDE of w_u whose score sees w_k at alpha_t 2y (the fresh noise
    of the replaced w_k averages out; test_imputation.replacement_sde_law), b = f w_u - g^2 s_u,
    s_u = -P_uu (w_u - alpha mu_u) - P_uk (alpha 2y - alpha mu_k), P = (alpha^2 S_w + sigma^2 I)^-1.
    Exact y: down to eps. Noisy y (c = 2 sigma_y in w_k): down to t*, sigma_t* = alpha_t* c; then
    phase 2: all of w follows the unconditional reverse SDE from w_k = alpha_t* 2y."""
    mu, S = gaussian()
    Q = rotated(pool_matrix())
    mu_w, S_w, a = Q.T @ mu, Q.T @ S @ Q, 2.0 * y
    k, u = slice(0, 4), slice(4, D)

    def precision(t):
        alpha, sigma2, f, g2 = coefficients("vp", t)
        return alpha, f, g2, np.linalg.inv(alpha**2 * S_w + sigma2 * np.eye(D))

    def replaced(t):
        alpha, f, g2, P = precision(t)
        return f * np.eye(D - 4) + g2 * P[u, u], g2 * alpha * (P[u, k] @ (a - mu_w[k]) - P[u, u] @ mu_w[u])

    def unconditional(t):
        alpha, f, g2, P = precision(t)
        return f * np.eye(D) + g2 * P, -g2 * alpha * P @ mu_w

    end = EPS
    if sigma_y > 0:
        c = 2.0 * sigma_y
        end = brentq(lambda t: coefficients("vp", t)[1] - coefficients("vp", t)[0] ** 2 * c**2, EPS, 1.0)
    m, V = moments(replaced, np.zeros(D - 4), np.eye(D - 4), 1.0, end)  # VP prior N(0, I)
    if sigma_y == 0:
        return m, V
    m0, V0 = np.concatenate([coefficients("vp", end)[0] * a, m]), np.zeros((D, D))
    V0[u, u] = V
    return moments(unconditional, m0, V0, end, EPS)


@pytest.mark.parametrize("sigma_y", [0.0, SIGMA_Y])
def test_replacement_follows_its_own_law(sigma_y):
    x, y = replacement_samples(sigma_y)
    Q = rotated(pool_matrix())
    if sigma_y == 0:
        np.testing.assert_allclose(x @ pool_matrix().T, y, rtol=0, atol=1e-12)
    mean, cov = replacement_law(sigma_y, y[0])
    z_mean, z_cov = check_gaussian(x @ (Q if sigma_y else Q[:, 4:]), mean, cov)
    print(f"replacement sigma_y={sigma_y} vs its law: mean {z_mean:.2f} SE, covariance {z_cov:.2f} SE (bound 5)")


@pytest.mark.parametrize("sigma_y", [0.0, SIGMA_Y])
def test_replacement_is_not_the_posterior(sigma_y):
    """Replacement misses the exact posterior mean (as for masks), by more than the checks' K_SE."""
    x, y = replacement_samples(sigma_y)
    mean, cov = posterior(pool_matrix(), y[:1], sigma_y)
    V = null_basis(pool_matrix())  # the unobserved directions (A x = y on the others for exact y)
    z = np.abs((x - mean) @ V).mean(0) / np.sqrt(np.diag(V.T @ cov @ V) / N)
    print(f"replacement sigma_y={sigma_y} vs the posterior: mean off by {z.max():.1f} SE")
    assert z.max() > K_SE, f"replacement within {z.max():.1f} SE of the posterior"


def test_noisy_replacement_is_exact_when_everything_is_observed(x64):
    """Denoising, A = Q / 2 (Q orthogonal, s = 1/2), sigma_y = 0.3: y is x_0 at noise-to-signal
    ratio c = 0.6, and replacement down to that level then the plain reverse SDE samples
    p(x | y) (up to the time grid)."""
    Q = np.linalg.qr(np.random.default_rng(5).normal(size=(D, D)))[0]
    A = Q / 2.0
    op = operators.dense(A, SHAPE)
    assert op.scale == pytest.approx(0.5)
    y = observations(A, SIGMA_Y, seed=6)
    x, _ = solve_inverse(jax.random.key(7), SDES["vp"], score(), op, jnp.asarray(y), SIGMA_Y, "euler_maruyama",
                         num_steps=STEPS)
    z_mean, z_cov = check_posterior(np.asarray(x).reshape(N, D), A, y, SIGMA_Y)
    print(f"noisy replacement, everything observed: mean {z_mean:.2f} SE, covariance {z_cov:.2f} SE (bound 5)")


# ---------------------------------------------------------------------------------------
# Operators: adjoints, pseudo-inverses, references.


def _operators():
    rng = np.random.default_rng(9)
    return {
        "mask": (operators.mask(rng.uniform(size=(2, 6, 8, 3)) > 0.5), (2, 6, 8, 3)),
        "colour": (operators.colour_projection(), (2, 6, 8, 3)),
        "pool": (operators.average_pool(2), (2, 6, 8, 3)),
        "blur": (operators.blur(rng.uniform(size=(3, 5))), (2, 6, 8, 3)),  # not symmetric
        "dense": (operators.dense(rng.normal(size=(5, 12)), (4, 3)), (2, 4, 3)),
    }


@pytest.mark.parametrize("name", ["mask", "colour", "pool", "blur", "dense"])
def test_adjoint(x64, name):
    """<A x, y> = <x, A^T y> for random x, y (COLOR_BASIS, given to 8 digits, is orthonormal to 1e-7)."""
    op, shape = _operators()[name]
    rng = np.random.default_rng(10)
    x = jnp.asarray(rng.normal(size=shape))
    y = jnp.asarray(rng.normal(size=op.output_shape(shape)))
    assert op.A(x).shape == y.shape and op.AT(y).shape == x.shape
    np.testing.assert_allclose(jnp.vdot(op.A(x), y), jnp.vdot(x, op.AT(y)), rtol=1e-6 if name == "colour" else 1e-12)


@pytest.mark.parametrize("name", ["mask", "colour", "pool", "dense"])
def test_replace_sets_the_observation(x64, name):
    """A replace(x, k) = k for k in the range of A, and x - replace(x, k) lies in A's row space."""
    op, shape = _operators()[name]
    rng = np.random.default_rng(11)
    x = jnp.asarray(rng.normal(size=shape))
    k = op.A(jnp.asarray(rng.normal(size=shape)))
    out = op.replace(x, k)
    np.testing.assert_allclose(op.A(out), k, atol=1e-6)
    np.testing.assert_allclose(op.replace(out, op.A(x)), x, atol=1e-6)  # replacing back: only the row space moved


def test_operators_match_references(x64):
    """Pooling and blur against numpy / scipy (zero-padded 'same' correlation)."""
    rng = np.random.default_rng(12)
    x = rng.normal(size=(2, 6, 8, 3))
    pooled = x.reshape(2, 3, 2, 4, 2, 3).mean((2, 4))
    np.testing.assert_allclose(operators.average_pool(2).A(jnp.asarray(x)), pooled, rtol=1e-12)
    kernel = rng.uniform(size=(3, 5))
    blurred = np.stack([[correlate2d(x[b, :, :, c], kernel, mode="same") for c in range(3)] for b in range(2)])
    np.testing.assert_allclose(operators.blur(kernel).A(jnp.asarray(x)), blurred.transpose(0, 2, 3, 1), rtol=1e-10)
    np.testing.assert_allclose(operators.gaussian_kernel(1.0).sum(), 1.0)
    assert operators.dense(rng.normal(size=(5, 12))).scale is None


def test_mask_operator_reproduces_inpaint():
    """solve_inverse with operators.mask is inpaint (bit for bit), for replacement and TMPD."""
    sde, sf = SDES["vp"], score()
    rng = np.random.default_rng(13)
    data = jnp.asarray(rng.normal(size=(8,) + SHAPE), jnp.float32)
    m = jnp.asarray(rng.uniform(size=(8,) + SHAPE) > 0.5, jnp.float32)
    for sampler, method, options in [("ddim", "replace", dict(num_steps=3)), ("ddim", "tmpd", dict(num_steps=3))]:
        a, nfe_a = inpaint(jax.random.key(0), sde, sf, data, m, sampler, method, 3, **options)
        b, nfe_b = solve_inverse(jax.random.key(0), sde, sf, operators.mask(m), data, 0.0, sampler, method, 3,
                                 **options)  # y's unobserved entries are ignored
        np.testing.assert_array_equal(a, b)
        assert nfe_a == nfe_b


def test_blur_tmpd_and_noisy_replacement_run():
    """Blur (TMPD, noisy), and noisy replacement with a probability-flow ODE solver: finite, shaped."""
    sde, sf = SDES["vp"], score()
    y = jnp.asarray(np.random.default_rng(14).normal(size=(4,) + SHAPE), jnp.float32)
    x, nfe = solve_inverse(jax.random.key(0), sde, sf, operators.blur(operators.gaussian_kernel(0.7)), y, 0.1, "ddim",
                           "tmpd", 2, num_steps=5)
    assert x.shape == y.shape and nfe == 5 * 4 and np.all(np.isfinite(x))
    x, _ = super_resolve(jax.random.key(0), sde, sf, y[:, ::2, ::2], 2, 0.1, "ode_heun", num_steps=5)
    assert x.shape == y.shape and np.all(np.isfinite(x))


@pytest.mark.parametrize("sigma_y", [0.0, SIGMA_Y])
def test_pin_velocity_is_the_paths_derivative(x64, sigma_y):
    """The pinned ODE's observed part moves with d/dt (alpha_t y + tau_t A z) (central differences
    of `pin`), and is left to the drift where nothing is pinned (noisy y, sigma_t < alpha_t c)."""
    sde = SDES["vp"]
    rng = np.random.default_rng(15)
    c = imputation._constraint(operators.average_pool(2), jnp.asarray(rng.normal(size=(3, 2, 2, 1))), sigma_y)
    c = dataclasses.replace(c, z=jnp.asarray(rng.normal(size=(3,) + SHAPE)))
    x, v = (jnp.asarray(rng.normal(size=(3,) + SHAPE)) for _ in range(2))
    op = c.operator

    def coeffs(t):
        alpha, sigma = sde.marginal_coeffs(jnp.reshape(t, (1,)))
        return alpha[0], sigma[0]

    for t in (0.9, 0.5, 0.05):
        (alpha, sigma), (dalpha, dsigma) = jax.jvp(coeffs, (jnp.asarray(t),), (jnp.asarray(1.0),))
        out = c.pin_velocity(v, alpha, sigma, dalpha, dsigma)
        if sigma_y and sigma < alpha * 2 * sigma_y:  # after t*: not pinned
            np.testing.assert_array_equal(out, v)
            continue
        h = 1e-6
        slope = (op.A(c.pin(x, *coeffs(t + h))) - op.A(c.pin(x, *coeffs(t - h)))) / (2 * h)
        np.testing.assert_allclose(op.A(out), slope, rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(out - op.pinv(op.A(out)), v - op.pinv(op.A(v)), atol=1e-12)  # the rest is v's


# ---------------------------------------------------------------------------------------
# One-line errors.


def _solve(operator, y, **kwargs):
    return solve_inverse(jax.random.key(0), SDES["vp"], score(), operator, y, **kwargs)


@pytest.mark.parametrize(
    "operator,y_shape,kwargs,message",
    [
        ("pool", (4, 2, 2), {}, r"average_pool\(2\) observes images \(B, h, w, C\); y has shape \(4, 2, 2\)"),
        ("dense", (4, 5), {}, r"observes y of shape \(B, 16\); got \(4, 5\)"),
        ("mask", (4, 3, 4, 1), {}, r"mask of shape \(4, 4, 1\) does not broadcast to x's shape \(4, 3, 4, 1\)"),
        ("blur", (4, 4, 4, 1), {}, "blur has no cheap pseudo-inverse.*use method='tmpd'"),
        ("rank", (4, 3), dict(sigma_y=0.1), "Replacement with noisy y.*equal singular values.*use method='tmpd'"),
        ("pool", (4, 2, 2, 1), dict(sigma_y=-1.0), "sigma_y .* must be a finite number >= 0, got -1.0"),
        ("none", (4, 2, 2, 1), {}, "operator must be a scoresde.samplers.operators.LinearOperator"),
        ("pool", (4, 2, 2, 1), dict(method="pinv"), "valid names: replace, tmpd"),
    ],
)
def test_invalid_arguments_raise(operator, y_shape, kwargs, message):
    op = {
        "pool": operators.average_pool(2),
        "dense": operators.dense(np.eye(D), SHAPE),
        "mask": operators.mask(np.ones(SHAPE)),
        "blur": operators.blur(np.ones((3, 3)) / 9),
        "rank": operators.dense(np.diag([1.0, 2.0, 3.0]) @ np.eye(3, D), SHAPE),
        "none": np.eye(3),
    }[operator]
    with pytest.raises(ValueError, match=message):
        _solve(op, jnp.zeros(y_shape), **kwargs)


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda: operators.blur(np.ones((2, 3))), "odd sizes"),
        (lambda: operators.average_pool(0), "integer >= 1, got 0"),
        (lambda: operators.dense(np.ones((3, 4)), (2, 3)), "4 columns but x's shape"),
        (lambda: operators.colour_projection(np.ones((3, 3))), "orthonormal"),
    ],
)
def test_invalid_operators_raise(make, message):
    with pytest.raises(ValueError, match=message):
        make()


_TRACING = TracingScore(score())


def test_operators_are_traced():
    """An operator's arrays and sigma_y are leaves: a new kernel, mask or noise level reuses the
    compiled sampler (the score is traced once); its sizes are static."""
    assert len(jax.tree_util.tree_leaves(operators.blur(np.ones((3, 3))))) == 1
    assert len(jax.tree_util.tree_leaves(operators.average_pool(2))) == 0
    c = imputation._constraint(operators.mask(np.ones((1,) + SHAPE)), jnp.ones((4,) + SHAPE), 0.5, "tmpd", 2)
    assert len(jax.tree_util.tree_leaves(c)) == 4  # y, mask, z, sigma_y
    y = jnp.ones((4,) + SHAPE)
    run = functools.partial(solve_inverse, jax.random.key(0), SDES["vp"], _TRACING, sampler="ddim", method="tmpd",
                            cg_iters=2, num_steps=3)
    a, _ = run(operators.blur(operators.gaussian_kernel(0.7)), y, 0.1)
    traces = _TRACING.traces
    b, _ = run(operators.blur(operators.gaussian_kernel(1.0)), y, 0.2)
    assert _TRACING.traces == traces, "re-compiled for a new kernel and sigma_y"
    assert not np.array_equal(a, b)
