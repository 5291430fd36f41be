"""Forward SDEs of Song et al. (2021), their discretizations and reverse-time forms.

Every SDE here is linear, dx = f(t) x dt + g(t) dw, so its perturbation kernel is
Gaussian: p_0t(x(t) | x(0)) = N(s(t) x(0), sigma(t)^2 I). Each class gives the two
coefficients through `marginal_coeffs(t) -> (s, sigma)`; samplers that step in noise
level (EDM, DPM-Solver) and the exact Gaussian-mixture targets use them directly.
`LinearGaussianPath` goes the other way: from a path's (alpha(t), sigma(t)) to its SDE
(`RectifiedFlow`, `EDMPath`, and `LinearPath` for any pair).

Shapes: `t` is a batch vector `(B,)`; `x` is `(B, ...)`. Per-example coefficients
such as the diffusion g(t) and the std are `(B,)`. Every method is a pure jnp
function and works under `jit`, `vmap` and `grad`; arrays follow x's dtype, so
float32 by default and float64 when x64 is enabled.
"""

from __future__ import annotations

import abc
import copy
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

ScoreFn = Callable[[jax.Array, jax.Array], jax.Array]


def batch_broadcast(v: jax.Array, x: jax.Array) -> jax.Array:
    """Reshape a per-example vector `(B,)` to `(B, 1, ..., 1)` so it broadcasts with x."""
    return jnp.reshape(v, v.shape + (1,) * (x.ndim - v.ndim))


def _check_positive(**values):
    for name, value in values.items():
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a finite number > 0, got {value!r}.")


def _check_steps(N):
    if not (isinstance(N, (int, np.integer)) and N >= 1):
        raise ValueError(f"N (the number of discretization steps) must be an integer >= 1, got {N!r}.")


class SDE(abc.ABC):
    """A forward SDE dx = f(x, t) dt + g(t) dw on t in [0, T], with N discrete steps."""

    def __init__(self, N: int):
        _check_steps(N)
        self.N = int(N)

    # SDEs compare and hash by value, so jit caches compiled samplers per SDE setting.
    def _fields(self):
        return (type(self), tuple(sorted((k, v) for k, v in vars(self).items())))

    def __eq__(self, other):
        return isinstance(other, SDE) and self._fields() == other._fields()

    def __hash__(self):
        return hash(self._fields())

    def __repr__(self):
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in sorted(vars(self).items()))})"

    def with_steps(self, N: int | None) -> "SDE":
        """A copy with N discretization steps (the same SDE if N is None or unchanged)."""
        if N is None or N == self.N:
            return self
        _check_steps(N)
        new = copy.copy(self)
        new.N = int(N)
        return new

    @property
    @abc.abstractmethod
    def T(self) -> float:
        """End time of the forward process."""

    @abc.abstractmethod
    def sde(self, x, t):
        """Drift f(x, t) `(B, ...)` and diffusion g(t) `(B,)`."""

    @abc.abstractmethod
    def marginal_coeffs(self, t):
        """(s(t), sigma(t)), each `(B,)`: p_0t(x(t) | x(0)) = N(s x(0), sigma^2 I)."""

    @abc.abstractmethod
    def prior_sampling(self, key, shape):
        """Samples of the prior p_T, of the given shape `(B, ...)`."""

    @abc.abstractmethod
    def prior_logp(self, z):
        """Log-density of the prior at z `(B, ...)`, summed over all but the batch axis: `(B,)`."""

    def coeffs_and_derivatives(self, t):
        """(s, sigma, ds/dt, d sigma/dt), each `(B,)`; by autodiff unless overridden."""
        (alpha, sigma), (dalpha, dsigma) = jax.jvp(self.marginal_coeffs, (t,), (jnp.ones_like(t),))
        return alpha, sigma, dalpha, dsigma

    def marginal_prob(self, x, t):
        """Mean s(t) x `(B, ...)` and std sigma(t) `(B,)` of p_0t(x(t) | x(0) = x)."""
        t = jnp.asarray(t, x.dtype)
        s, std = self.marginal_coeffs(t)
        return batch_broadcast(s, x) * x, std

    def discretize(self, x, t):
        """One step of the discrete Markov chain, x_{i+1} = x_i + f + G z, z ~ N(0, I).

        The default is the Euler--Maruyama step with dt = T/N: f = f(x, t) dt, G = g(t) sqrt(dt).
        Returns f `(B, ...)` and G `(B,)`.
        """
        dt = self.T / self.N
        drift, diffusion = self.sde(x, t)
        return drift * dt, diffusion * math.sqrt(dt)

    def reverse(self, score_fn: ScoreFn, probability_flow: bool = False) -> "ReverseSDE":
        """The reverse-time SDE, or with `probability_flow=True` the probability-flow ODE."""
        return ReverseSDE(self, score_fn, probability_flow)

    def sigma_to_t(self, sigma):
        """Inverse of the noise-to-signal ratio sigma(t)/s(t), for t in [0, T].

        Generic bisection (60 halvings, exact to float precision); subclasses with a
        closed form override it. Used by samplers that step in noise level.
        """
        sigma = jnp.asarray(sigma)

        def ratio(t):
            s, std = self.marginal_coeffs(t)
            return std / s

        lo = jnp.zeros_like(sigma)
        hi = jnp.full_like(sigma, self.T)

        def halve(_, bounds):
            lo, hi = bounds
            mid = 0.5 * (lo + hi)
            above = ratio(mid) > sigma
            return jnp.where(above, lo, mid), jnp.where(above, mid, hi)

        lo, hi = jax.lax.fori_loop(0, 60, halve, (lo, hi))
        t = jax.lax.stop_gradient(0.5 * (lo + hi))
        # The bisection has zero derivative; add the implicit-function gradient
        # dt/dsigma = 1 / ratio'(t) through a term whose value is exactly zero.
        r, dr = jax.jvp(ratio, (t,), (jnp.ones_like(t),))
        step = (sigma - r) / dr
        return t + (step - jax.lax.stop_gradient(step))

    def _standard_normal_logp(self, z, var=1.0):
        d = np.prod(z.shape[1:])
        sq = jnp.sum(jnp.reshape(z, (z.shape[0], -1)) ** 2, axis=1)
        return -0.5 * d * jnp.log(2 * jnp.pi * var) - sq / (2 * var)


class ReverseSDE(SDE):
    """Reverse-time SDE dx = [f - g^2 score] dt + g dw-bar, or the probability-flow ODE
    dx = [f - g^2 score / 2] dt, run from t = T to 0.

    It has the forward SDE's interface: `sde` and `discretize` give the reverse-time
    coefficients (time still labelled forward, so a sampler steps with dt < 0), while
    `marginal_coeffs`, `prior_sampling` and `prior_logp` describe the forward process
    whose prior the reverse process starts from.
    """

    def __init__(self, forward: SDE, score_fn: ScoreFn, probability_flow: bool = False):
        super().__init__(forward.N)
        self.forward = forward
        self.score_fn = score_fn
        self.probability_flow = probability_flow

    @property
    def T(self):
        return self.forward.T

    def with_steps(self, N: int | None) -> "ReverseSDE":
        """The reverse of the forward SDE with N steps (so `discretize` uses them too)."""
        if N is None or N == self.N:
            return self
        return ReverseSDE(self.forward.with_steps(N), self.score_fn, self.probability_flow)

    def _weight(self):
        return 0.5 if self.probability_flow else 1.0

    def sde(self, x, t):
        """Drift f - g^2 score (reverse SDE) or f - g^2 score / 2 (ODE); diffusion g or 0."""
        drift, diffusion = self.forward.sde(x, t)
        score = self.score_fn(x, t)
        drift = drift - batch_broadcast(diffusion**2, x) * score * self._weight()
        diffusion = jnp.zeros_like(diffusion) if self.probability_flow else diffusion
        return drift, diffusion

    def discretize(self, x, t):
        """Reverse of the forward chain: f_rev = f - G^2 score (x 1/2 for the ODE), G_rev = G or 0."""
        f, G = self.forward.discretize(x, t)
        rev_f = f - batch_broadcast(G**2, x) * self.score_fn(x, t) * self._weight()
        rev_G = jnp.zeros_like(G) if self.probability_flow else G
        return rev_f, rev_G

    def marginal_coeffs(self, t):
        return self.forward.marginal_coeffs(t)

    def prior_sampling(self, key, shape):
        return self.forward.prior_sampling(key, shape)

    def prior_logp(self, z):
        return self.forward.prior_logp(z)

    def sigma_to_t(self, sigma):
        return self.forward.sigma_to_t(sigma)


class VariancePreserving(SDE):
    """dx = -beta(t) x / 2 dt + sqrt(beta(t)) dw, with s(t) = exp(log_mean_coeff(t)),
    sigma(t)^2 = 1 - s(t)^2, prior N(0, I), and DDPM's discrete chain

        x_{i+1} = sqrt(1 - beta_i) x_i + sqrt(beta_i) z,   i = round_down(t (N - 1) / T).
    """

    @abc.abstractmethod
    def beta(self, t):
        """beta(t) `(B,)`."""

    @abc.abstractmethod
    def log_mean_coeff(self, t):
        """log s(t) = -1/2 int_0^t beta(u) du, `(B,)`."""

    @property
    @abc.abstractmethod
    def discrete_betas(self) -> np.ndarray:
        """The N betas of the discrete chain, `(N,)`."""

    def sde(self, x, t):
        t = jnp.asarray(t, x.dtype)
        beta_t = self.beta(t)
        return -0.5 * batch_broadcast(beta_t, x) * x, jnp.sqrt(beta_t)

    def marginal_coeffs(self, t):
        log_s = self.log_mean_coeff(t)
        return jnp.exp(log_s), jnp.sqrt(-jnp.expm1(2.0 * log_s))

    def prior_sampling(self, key, shape):
        return jax.random.normal(key, shape)

    def prior_logp(self, z):
        return self._standard_normal_logp(z)

    def _index(self, t):
        return jnp.clip((t * (self.N - 1) / self.T).astype(jnp.int32), 0, self.N - 1)

    def discretize(self, x, t):
        """f = (sqrt(1 - beta_i) - 1) x and G = sqrt(beta_i), the DDPM chain."""
        beta = jnp.asarray(self.discrete_betas, x.dtype)[self._index(t)]
        return batch_broadcast(jnp.sqrt(1.0 - beta) - 1.0, x) * x, jnp.sqrt(beta)

    @property
    def alphas_cumprod(self) -> np.ndarray:
        """alpha-bar_i = prod_{j <= i} (1 - beta_j), `(N,)`."""
        return np.cumprod(1.0 - self.discrete_betas)


class VPSDE(VariancePreserving):
    """Variance-preserving SDE with linear beta(t) = beta_min + t (beta_max - beta_min), T = 1.

    log s(t) = -t^2 (beta_max - beta_min) / 4 - t beta_min / 2. Discretized with DDPM's
    betas beta_i = beta_min/N + i (beta_max - beta_min) / (N (N - 1)).
    """

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, N: int = 1000):
        super().__init__(N)
        _check_positive(beta_min=beta_min, beta_max=beta_max)
        if beta_min >= beta_max:
            raise ValueError(f"beta_min must be < beta_max, got beta_min={beta_min}, beta_max={beta_max}.")
        self.beta_0, self.beta_1 = float(beta_min), float(beta_max)

    @property
    def T(self):
        return 1.0

    def beta(self, t):
        return self.beta_0 + t * (self.beta_1 - self.beta_0)

    def log_mean_coeff(self, t):
        return -0.25 * t**2 * (self.beta_1 - self.beta_0) - 0.5 * t * self.beta_0

    @property
    def discrete_betas(self):
        return np.linspace(self.beta_0 / self.N, self.beta_1 / self.N, self.N)

    def sigma_to_t(self, sigma):
        """Closed-form inverse of sigma(t)/s(t) = sqrt(exp(-2 log s(t)) - 1)."""
        log_s = -0.5 * jnp.log1p(jnp.asarray(sigma) ** 2)  # log s, which is negative
        db = self.beta_1 - self.beta_0
        # Solve db t^2 / 4 + beta_0 t / 2 + log_s = 0 for t >= 0.
        return (-0.5 * self.beta_0 + jnp.sqrt(0.25 * self.beta_0**2 - db * log_s)) / (0.5 * db)


class CosineVPSDE(VariancePreserving):
    """VP SDE with the cosine schedule of Nichol & Dhariwal (2021).

    alpha-bar(t) = cos^2(u(t)) / cos^2(u(0)), u(t) = (t + s)/(1 + s) pi/2, so that
    s(t) = sqrt(alpha-bar(t)) and beta(t) = -d log alpha-bar / dt = pi tan(u(t)) / (1 + s).
    beta(t) diverges at t = 1, so the process ends at T = 0.9946, where
    alpha-bar ~ 7e-5 (the same cut-off as DPM-Solver's cosine schedule). The discrete
    chain uses Nichol & Dhariwal's betas, 1 - alpha-bar(t_{i+1}) / alpha-bar(t_i),
    clipped at 0.999, on the grid t_i = i T / N.
    """

    def __init__(self, s: float = 0.008, T: float = 0.9946, N: int = 1000):
        super().__init__(N)
        _check_positive(s=s, T=T)
        if T >= 1.0:
            raise ValueError(f"T must be < 1 for the cosine schedule (beta(1) is infinite), got {T}.")
        self.s, self._T = float(s), float(T)

    @property
    def T(self):
        return self._T

    def _u(self, t):
        return (t + self.s) / (1.0 + self.s) * (0.5 * math.pi)

    def beta(self, t):
        return math.pi / (1.0 + self.s) * jnp.tan(self._u(t))

    def log_mean_coeff(self, t):
        return jnp.log(jnp.cos(self._u(t))) - math.log(math.cos(self._u(0.0)))

    @property
    def discrete_betas(self):
        t = np.linspace(0.0, self.T, self.N + 1)
        u = (t + self.s) / (1.0 + self.s) * (0.5 * math.pi)
        alpha_bar = np.cos(u) ** 2 / math.cos(u[0]) ** 2
        return np.minimum(1.0 - alpha_bar[1:] / alpha_bar[:-1], 0.999)

    def sigma_to_t(self, sigma):
        """Closed form: cos(u(t)) = cos(u(0)) s(t) with s = 1/sqrt(1 + sigma^2)."""
        cos_u = math.cos(self._u(0.0)) / jnp.sqrt(1.0 + jnp.asarray(sigma) ** 2)
        return jnp.arccos(cos_u) * (2.0 / math.pi) * (1.0 + self.s) - self.s


class subVPSDE(SDE):
    """Sub-VP SDE: dx = -beta(t) x / 2 dt + sqrt(beta(t) (1 - exp(-2 int_0^t beta))) dw.

    Linear beta(t) as in VPSDE; s(t) = exp(-B(t)/2) and sigma(t) = 1 - exp(-B(t)),
    B(t) = int_0^t beta. Prior N(0, I); Euler--Maruyama discretization (as the reference).
    """

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, N: int = 1000):
        super().__init__(N)
        _check_positive(beta_min=beta_min, beta_max=beta_max)
        if beta_min >= beta_max:
            raise ValueError(f"beta_min must be < beta_max, got beta_min={beta_min}, beta_max={beta_max}.")
        self.beta_0, self.beta_1 = float(beta_min), float(beta_max)

    @property
    def T(self):
        return 1.0

    def _integral_beta(self, t):
        return 0.5 * t**2 * (self.beta_1 - self.beta_0) + t * self.beta_0

    def sde(self, x, t):
        t = jnp.asarray(t, x.dtype)
        beta_t = self.beta_0 + t * (self.beta_1 - self.beta_0)
        drift = -0.5 * batch_broadcast(beta_t, x) * x
        discount = -jnp.expm1(-2.0 * self._integral_beta(t))
        return drift, jnp.sqrt(beta_t * discount)

    def marginal_coeffs(self, t):
        B = self._integral_beta(t)
        return jnp.exp(-0.5 * B), -jnp.expm1(-B)

    def prior_sampling(self, key, shape):
        return jax.random.normal(key, shape)

    def prior_logp(self, z):
        return self._standard_normal_logp(z)


class VESDE(SDE):
    """Variance-exploding SDE: dx = sigma(t) sqrt(2 log(sigma_max/sigma_min)) dw, T = 1,
    with geometric sigma(t) = sigma_min (sigma_max/sigma_min)^t, s(t) = 1.

    Prior N(0, sigma_max^2 I). The discrete chain is SMLD's: sigma_i on a geometric
    ladder from sigma_min to sigma_max, x_{i+1} = x_i + sqrt(sigma_i^2 - sigma_{i-1}^2) z.
    """

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, N: int = 1000):
        super().__init__(N)
        _check_positive(sigma_min=sigma_min, sigma_max=sigma_max)
        if sigma_min >= sigma_max:
            raise ValueError(f"sigma_min must be < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}.")
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)

    @property
    def T(self):
        return 1.0

    @property
    def discrete_sigmas(self) -> np.ndarray:
        """SMLD's geometric noise ladder, `(N,)`, increasing."""
        return np.exp(np.linspace(math.log(self.sigma_min), math.log(self.sigma_max), self.N))

    def sde(self, x, t):
        t = jnp.asarray(t, x.dtype)
        sigma = self.sigma_min * (self.sigma_max / self.sigma_min) ** t
        diffusion = sigma * math.sqrt(2 * math.log(self.sigma_max / self.sigma_min))
        return jnp.zeros_like(x), diffusion

    def marginal_coeffs(self, t):
        return jnp.ones_like(t), self.sigma_min * (self.sigma_max / self.sigma_min) ** t

    def prior_sampling(self, key, shape):
        return jax.random.normal(key, shape) * self.sigma_max

    def prior_logp(self, z):
        return self._standard_normal_logp(z, var=self.sigma_max**2)

    def discretize(self, x, t):
        """f = 0 and G = sqrt(sigma_i^2 - sigma_{i-1}^2) (with sigma_{-1} = 0), SMLD's chain."""
        index = jnp.clip((t * (self.N - 1) / self.T).astype(jnp.int32), 0, self.N - 1)
        sigmas = jnp.asarray(self.discrete_sigmas, x.dtype)
        sigma = sigmas[index]
        adjacent = jnp.where(index == 0, jnp.zeros_like(sigma), sigmas[jnp.maximum(index - 1, 0)])
        return jnp.zeros_like(x), jnp.sqrt(sigma**2 - adjacent**2)

    def sigma_to_t(self, sigma):
        return jnp.log(jnp.asarray(sigma) / self.sigma_min) / math.log(self.sigma_max / self.sigma_min)


# ---------------------------------------------------------------------------------------
# Linear Gaussian paths given by their marginal coefficients (flow matching, EDM, any pair).


def _check_eps(eps, T):
    _check_positive(eps=eps)
    if eps >= T:
        raise ValueError(f"eps must be < T={T}, got {eps}.")


class LinearGaussianPath(SDE):
    """The path x_t = alpha(t) x_0 + sigma(t) z, z ~ N(0, I), t in [0, T], as the linear SDE

        dx = f(t) x dt + g(t) dw,   f = d log alpha / dt,   g^2 = d sigma^2 / dt - 2 f sigma^2,

    whose kernel is N(alpha x_0, sigma^2 I) (alpha(0) = 1; from x(0) ~ N(x_0, sigma(0)^2 I)
    when sigma(0) > 0, VE's convention). sigma/alpha must increase (so g^2 >= 0).

    Subclasses give `marginal_coeffs`, `T` and `eps` (the samplers' default last time);
    the derivatives come from `SDE.coeffs_and_derivatives`, by `jax.jvp` unless overridden.
    Prior N(0, sigma(T)^2 I): p_T up to alpha(T) x_0, so T must make alpha(T) small
    against sigma(T) (as for VP). The chain (`discretize`) is the exact kernel from
    s = max(t - T/N, 0) to t, so it is exact at T for every N:

        x_t = (alpha_t / alpha_s) x_s + G z,   G^2 = sigma_t^2 - (alpha_t / alpha_s)^2 sigma_s^2.
    """

    eps: float

    def drift_and_diffusion_sq(self, t):
        """f(t) = alpha'/alpha and g(t)^2 = 2 sigma (sigma' - f sigma), each `(B,)`."""
        alpha, sigma, dalpha, dsigma = self.coeffs_and_derivatives(t)
        f = dalpha / alpha
        return f, jnp.maximum(2.0 * sigma * (dsigma - f * sigma), 0.0)

    def sde(self, x, t):
        t = jnp.asarray(t, x.dtype)
        f, g2 = self.drift_and_diffusion_sq(t)
        return batch_broadcast(f, x) * x, jnp.sqrt(g2)

    def _prior_std(self, dtype):
        return self.marginal_coeffs(jnp.full((1,), self.T, dtype))[1][0]

    def prior_sampling(self, key, shape):
        z = jax.random.normal(key, shape)
        return z * self._prior_std(z.dtype)

    def prior_logp(self, z):
        return self._standard_normal_logp(z, var=self._prior_std(z.dtype) ** 2)

    def chain_step(self, t):
        """The chain's step into t from s = max(t - T/N, 0): (alpha_t / alpha_s, G, sigma_s, sigma_t), `(B,)`."""
        s = jnp.maximum(t - self.T / self.N, 0.0)
        alpha_s, sigma_s = self.marginal_coeffs(s)
        alpha_t, sigma_t = self.marginal_coeffs(t)
        rho_s, rho_t = sigma_s / alpha_s, sigma_t / alpha_t
        # G^2 = alpha_t^2 (rho_t^2 - rho_s^2), as a product: no cancellation of two squares.
        G = alpha_t * jnp.sqrt(jnp.maximum((rho_t - rho_s) * (rho_t + rho_s), 0.0))
        return alpha_t / alpha_s, G, sigma_s, sigma_t

    def discretize(self, x, t):
        """f = (alpha_t / alpha_s - 1) x and G, the exact kernel from s = t - T/N (class docstring)."""
        ratio, G, _, _ = self.chain_step(jnp.asarray(t, x.dtype))
        return batch_broadcast(ratio - 1.0, x) * x, G


class RectifiedFlow(LinearGaussianPath):
    """The rectified-flow / flow-matching path x_t = (1 - t) x_0 + t z (Liu et al. 2022,
    Lipman et al. 2022): f = -1/(1 - t), g^2 = 2t / (1 - t).

    f and g diverge at t = 1 (though the probability-flow velocity z - x_0 does not), so the
    process ends at T < 1 (default 0.999, sigma/alpha = 999); prior N(0, T^2 I), whose
    mismatch with p_T is of order alpha(T) = 1 - T. sigma_to_t: t = r / (1 + r).
    """

    def __init__(self, T: float = 0.999, eps: float = 1e-3, N: int = 1000):
        super().__init__(N)
        _check_positive(T=T)
        if T >= 1.0:
            raise ValueError(f"T must be < 1 for the rectified flow (f(1) = -inf), got {T}.")
        _check_eps(eps, T)
        self._T, self.eps = float(T), float(eps)

    @property
    def T(self):
        return self._T

    def marginal_coeffs(self, t):
        return 1.0 - t, t

    def coeffs_and_derivatives(self, t):
        return 1.0 - t, t, -jnp.ones_like(t), jnp.ones_like(t)

    def sigma_to_t(self, sigma):
        sigma = jnp.asarray(sigma)
        return sigma / (1.0 + sigma)


class EDMPath(LinearGaussianPath):
    """EDM's path (Karras et al. 2022): alpha = 1, sigma(t) = t on [0, sigma_max]: f = 0, g = sqrt(2t).

    A VE SDE timed by its noise level; prior N(0, sigma_max^2 I); the samplers' default
    last time is sigma_min (EDM's 0.002). sigma_to_t is the identity. Grids uniform in t
    (PC, DDIM's default) are uniform in sigma here, coarse at small sigma: prefer EDM's,
    DPM-Solver's logSNR grid or the adaptive ODE.
    """

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0, N: int = 1000):
        super().__init__(N)
        _check_positive(sigma_min=sigma_min, sigma_max=sigma_max)
        if sigma_min >= sigma_max:
            raise ValueError(f"sigma_min must be < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}.")
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)

    @property
    def T(self):
        return self.sigma_max

    @property
    def eps(self):
        return self.sigma_min

    def marginal_coeffs(self, t):
        return jnp.ones_like(t), t

    def coeffs_and_derivatives(self, t):
        return jnp.ones_like(t), t, jnp.zeros_like(t), jnp.ones_like(t)

    def sigma_to_t(self, sigma):
        return jnp.asarray(sigma)


class LinearPath(LinearGaussianPath):
    """A linear Gaussian path from any `alpha_fn(t)`, `sigma_fn(t)`: elementwise jnp functions
    of t `(B,)`, with alpha(0) = 1, alpha > 0, sigma >= 0 and sigma/alpha increasing on
    [0, T] (checked on a 513-point grid). f and g^2 by autodiff (class `LinearGaussianPath`),
    so where sigma = 0 with an infinite derivative (sigma ~ sqrt(t), as VP at t = 0) g is
    NaN at that t; the samplers, the likelihood and the losses evaluate it at t >= eps only.
    sigma_to_t by bisection. The functions are part of the SDE's value (compared by
    identity): reuse the same function objects to reuse compiled samplers.
    """

    def __init__(self, alpha_fn: Callable, sigma_fn: Callable, T: float = 1.0, eps: float = 1e-3, N: int = 1000):
        super().__init__(N)
        if not (callable(alpha_fn) and callable(sigma_fn)):
            raise ValueError("alpha_fn and sigma_fn must be callables of t.")
        _check_positive(T=T)
        _check_eps(eps, T)
        self.alpha_fn, self.sigma_fn, self._T, self.eps = alpha_fn, sigma_fn, float(T), float(eps)
        with jax.ensure_compile_time_eval():
            t = jnp.linspace(0.0, self._T, 513)
            alpha, sigma = (np.asarray(c, np.float64) for c in self.marginal_coeffs(t))
            if alpha.shape != t.shape or sigma.shape != t.shape:
                raise ValueError(
                    f"LinearPath: alpha_fn and sigma_fn must map t (B,) to (B,), got {alpha.shape}, {sigma.shape}."
                )
            g2 = np.asarray(self.drift_and_diffusion_sq(t[1:])[1])  # sigma ~ sqrt(t) has sigma'(0) = inf
        if not (np.all(np.isfinite(alpha)) and np.all(np.isfinite(sigma)) and np.all(np.isfinite(g2))):
            raise ValueError("LinearPath: alpha, sigma and their derivatives must be finite on [0, T].")
        if abs(alpha[0] - 1.0) > 1e-6 or np.any(alpha <= 0) or np.any(sigma < 0):
            raise ValueError(
                f"LinearPath: need alpha(0) = 1, alpha > 0 and sigma >= 0 on [0, T]; alpha(0) = {alpha[0]:.6g}."
            )
        ratio = sigma / alpha
        if not (np.all(np.diff(ratio) >= 0) and ratio[-1] > ratio[0]):
            raise ValueError("LinearPath: sigma/alpha must increase on [0, T] (else g^2 < 0).")

    @property
    def T(self):
        return self._T

    def marginal_coeffs(self, t):
        return self.alpha_fn(t), self.sigma_fn(t)


SDES = {
    "vpsde": VPSDE,
    "subvpsde": subVPSDE,
    "vesde": VESDE,
    "cosinevpsde": CosineVPSDE,
    "rectified_flow": RectifiedFlow,
    "edm": EDMPath,
}


def get_sde(name: str, **kwargs) -> SDE:
    """Build an SDE by (case-insensitive) name: vpsde, subvpsde, vesde, cosinevpsde, rectified_flow, edm."""
    key = name.lower()
    if key not in SDES:
        raise ValueError(f"Unknown SDE {name!r}; valid names: {', '.join(sorted(SDES))}.")
    return SDES[key](**kwargs)


def default_eps(sde: SDE) -> float:
    """Smallest sampling time: Song et al.'s 1e-5 for VE and 1e-3 for VP-type SDEs; a path's `eps`."""
    base = getattr(sde, "forward", sde)
    if isinstance(base, LinearGaussianPath):
        return base.eps
    return 1e-5 if isinstance(base, VESDE) else 1e-3
