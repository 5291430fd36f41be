"""Conditional sampling: bind a condition, classifier-free guidance, classifier guidance.

A conditional score function extends the contract to `score_fn(x, t, y=None)`, with y
class labels `(B,)` (-1: no label) or token sequences `(B, L)` (all padding: none), and
y = None the unconditional score (see `models.utils`). Each function here returns a
plain `score_fn(x, t)`, so guidance works with every sampler and with the likelihood:

    samplers.sample(key, sde, classifier_free(score_fn, y, w=1.0), shape, "dpm_solver++")

Guidance targets the tilted density p_t(x | y) p_t(y | x)^w, whose score is

    grad log p_t(x | y) + w grad log p_t(y | x)
      = (1 + w) s(x, t, y) - w s(x, t, None)             (classifier-free, Ho & Salimans)
      = s(x, t) + (1 + w) grad log p_t(y | x)            (classifier, Dhariwal & Nichol);

w = 0 samples p(x | y). `classifier_guidance` takes the scale gamma = 1 + w directly,
as the reference's conditional sampler (gamma = 1) and Dhariwal & Nichol do.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from scoresde.models.utils import null_condition


def condition(score_fn, y):
    """s(x, t, y) as a plain `score_fn(x, t)`: sample p(x | y) with any sampler."""
    y = jnp.asarray(y)
    return lambda x, t: score_fn(x, t, y)


def classifier_free(score_fn, y, w: float):
    """(1 + w) s(x, t, y) - w s(x, t, null), both halves in one batched call `(2B, ...)`.

    Args:
      score_fn: a conditional `score_fn(x, t, y)` trained with condition dropout.
      y: the condition `(B,)` or `(B, L)`.
      w: the guidance weight; 0 gives the conditional score, -1 the unconditional one.
    """
    y = jnp.asarray(y)
    both_y = jnp.concatenate([y, null_condition(y)])

    def guided(x, t):
        both = score_fn(jnp.concatenate([x, x]), jnp.concatenate([t, t]), both_y)
        cond, uncond = jnp.split(both, 2)
        return (1.0 + w) * cond - w * uncond

    return guided


def classifier_guidance(score_fn, log_prob_fn, y, scale: float = 1.0):
    """s(x, t) + scale * grad_x log p_t(y | x).

    Args:
      score_fn: the unconditional `score_fn(x, t)`.
      log_prob_fn: a noise-conditional classifier `log_prob_fn(x, t) -> (B, C)` of log
        p_t(c | x) (e.g. `models.classifier.get_classifier_log_prob_fn`, or a labelled
        mixture's exact `class_log_prob_t`).
      y: class labels `(B,)`.
      scale: gamma; 1 samples p(x | y) when both the score and the classifier are exact.
    """
    y = jnp.asarray(y)

    def log_prob_y(x, t):
        return jnp.sum(jnp.take_along_axis(log_prob_fn(x, t), y[:, None], axis=1))

    def guided(x, t):
        return score_fn(x, t) + scale * jax.grad(log_prob_y)(x, t)

    return guided
