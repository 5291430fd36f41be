"""Sample-quality metrics on feature vectors: Fréchet distance, KID, Inception Score.

All functions here are feature-space agnostic numerics in float64 NumPy. What the
numbers mean depends on the network that produced the features: the FID is the
Fréchet distance in the pool features of the FID Inception-v3, while "FD-digits" is
the same formula in the bundled digits classifier's features, and the two are never
comparable. `scoresde.evaluation.feature_spaces` attaches the feature-space name to
every reported number; `Stats` carries it through save/load.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
from scipy.special import softmax, xlogy


# --------------------------------------------------------------------------------------
# Fréchet distance
# --------------------------------------------------------------------------------------


def _sqrt_eigvals(w):
    """sqrt of the eigenvalues `w` of a PSD matrix, with those at round-off level
    (|w| <= D eps max w, including negative ones) set to 0."""
    return np.sqrt(np.where(w > len(w) * np.finfo(w.dtype).eps * max(w.max(), 0), w, 0))


def _psd_sqrt(a):
    """Symmetric PSD square root of `a` `(D, D)` by eigendecomposition."""
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * _sqrt_eigvals(w)) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2):
    """Fréchet (2-Wasserstein) distance between N(mu1, sigma1) and N(mu2, sigma2).

        d^2 = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^{1/2}),

    mu `(D,)`, sigma `(D, D)`. The trace term uses tr((S1 S2)^{1/2}) =
    tr((S1^{1/2} S2 S1^{1/2})^{1/2}) = sum_i sqrt(lambda_i), with lambda_i the
    eigenvalues of the symmetric PSD matrix S1^{1/2} S2 S1^{1/2}: real and stable also
    when S1 or S2 is singular (fewer samples than dimensions), where the usual
    `scipy.linalg.sqrtm(S1 @ S2)` needs an eps * I fallback. Returns a float >= 0 (up
    to round-off).
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != mu1.shape * 2:
        raise ValueError(f"shape mismatch: mu {mu1.shape}, {mu2.shape}; sigma {s1.shape}, {s2.shape}")
    r1 = _psd_sqrt(s1)
    m = r1 @ s2 @ r1
    tr_covmean = np.sum(_sqrt_eigvals(np.linalg.eigvalsh((m + m.T) / 2)))
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


# --------------------------------------------------------------------------------------
# Kernel Inception Distance
# --------------------------------------------------------------------------------------


def polynomial_mmd2(x, y):
    """Unbiased MMD^2 with the cubic polynomial kernel k(a, b) = (a.b / d + 1)^3.

    x `(m, d)`, y `(n, d)`, m, n >= 2:

        MMD^2_u = sum_{i!=j} k(x_i, x_j) / (m(m-1)) + sum_{i!=j} k(y_i, y_j) / (n(n-1))
                  - 2 sum_{i,j} k(x_i, y_j) / (mn).
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    m, n, d = len(x), len(y), x.shape[1]
    kxx, kyy, kxy = ((a @ b.T / d + 1) ** 3 for a, b in ((x, x), (y, y), (x, y)))
    return float(
        (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
        + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
        - 2 * kxy.mean()
    )


def kid(feats1, feats2, num_subsets=100, subset_size=1000, seed=0):
    """Kernel Inception Distance (Bińkowski et al. 2018) between feature sets.

    feats1 `(N1, D)`, feats2 `(N2, D)`. Averages `polynomial_mmd2` over `num_subsets`
    pairs of random subsets, each of m = min(subset_size, N1, N2) rows drawn without
    replacement from each set. Returns `(mean, std)` over subsets; the mean is an
    unbiased estimate of MMD^2 (it can be slightly negative). The std is the spread of
    one subset's estimate, an upper bound on the standard error of the mean (0 when m
    equals both set sizes: every subset is then the whole set).
    """
    feats1, feats2 = np.asarray(feats1, np.float64), np.asarray(feats2, np.float64)
    m = min(subset_size, len(feats1), len(feats2))
    if m < 2:
        raise ValueError("KID needs at least 2 samples in each set")
    rng = np.random.default_rng(seed)
    vals = [
        polynomial_mmd2(
            feats1[rng.choice(len(feats1), m, replace=False)],
            feats2[rng.choice(len(feats2), m, replace=False)],
        )
        for _ in range(num_subsets)
    ]
    return float(np.mean(vals)), float(np.std(vals))


# --------------------------------------------------------------------------------------
# Inception Score
# --------------------------------------------------------------------------------------


def inception_score(logits, splits=10, from_logits=True):
    """Inception Score (Salimans et al. 2016) of class predictions, over `splits`.

    logits `(N, C)` (or probabilities p(y|x) when `from_logits=False`). For each of
    `splits` contiguous chunks, IS = exp(E_x KL(p(y|x) || p(y))) with p(y) the chunk's
    mean prediction. Returns `(mean, std)` over chunks. Uniform predictions give 1; a
    confident classifier on class-balanced chunks gives C.
    """
    x = np.asarray(logits, np.float64)
    probs = softmax(x, axis=1) if from_logits else x / x.sum(axis=1, keepdims=True)
    scores = []
    for p in np.array_split(probs, splits):
        kl = np.sum(xlogy(p, p) - xlogy(p, p.mean(axis=0)), axis=1)
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))


# --------------------------------------------------------------------------------------
# Pixel-space metrics (super-resolution against the true images)
# --------------------------------------------------------------------------------------


def psnr(images, reference, peak: float = 1.0):
    """Peak signal-to-noise ratio of each image against its reference, `(N,)` in dB:
    10 log10(peak^2 / MSE), MSE over the pixels of one image `(H, W, C)` (inf where equal)."""
    a, b = np.asarray(images, np.float64), np.asarray(reference, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"PSNR compares images of one shape, got {a.shape} and {b.shape}")
    mse = np.mean((a - b).reshape(len(a), -1) ** 2, axis=1)
    with np.errstate(divide="ignore"):
        return 10 * np.log10(peak**2 / mse)


def image_patches(images, size: int):
    """Every size x size patch of images `(N, H, W, C)`, flattened: `(N (H - size + 1)
    (W - size + 1), size^2 C)`."""
    x = np.asarray(images, np.float64)
    n, h, w, c = x.shape
    if not 1 <= size <= min(h, w):
        raise ValueError(f"patch size must be in [1, {min(h, w)}] for {h}x{w} images, got {size}")
    windows = np.lib.stride_tricks.sliding_window_view(x, (size, size), axis=(1, 2))  # (n, h', w', c, s, s)
    return windows.transpose(0, 1, 2, 4, 5, 3).reshape(-1, size * size * c)


def patch_frechet_distance(images1, images2, size: int = 4) -> float:
    """The Fréchet distance between the distributions of all size x size pixel patches of two
    image sets (`image_patches`): "FD-patch", a feature space of local texture statistics,
    for images no pretrained network reads (a few hundred 16x16 crops: tens of thousands of
    48-d patches, where the whole images' 768-d covariance would be rank-deficient)."""
    s1, s2 = (stats_from_features(image_patches(x, size), f"patches{size}") for x in (images1, images2))
    return frechet_distance(s1.mu, s1.sigma, s2.mu, s2.sigma)


# --------------------------------------------------------------------------------------
# Feature statistics
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class Stats:
    """Gaussian statistics of `count` feature vectors from network `feature_space`:
    mu `(D,)`, sigma `(D, D)` (unbiased sample covariance, ddof=1, as np.cov)."""

    mu: np.ndarray
    sigma: np.ndarray
    count: int
    feature_space: str


class FeatureStats:
    """Streaming mean and covariance of feature vectors, without keeping them.

    Chunks are merged with Chan et al.'s parallel update in float64: with (n, mu, M2)
    for the stats so far and (n_b, mu_b, M2_b) for a chunk, M2 = sum (x - mu)(x - mu)^T,

        delta = mu_b - mu,  n' = n + n_b,  mu' = mu + delta n_b / n',
        M2' = M2 + M2_b + delta delta^T n n_b / n',

    and the covariance is M2 / (n - 1).
    """

    def __init__(self, feature_space: str):
        self.feature_space = feature_space
        self.count, self._mean, self._m2 = 0, None, None

    def update(self, feats):
        """Add a chunk of features `(B, D)`; returns self."""
        x = np.asarray(feats, np.float64)
        if len(x) == 0:
            return self
        x = x.reshape(len(x), -1)
        mu_b = x.mean(axis=0)
        m2_b = (x - mu_b).T @ (x - mu_b)
        if self.count == 0:
            self.count, self._mean, self._m2 = len(x), mu_b, m2_b
            return self
        n, n_b = self.count, len(x)
        delta = mu_b - self._mean
        self.count = n + n_b
        self._mean = self._mean + delta * n_b / self.count
        self._m2 = self._m2 + m2_b + np.outer(delta, delta) * n * n_b / self.count
        return self

    @property
    def mean(self):
        return self._mean

    @property
    def cov(self):
        if self.count < 2:
            raise ValueError("covariance needs at least 2 feature vectors")
        return self._m2 / (self.count - 1)

    def stats(self) -> Stats:
        return Stats(self.mean, self.cov, self.count, self.feature_space)


def stats_from_features(feats, feature_space: str) -> Stats:
    """`Stats` of features `(N, D)` in one go."""
    return FeatureStats(feature_space).update(feats).stats()


def save_stats(path, stats: Stats):
    """Write `stats` to an `.npz` (keys mu, sigma, count, feature_space)."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as f:  # a file object, so NumPy does not append ".npz"
        np.savez(f, mu=stats.mu, sigma=stats.sigma, count=np.int64(stats.count),
                 feature_space=np.str_(stats.feature_space))


def load_stats(path) -> Stats:
    """Read statistics written by `save_stats`."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"no feature statistics at {path!r}: compute them for the reference data "
            "first (`scoresde fid-stats`, or scoresde.evaluation.compute_stats + save_stats)"
        )
    with np.load(path) as f:
        missing = {"mu", "sigma", "count", "feature_space"} - set(f.files)
        if missing:
            raise ValueError(f"{path!r} is not a scoresde stats file: missing {sorted(missing)}")
        return Stats(f["mu"], f["sigma"], int(f["count"]), str(f["feature_space"]))
