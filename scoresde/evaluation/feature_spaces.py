"""Named feature spaces and the metrics reported in them.

    "inception_v3_fid"   FID Inception-v3 pool features (2048-d), 1008-way logits;
                         its Fréchet distance is the FID. Needs converted weights
                         (see `scoresde.evaluation.inception`).
    "digits_classifier"  the bundled 8x8-digits MLP's features (64-d), 10-way logits;
                         its Fréchet distance is "FD-digits", not an FID.
    "pixels_8x8"         no network: the images average-pooled to 8 x 8 (bilinear
                         resize for sizes that 8 does not divide), 8 x 8 x C values
                         in [0, 1]; its Fréchet distance is "FD-pixels8", a
                         low-frequency, offline stand-in where no feature network
                         exists (no logits: no Inception Score).

Every result names its feature space and its Fréchet-distance metric, and statistics
from different feature spaces are never compared.
"""

from __future__ import annotations

import numpy as np

from scoresde.evaluation import digits, inception, metrics

PIXELS = "pixels_8x8"
FD_NAMES = {inception.FEATURE_SPACE: "FID", digits.FEATURE_SPACE: "FD-digits", PIXELS: "FD-pixels8"}


def pooled_pixels(images, size: int = 8) -> np.ndarray:
    """Images `(N, H, W, C)` -> `(N, size * size * C)`: average pooling by H / size (or a
    bilinear resize when size does not divide H and W)."""
    images = np.asarray(images, np.float32)
    n, h, w, c = images.shape
    if h % size == 0 and w % size == 0:
        pooled = images.reshape(n, size, h // size, size, w // size, c).mean((2, 4))
    else:
        import jax

        pooled = np.asarray(jax.image.resize(images, (n, size, size, c), "linear", antialias=True))
    return pooled.reshape(n, -1)


def _check(feature_space):
    if feature_space not in FD_NAMES:
        raise ValueError(f"unknown feature space {feature_space!r}; one of {sorted(FD_NAMES)}")


def _features_and_logits(batch, feature_space, centered, weights):
    if feature_space == inception.FEATURE_SPACE:
        return inception.inception_features(batch, path=weights, centered=centered)
    batch = (np.asarray(batch) + 1) / 2 if centered else batch
    if feature_space == PIXELS:
        feats = pooled_pixels(batch)
        return feats, np.zeros((len(feats), 0), np.float32)
    feats, logits = digits._apply(digits.load_params(), batch)
    return np.asarray(feats), np.asarray(logits)


def _batches(images, batch_size):
    if hasattr(images, "shape"):  # one array: split it
        return (images[i:i + batch_size] for i in range(0, len(images), batch_size))
    return images


def compute_features(images, feature_space, *, centered=False, batch_size=500, weights=None):
    """Features `(N, D)` and logits `(N, C)` of images `(N, H, W, C)` in [0, 1] (or
    [-1, 1] with `centered`), or of an iterable of such batches. `weights`: the FID
    Inception `.npz` (default: $SCORESDE_INCEPTION_WEIGHTS or the cache path)."""
    _check(feature_space)
    outs = [_features_and_logits(b, feature_space, centered, weights)
            for b in _batches(images, batch_size)]
    return tuple(np.concatenate([o[j] for o in outs]) for j in range(2))


def compute_stats(images, feature_space, *, centered=False, batch_size=500, weights=None):
    """`metrics.Stats` of the features of `images` (array or iterable of batches, as in
    `compute_features`), accumulated batch by batch without keeping the features."""
    _check(feature_space)
    acc = metrics.FeatureStats(feature_space)
    for b in _batches(images, batch_size):
        acc.update(_features_and_logits(b, feature_space, centered, weights)[0])
    return acc.stats()


def fd_from_stats(stats1: metrics.Stats, stats2: metrics.Stats) -> dict:
    """Fréchet distance between two `Stats` of the same feature space:
    {"feature_space", "metric" ("FID" or "FD-digits"), "fd", "count1", "count2"}."""
    if stats1.feature_space != stats2.feature_space:
        raise ValueError(f"statistics from different feature spaces: "
                         f"{stats1.feature_space!r} vs {stats2.feature_space!r}")
    return {
        "feature_space": stats1.feature_space,
        "metric": FD_NAMES.get(stats1.feature_space, "FD"),
        "fd": metrics.frechet_distance(stats1.mu, stats1.sigma, stats2.mu, stats2.sigma),
        "count1": stats1.count,
        "count2": stats2.count,
    }


def evaluate(samples, reference, feature_space, *, centered=False, kid_subsets=100,
             kid_subset_size=1000, is_splits=10, seed=0, weights=None) -> dict:
    """All metrics of `samples` `(N, H, W, C)` against `reference` in one feature space.

    `reference` is an image array (same range as the samples) or a `metrics.Stats`
    (then KID, which needs the reference features, is None). Returns {"feature_space",
    "metric", "fd", "kid", "kid_std", "is", "is_std", "count1", "count2"}: the Fréchet
    distance (FID, FD-digits or FD-pixels8), KID (mean, std over subsets), and the Inception
    Score computed with this feature space's classifier (mean, std over splits; None
    without a classifier).
    """
    _check(feature_space)
    feats, logits = compute_features(samples, feature_space, centered=centered, weights=weights)
    sample_stats = metrics.stats_from_features(feats, feature_space)
    if isinstance(reference, metrics.Stats):
        ref_stats, kid = reference, (None, None)
    else:
        ref_feats = compute_features(reference, feature_space, centered=centered, weights=weights)[0]
        ref_stats = metrics.stats_from_features(ref_feats, feature_space)
        kid = metrics.kid(feats, ref_feats, kid_subsets, kid_subset_size, seed)
    is_mean, is_std = metrics.inception_score(logits, splits=is_splits) if logits.shape[1] else (None, None)
    result = fd_from_stats(sample_stats, ref_stats)
    result.update({"kid": kid[0], "kid_std": kid[1], "is": is_mean, "is_std": is_std})
    return result
