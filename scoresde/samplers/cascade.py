"""Super-resolution with a conditional model, and cascades (SR3, Saharia et al. 2021;
cascaded diffusion, Ho et al. 2021).

A super-resolution score model is a conditional score s(x, t, y) whose condition y is a
low-resolution image `(B, H/f, W/f, C)` (`scoresde.conditioning`: a network with
`sr_factor` f sees it upsampled and concatenated to x). It was trained on pairs made on
the fly, y = A x + s n (A the f x f block means, s the noise augmentation of a
`conditioning.LowResolution`), so it samples p(x | A x + s n). Sampling therefore adds the
same noise to the given image (one fixed augmentation level, not fed to the network) and
binds it as the condition (`guidance.condition`): every sampler runs unchanged.

    x, nfe = upsample(key, sde, sr_score, low, LowResolution(2, 0.04), "dpm_solver++", num_steps=20)
    low, x, nfe = cascade(key, base_sde, base_score, sde, sr_score, (64, 4, 4, 1), LowResolution(2, 0.04))

Exact for exact scores: with the conditional score of p(x | y), `upsample` samples
p(x | low + s n), and a cascade whose base samples p(A x) samples p(x) itself, for any s
(tests/test_super_resolution.py checks both on a Gaussian). Both models work in one data
space; `experiment.sample_workdir(sr_workdir, base_workdir=...)` converts between two
workdirs' spaces. For super-resolution with an *unconditional* model, see
`imputation.super_resolve` (an inverse problem).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from scoresde.conditioning import LowResolution
from scoresde.samplers import guidance, registry


def _check_low(low, low_res):
    if not isinstance(low_res, LowResolution):
        raise ValueError(f"low_res must be a scoresde.conditioning.LowResolution, got {type(low_res).__name__}.")
    low = jnp.asarray(low)
    if low.ndim != 4 or not jnp.issubdtype(low.dtype, jnp.floating):
        raise ValueError(f"The low-resolution images must be a float batch (B, h, w, C), got {low.dtype} "
                         f"of shape {low.shape}.")
    return low


def upsample(key, sde, score_fn, low, low_res: LowResolution, sampler: str = "pc", **options):
    """Sample high-resolution images `(B, h f, w f, C)` given low-resolution ones low
    `(B, h, w, C)` (in the model's data space) with a super-resolution score model
    `score_fn(x, t, y)`: the condition is low plus low_res's noise augmentation. sampler:
    any name of `registry.SAMPLERS`, with its options. Returns (x, nfe)."""
    low = _check_low(low, low_res)
    b, h, w, c = low.shape
    f = low_res.factor
    k_aug, k_sample = jax.random.split(key)
    score = guidance.condition(score_fn, low_res.augment(k_aug, low))
    return registry.sample(k_sample, sde, score, (b, h * f, w * f, c), sampler, **options)


def cascade(key, base_sde, base_score, sde, score_fn, low_shape, low_res: LowResolution, *,
            base_sampler: str = "pc", base_options: dict | None = None, sampler: str = "pc", **options):
    """A two-stage cascade: low-resolution samples `low_shape` (B, h, w, C) of the base model
    (base_score on base_sde, with base_sampler and base_options), then `upsample` with the
    super-resolution model. Returns (low, x `(B, h f, w f, C)`, nfe of both stages)."""
    k_base, k_sr = jax.random.split(key)
    low, nfe_base = registry.sample(k_base, base_sde, base_score, tuple(low_shape), base_sampler,
                                    **(base_options or {}))
    x, nfe = upsample(k_sr, sde, score_fn, low, low_res, sampler, **options)
    return low, x, nfe_base + nfe
