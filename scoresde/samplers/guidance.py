"""Conditional sampling: bind a condition, classifier-free guidance, classifier guidance.

A conditional score function extends the contract to `score_fn(x, t, y=None)`, with y
class labels `(B,)` (-1: no label), token sequences `(B, L)` or embeddings `(B, L, E)`
(all padding: none), and y = None the unconditional score (see `scoresde.conditioning`). Each function here returns a
`ScoreModel` called as score(x, t), so guidance works with every sampler and with the
likelihood. Its condition y and guidance weight are traced leaves: a sweep over labels
or weights reuses one compiled sampler:

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

from scoresde.conditioning import null_condition
from scoresde.score import ScoreModel, as_score_model, pytree_dataclass


@pytree_dataclass
class Conditioned(ScoreModel):
    """s(x, t, y) with y `(B,)`, `(B, L)` or `(B, L, E)` bound: sample p(x | y) with any sampler."""

    score: ScoreModel
    y: jax.Array

    def __call__(self, x, t):
        return self.score(x, t, self.y)


@pytree_dataclass
class ClassifierFree(ScoreModel):
    """(1 + w) s(x, t, y) - w s(x, t, null), both halves in one batched call `(2B, ...)`."""

    score: ScoreModel
    y: jax.Array
    w: jax.Array

    def __call__(self, x, t):
        both_y = jnp.concatenate([self.y, null_condition(self.y)])
        both = self.score(jnp.concatenate([x, x]), jnp.concatenate([t, t]), both_y)
        cond, uncond = jnp.split(both, 2)
        return (1.0 + self.w) * cond - self.w * uncond


@pytree_dataclass
class ClassifierGuided(ScoreModel):
    """s(x, t) + scale * grad_x log p_t(y | x), with `classifier(x, t) -> (B, C)` log-probabilities."""

    score: ScoreModel
    classifier: ScoreModel
    y: jax.Array
    scale: jax.Array

    def __call__(self, x, t):
        def log_prob_y(x):
            return jnp.sum(jnp.take_along_axis(self.classifier(x, t), self.y[:, None], axis=1))

        return self.score(x, t) + self.scale * jax.grad(log_prob_y)(x)


def condition(score_fn, y) -> Conditioned:
    """s(x, t, y) as a score model called as score(x, t)."""
    return Conditioned(as_score_model(score_fn), jnp.asarray(y))


def classifier_free(score_fn, y, w: float) -> ClassifierFree:
    """Classifier-free guidance (Ho & Salimans).

    Args:
      score_fn: a conditional `score_fn(x, t, y)` trained with condition dropout.
      y: the condition `(B,)`, `(B, L)` or `(B, L, E)` (`scoresde.conditioning`).
      w: the guidance weight; 0 gives the conditional score, -1 the unconditional one.
    """
    return ClassifierFree(as_score_model(score_fn), jnp.asarray(y), jnp.asarray(w, jnp.float32))


def classifier_guidance(score_fn, log_prob_fn, y, scale: float = 1.0) -> ClassifierGuided:
    """Classifier guidance (Dhariwal & Nichol): s(x, t) + scale * grad_x log p_t(y | x).

    Args:
      score_fn: the unconditional `score_fn(x, t)`.
      log_prob_fn: a noise-conditional classifier `log_prob_fn(x, t) -> (B, C)` of log
        p_t(c | x) (e.g. `models.classifier.get_classifier_log_prob_fn`, or a labelled
        mixture's exact `class_log_prob_t`).
      y: class labels `(B,)`.
      scale: gamma; 1 samples p(x | y) when both the score and the classifier are exact.
    """
    return ClassifierGuided(
        as_score_model(score_fn), as_score_model(log_prob_fn), jnp.asarray(y), jnp.asarray(scale, jnp.float32)
    )
