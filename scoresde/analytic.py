"""Ground truth: distributions whose perturbed densities and scores are exact.

Under any SDE of `sde_lib`, x(t) = s(t) x(0) + sigma(t) z. A Gaussian mixture
sum_k w_k N(mu_k, Sigma_k) therefore stays a Gaussian mixture,

    p_t(x) = sum_k w_k N(x; s mu_k, s^2 Sigma_k + sigma^2 I),

with an exact log-density and score at every t. Each covariance is diagonalized once
(Sigma_k = U_k diag(lam_k) U_k^T), so every perturbed covariance is
U_k diag(s^2 lam_k + sigma^2) U_k^T and costs O(D^2) per point to evaluate.

The 2-D toy data sets researchers use are here too, as samplers; those with an
exact density expose `log_prob`.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from scoresde.sde_lib import SDE


class GaussianMixture:
    """sum_k w_k N(mu_k, Sigma_k) in D dimensions.

    Args:
      weights: `(K,)`, positive; normalized here.
      means: `(K, D)`.
      covs: `(K, D)` diagonal variances, or `(K, D, D)` full covariances (symmetric
        positive definite).
      labels: optional class label `(K,)` of each component (ints in [0, num_classes)),
        which makes the mixture a labelled data set with exact class-conditional scores
        (`score_fn(sde, conditional=True)`) and an exact noisy classifier
        (`class_log_prob_t`).
    Points are `(B, D)`, or `(B, ...)` with prod(...) = D (images are flattened).
    """

    def __init__(self, weights, means, covs, labels=None):
        weights = np.asarray(weights, np.float64)
        means = np.asarray(means, np.float64)
        covs = np.asarray(covs, np.float64)
        if means.ndim != 2:
            raise ValueError(f"means must be (K, D), got shape {means.shape}.")
        K, D = means.shape
        if weights.shape != (K,) or np.any(weights <= 0):
            raise ValueError(f"weights must be {K} positive numbers, got {weights}.")
        if covs.shape == (K, D):
            if np.any(covs <= 0):
                raise ValueError("diagonal covariances must be positive.")
            eigvals, eigvecs = covs, np.broadcast_to(np.eye(D), (K, D, D))
        elif covs.shape == (K, D, D):
            if not np.allclose(covs, np.swapaxes(covs, 1, 2)):
                raise ValueError("covariances must be symmetric.")
            eigvals, eigvecs = np.linalg.eigh(covs)
            if np.any(eigvals <= 0):
                raise ValueError("covariances must be positive definite.")
        else:
            raise ValueError(f"covs must be (K, D) or (K, D, D) = ({K}, {D}[, {D}]), got shape {covs.shape}.")
        self.weights = weights / weights.sum()
        self.means = means
        self.covs = covs if covs.ndim == 3 else np.einsum("kd,de->kde", covs, np.eye(D))
        self.eigvals = eigvals  # (K, D)
        self.eigvecs = np.array(eigvecs)  # (K, D, D), columns are eigenvectors
        self.dim = D
        self.labels = None if labels is None else np.asarray(labels, np.int32)
        if self.labels is not None and (self.labels.shape != (K,) or self.labels.min() < 0):
            raise ValueError(f"labels must be {K} non-negative class indices, got {labels}.")

    @property
    def num_classes(self) -> int:
        if self.labels is None:
            raise ValueError("This mixture has no labels; pass labels=(K,) class indices.")
        return int(self.labels.max()) + 1

    @property
    def num_components(self) -> int:
        return len(self.weights)

    def sample(self, key, n: int, return_labels: bool = False):
        """n samples `(n, D)` (and their component labels `(n,)` if asked)."""
        k_comp, k_noise = jax.random.split(key)
        labels = jax.random.choice(k_comp, self.num_components, (n,), p=jnp.asarray(self.weights))
        z = jax.random.normal(k_noise, (n, self.dim))
        scale = jnp.asarray(self.eigvecs * np.sqrt(self.eigvals)[:, None, :], z.dtype)  # U sqrt(lam)
        x = jnp.asarray(self.means, z.dtype)[labels] + jnp.einsum("nde,ne->nd", scale[labels], z)
        return (x, labels) if return_labels else x

    # Per-component quantities of p_t, for points x `(B, D)` at coefficients s, sigma `(B,)`.
    def _component_terms(self, x, s, sigma):
        dtype = x.dtype
        means = jnp.asarray(self.means, dtype)
        U = jnp.asarray(self.eigvecs, dtype)
        lam = jnp.asarray(self.eigvals, dtype)
        var = s[:, None, None] ** 2 * lam[None] + sigma[:, None, None] ** 2  # (B, K, D)
        diff = x[:, None, :] - s[:, None, None] * means[None]  # (B, K, D)
        proj = jnp.einsum("bkd,kde->bke", diff, U)  # coordinates in each eigenbasis
        log_norm = -0.5 * jnp.sum(jnp.log(2 * jnp.pi * var), axis=-1)
        log_comp = jnp.log(jnp.asarray(self.weights, dtype)) + log_norm - 0.5 * jnp.sum(proj**2 / var, -1)
        return log_comp, proj, var, U  # (B, K), (B, K, D), (B, K, D), (K, D, D)

    def _log_prob_coeffs(self, x, s, sigma):
        flat = jnp.reshape(x, (x.shape[0], -1))
        log_comp, *_ = self._component_terms(flat, s, sigma)
        return jax.nn.logsumexp(log_comp, axis=-1)

    def log_prob(self, x):
        """log p_0(x) `(B,)` of the unperturbed mixture."""
        ones = jnp.ones(x.shape[:1], x.dtype)
        return self._log_prob_coeffs(x, ones, jnp.zeros_like(ones))

    def log_prob_t(self, x, t, sde: SDE):
        """log p_t(x) `(B,)`: the exact marginal of the mixture perturbed by `sde` to time t `(B,)`."""
        s, sigma = sde.marginal_coeffs(jnp.asarray(t, x.dtype))
        return self._log_prob_coeffs(x, s, sigma)

    def posterior_t(self, x, t, sde: SDE):
        """p_t(component k | x(t) = x), `(B, K)`: the exact noisy classifier."""
        s, sigma = sde.marginal_coeffs(jnp.asarray(t, x.dtype))
        log_comp, *_ = self._component_terms(jnp.reshape(x, (x.shape[0], -1)), s, sigma)
        return jax.nn.softmax(log_comp, axis=-1)

    def class_log_prob_t(self, x, t, sde: SDE):
        """log p_t(y | x(t) = x), `(B, num_classes)`: the exact noisy classifier of a labelled
        mixture, log sum_{k: label_k = y} p_t(k | x)."""
        s, sigma = sde.marginal_coeffs(jnp.asarray(t, x.dtype))
        log_comp, *_ = self._component_terms(jnp.reshape(x, (x.shape[0], -1)), s, sigma)
        log_post = jax.nn.log_softmax(log_comp, axis=-1)  # (B, K)
        in_class = jnp.asarray(self.labels[None, :] == np.arange(self.num_classes)[:, None])  # (C, K)
        return jax.nn.logsumexp(jnp.where(in_class[None], log_post[:, None, :], -jnp.inf), axis=-1)

    def score_fn(self, sde: SDE, conditional: bool = False):
        """The exact score grad_x log p_t(x), as a `score_fn(x, t) -> (B, ...)`.

        grad log p_t(x) = -sum_k r_k(x) C_k^{-1} (x - s mu_k), with r_k the posterior
        responsibilities and C_k = s^2 Sigma_k + sigma^2 I.

        conditional=True (a labelled mixture): `score_fn(x, t, y=None)` with class labels
        y `(B,)`, the exact grad_x log p_t(x | y): the same sum over the components of
        class y only. y = None, or -1 for an example, gives the unconditional score.
        """

        def score(x, t, y=None):
            flat = jnp.reshape(x, (x.shape[0], -1))
            s, sigma = sde.marginal_coeffs(jnp.asarray(t, x.dtype))
            log_comp, proj, var, U = self._component_terms(flat, s, sigma)
            if y is not None:
                labels = jnp.asarray(self.labels)
                keep = (y[:, None] < 0) | (labels[None, :] == y[:, None])  # (B, K)
                log_comp = jnp.where(keep, log_comp, -jnp.inf)
            resp = jax.nn.softmax(log_comp, axis=-1)  # (B, K)
            weighted = resp[..., None] * proj / var  # (B, K, D), in eigen-coordinates
            return jnp.reshape(-jnp.einsum("bke,kde->bd", weighted, U), x.shape)

        if conditional:
            self.num_classes  # raises for an unlabelled mixture
            return score
        return lambda x, t: score(x, t)

    def component(self, k: int) -> "GaussianMixture":
        """The k-th component alone, as a one-component mixture (a class-conditional target)."""
        return GaussianMixture([1.0], self.means[k : k + 1], self.covs[k : k + 1])

    def class_conditional(self, y: int) -> "GaussianMixture":
        """p(x | y) of a labelled mixture: its components of class y, reweighted."""
        keep = self.labels == y
        if not keep.any():
            raise ValueError(f"No component has label {y}; labels are {self.labels.tolist()}.")
        return GaussianMixture(self.weights[keep], self.means[keep], self.covs[keep], self.labels[keep])

    def class_weights(self) -> np.ndarray:
        """p(y) `(num_classes,)` of a labelled mixture."""
        return np.bincount(self.labels, weights=self.weights, minlength=self.num_classes)

    @property
    def mean(self) -> np.ndarray:
        return self.weights @ self.means

    @property
    def covariance(self) -> np.ndarray:
        centred = self.means - self.mean
        return np.einsum("k,kde->de", self.weights, self.covs + np.einsum("kd,ke->kde", centred, centred))


def separated_mixture(dim: int, num_modes: int = 3, spread: float = 4.0, seed: int = 0) -> GaussianMixture:
    """A test target with well-separated modes of unequal weights and scales, in `dim` dimensions.

    Mode k is centred on spread * e_k-like directions (random, but at least `spread`
    apart) with a random full covariance whose eigenvalues lie in [0.1, 0.5].
    """
    rng = np.random.default_rng(seed)
    directions = np.linalg.qr(rng.normal(size=(dim, dim)))[0][:, :num_modes].T if dim >= num_modes else None
    if directions is None:
        angles = 2 * np.pi * np.arange(num_modes) / num_modes
        directions = np.stack([np.cos(angles), np.sin(angles)], 1)
    means = spread * directions
    weights = np.linspace(1.0, 2.0 * num_modes - 1, num_modes)  # unequal: 1, 3, 5, ...
    covs = []
    for _ in range(num_modes):
        q = np.linalg.qr(rng.normal(size=(dim, dim)))[0]
        covs.append(q @ np.diag(rng.uniform(0.1, 0.5, dim)) @ q.T)
    return GaussianMixture(weights, means, np.stack(covs))


# ----------------------------------------------------------------------------------------
# 2-D toy data sets.


def eight_gaussians(radius: float = 2.0, std: float = 0.2) -> GaussianMixture:
    """Eight equal isotropic Gaussians on a circle of the given radius."""
    angles = 2 * np.pi * np.arange(8) / 8
    means = radius * np.stack([np.cos(angles), np.sin(angles)], 1)
    return GaussianMixture(np.ones(8), means, np.full((8, 2), std**2))


def gaussian_grid(size: int = 5, spacing: float = 1.0, std: float = 0.1) -> GaussianMixture:
    """A size x size grid of equal isotropic Gaussians, centred on the origin."""
    ticks = (np.arange(size) - (size - 1) / 2) * spacing
    means = np.stack(np.meshgrid(ticks, ticks, indexing="ij"), -1).reshape(-1, 2)
    return GaussianMixture(np.ones(size * size), means, np.full((size * size, 2), std**2))


class TwoMoons:
    """Two interleaving half circles with Gaussian noise (no closed-form density)."""

    def __init__(self, noise: float = 0.05):
        self.noise, self.dim = noise, 2

    def sample(self, key, n: int):
        k_side, k_angle, k_noise = jax.random.split(key, 3)
        upper = jax.random.bernoulli(k_side, 0.5, (n,))
        theta = jax.random.uniform(k_angle, (n,), maxval=jnp.pi)
        x = jnp.where(upper, jnp.cos(theta), 1.0 - jnp.cos(theta))
        y = jnp.where(upper, jnp.sin(theta), 0.5 - jnp.sin(theta))
        pts = jnp.stack([x - 0.5, y - 0.25], 1) * 2.0
        return pts + self.noise * jax.random.normal(k_noise, pts.shape)


class SwissRoll:
    """The 2-D swiss roll, scaled to about [-3, 3]^2 (no closed-form density)."""

    def __init__(self, noise: float = 0.05):
        self.noise, self.dim = noise, 2

    def sample(self, key, n: int):
        k_angle, k_noise = jax.random.split(key)
        theta = 1.5 * jnp.pi * (1 + 2 * jax.random.uniform(k_angle, (n,)))
        pts = jnp.stack([theta * jnp.cos(theta), theta * jnp.sin(theta)], 1) / 5.0
        return pts + self.noise * jax.random.normal(k_noise, pts.shape)


class Checkerboard:
    """Uniform density on the dark squares of a 4 x 4 checkerboard over [-2, 2]^2.

    Exact density: 1/8 on the 8 dark unit squares, 0 elsewhere.
    """

    def __init__(self):
        self.dim = 2

    def sample(self, key, n: int):
        k_x, k_y, k_shift = jax.random.split(key, 3)
        x = jax.random.uniform(k_x, (n,), minval=-2.0, maxval=2.0)
        y = jax.random.uniform(k_y, (n,), minval=0.0, maxval=1.0) + 2.0 * jax.random.randint(k_shift, (n,), -1, 1)
        y = y + (jnp.floor(x) % 2)  # dark squares: floor(x) + floor(y) even
        return jnp.stack([x, y], 1)

    def log_prob(self, x):
        inside = jnp.all(jnp.abs(x) <= 2.0, axis=-1)
        dark = (jnp.floor(x[:, 0]) + jnp.floor(x[:, 1])) % 2 == 0
        return jnp.where(inside & dark, math.log(1 / 8), -jnp.inf)


TOY_TARGETS = {
    "8gaussians": eight_gaussians,
    "grid": gaussian_grid,
    "moons": TwoMoons,
    "swissroll": SwissRoll,
    "checkerboard": Checkerboard,
}


def toy_target(name: str):
    """A 2-D toy data set by name: 8gaussians, grid, moons, swissroll, checkerboard."""
    if name not in TOY_TARGETS:
        raise ValueError(f"Unknown toy target {name!r}; valid names: {', '.join(TOY_TARGETS)}.")
    return TOY_TARGETS[name]()
