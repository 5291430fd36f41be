"""Conditional sampling verified on a labelled Gaussian mixture, whose conditional scores
p_t(x | y) and noisy classifier p_t(y | x) are exact under every linear SDE.

Statistical checks compare sample means (and class fractions) with the exact
conditional target; tolerances are 5 standard errors of the sample size.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scoresde import analytic, losses, models, sde_lib
from scoresde.samplers import guidance, sample

N = 4000
# Four modes, two classes; class 0's modes overlap class 1's (so guidance changes things).
TARGET = analytic.GaussianMixture(
    weights=[1.0, 2.0, 2.0, 1.0],
    means=[[-2.0, 0.0], [0.0, 1.5], [0.5, -1.0], [2.5, 0.5]],
    covs=[[0.3, 0.2], [0.4, 0.3], [0.3, 0.5], [0.2, 0.2]],
    labels=[0, 0, 1, 1],
)
SDES = {"vp": sde_lib.VPSDE(), "ve": sde_lib.VESDE(sigma_max=8.0)}


def _check_matches(x, target: analytic.GaussianMixture, what: str):
    """Sample mean within 5 SE per coordinate; each mode's fraction within 5 SE of its weight."""
    x = np.asarray(x, np.float64)
    n = len(x)
    se = np.sqrt(np.diag(target.covariance) / n)
    err = np.abs(x.mean(0) - target.mean) / se
    assert np.all(err < 5), f"{what}: mean {x.mean(0)} vs exact {target.mean} ({err.max():.1f} SE)"
    # Assign each point to its most likely mode of the full mixture; the reference
    # fractions come from 20 n exact samples of the target (their error is in the tolerance).
    def modes(points):
        t = jnp.full((len(points),), 1e-6)
        return np.argmax(np.asarray(TARGET.posterior_t(jnp.asarray(points), t, SDES["vp"])), -1)

    comp, ref = modes(x), modes(target.sample(jax.random.PRNGKey(99), 20 * n))
    for k in range(TARGET.num_components):
        p_ref, frac = np.mean(ref == k), np.mean(comp == k)
        tol = 5 * np.sqrt(p_ref * (1 - p_ref) / n * (1 + 1 / 20)) + 1e-3
        assert abs(frac - p_ref) < tol, f"{what}: mode {k} has {frac:.3f} of the samples, exact {p_ref:.3f}"


def test_labelled_mixture_exact_quantities(x64):
    """class_log_prob_t and the conditional score against independent computations."""
    sde = SDES["vp"]
    x = jax.random.normal(jax.random.PRNGKey(0), (16, 2)) * 2
    t = jnp.linspace(0.05, 0.9, 16)
    log_p_y = jax.jit(TARGET.class_log_prob_t, static_argnums=2)(x, t, sde)
    # Bayes: p_t(y | x) = p(y) p_t(x | y) / p_t(x), with the class-conditional mixtures.
    for y in (0, 1):
        sub = TARGET.class_conditional(y)

        @jax.jit
        def exact(x):
            log_ratio = sub.log_prob_t(x, t, sde) - TARGET.log_prob_t(x, t, sde)
            # The conditional score is grad log p_t(x | y).
            grad = jax.grad(lambda x: jnp.sum(sub.log_prob_t(x, t, sde)))(x)
            return log_ratio, grad, TARGET.score_fn(sde, conditional=True)(x, t, jnp.full((16,), y))

        log_ratio, grad, score = exact(x)
        np.testing.assert_allclose(log_p_y[:, y], np.log(TARGET.class_weights()[y]) + log_ratio, atol=1e-10)
        np.testing.assert_allclose(score, grad, atol=1e-10)
    np.testing.assert_allclose(jax.nn.logsumexp(log_p_y, -1), 0.0, atol=1e-12)
    # y = -1 (null) and y = None give the unconditional score.
    cond = TARGET.score_fn(sde, conditional=True)
    np.testing.assert_allclose(cond(x, t, jnp.full((16,), -1)), TARGET.score_fn(sde)(x, t), atol=1e-12)
    np.testing.assert_allclose(cond(x, t), TARGET.score_fn(sde)(x, t), atol=1e-12)
    with pytest.raises(ValueError, match="no labels"):
        analytic.GaussianMixture([1.0], [[0.0, 0.0]], [[1.0, 1.0]]).score_fn(sde, conditional=True)


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_guidance_identity(x64, sde_name):
    """Bayes: (1 + w) s(x|y) - w s(x) = s(x) + (1 + w) grad log p_t(y|x), exactly."""
    sde = SDES[sde_name]
    x = jax.random.normal(jax.random.PRNGKey(1), (32, 2)) * 2
    t = jnp.linspace(0.01, 1.0, 32)
    y = jnp.arange(32) % 2
    cond = TARGET.score_fn(sde, conditional=True)
    classifier = lambda x, t: TARGET.class_log_prob_t(x, t, sde)  # noqa: E731

    @jax.jit
    def both(w):
        cfg = guidance.classifier_free(cond, y, w)(x, t)
        return cfg, guidance.classifier_guidance(TARGET.score_fn(sde), classifier, y, 1.0 + w)(x, t)

    for w in (0.0, 1.0, 3.0):
        np.testing.assert_allclose(*both(w), rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(guidance.classifier_free(cond, y, 0.0)(x, t), cond(x, t, y), atol=1e-12)
    np.testing.assert_allclose(guidance.condition(cond, y)(x, t), cond(x, t, y), atol=1e-12)


@pytest.mark.parametrize(
    "sde_name,sampler,options",
    [("vp", "euler_maruyama", {"num_steps": 500}), ("ve", "pc", {"num_steps": 500}), ("vp", "dpm_solver++", {"num_steps": 30})],
)
def test_classifier_free_w0_samples_conditional(sde_name, sampler, options):
    """Guided sampling at w = 0 matches p(x | y) (per class, within sample-size tolerance)."""
    sde = SDES[sde_name]
    cond = TARGET.score_fn(sde, conditional=True)
    for y in (0, 1):
        score_fn = guidance.classifier_free(cond, jnp.full((N,), y), 0.0)
        x, _ = sample(jax.random.PRNGKey(y), sde, score_fn, (N, 2), sampler, **options)
        _check_matches(x, TARGET.class_conditional(y), f"{sampler} y={y}")


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_exact_classifier_guidance_samples_conditional(sde_name):
    """Unconditional score + grad log of the exact noisy classifier (scale 1) samples p(x | y)."""
    sde = SDES[sde_name]
    classifier = lambda x, t: TARGET.class_log_prob_t(x, t, sde)  # noqa: E731
    y = jnp.arange(N) % 2  # both classes in one batch: the labels act per example
    score_fn = guidance.classifier_guidance(TARGET.score_fn(sde), classifier, y, 1.0)
    x, _ = sample(jax.random.PRNGKey(3), sde, score_fn, (N, 2), "euler_maruyama", num_steps=500)
    for c in (0, 1):
        _check_matches(np.asarray(x)[np.asarray(y) == c], TARGET.class_conditional(c), f"classifier y={c}")


def test_guidance_weight_sharpens_the_class():
    """Larger w moves samples to where the classifier is surer of y: mean p(y | x) grows with w."""
    sde = SDES["vp"]
    cond = TARGET.score_fn(sde, conditional=True)
    y = jnp.zeros((N,), jnp.int32)
    confidence = []
    for w in (0.0, 1.0, 3.0):
        x, _ = sample(jax.random.PRNGKey(4), sde, guidance.classifier_free(cond, y, w), (N, 2), "dpm_solver++", num_steps=30)
        p = np.exp(np.asarray(TARGET.class_log_prob_t(x, jnp.full((N,), 1e-6), sde))[:, 0])
        confidence.append((p.mean(), p.var() / N))
    for (m0, v0), (m1, v1) in zip(confidence, confidence[1:]):
        assert m1 > m0 + 5 * np.sqrt(v0 + v1), f"mean p(y | x) for w = 0, 1, 3: {confidence}"


def test_conditional_loss_dropout():
    """p_uncond = 1 trains only the null condition; p_uncond = 0 only the labels."""
    sde = sde_lib.VPSDE()
    model = models.get_model("mlp", num_classes=2, hidden=32, num_layers=1)
    x = jax.random.normal(jax.random.PRNGKey(0), (64, 2))
    batch = {"image": x, "label": jnp.arange(64) % 2}
    key = jax.random.PRNGKey(1)
    from scoresde.train import init_params

    params = jax.jit(lambda k: init_params(model, sde, k, (2,)))(key)
    params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(key, p.shape), params)  # labels matter
    label = lambda b: b["label"]  # noqa: E731
    kw = dict(continuous=True, reduce_mean=True)
    uncond = jax.jit(losses.get_loss_fn(sde, model, train=False, **kw))(params, key, x)
    all_null = jax.jit(losses.get_loss_fn(sde, model, train=True, condition=label, p_uncond=1.0, **kw))
    none_null = jax.jit(losses.get_loss_fn(sde, model, train=True, condition=label, p_uncond=0.0, **kw))
    evaluated = jax.jit(losses.get_loss_fn(sde, model, train=False, condition=label, p_uncond=1.0, **kw))
    np.testing.assert_allclose(all_null(params, key, batch), uncond, rtol=1e-6)
    assert abs(float(none_null(params, key, batch)) - float(uncond)) > 1e-4
    np.testing.assert_allclose(evaluated(params, key, batch), none_null(params, key, batch), rtol=1e-6)
    with pytest.raises(ValueError, match="continuous"):
        losses.get_loss_fn(sde, model, train=True, continuous=False, condition=label)
    with pytest.raises(ValueError, match="p_uncond"):
        losses.get_loss_fn(sde, model, train=True, condition=label, p_uncond=1.5)


def test_trained_conditional_model_separates_classes(tmp_path):
    """A class-conditional MLP trained with condition dropout on two labelled clusters puts
    samples of class y on cluster y (w = 0), and its null condition covers both."""
    from scoresde import train

    target = analytic.GaussianMixture([1.0, 1.0], [[-2.0, 0.0], [2.0, 0.0]], [[0.1, 0.1], [0.1, 0.1]], labels=[0, 1])
    sde = sde_lib.VPSDE()

    def data():
        key = jax.random.PRNGKey(0)
        while True:
            key, sub = jax.random.split(key)
            x, comp = target.sample(sub, 256, return_labels=True)
            yield {"image": np.asarray(x), "label": np.asarray(comp, np.int32)}

    model = models.get_model("mlp", num_classes=2, hidden=64, num_layers=2)
    state = train.train(
        model, sde, data(), str(tmp_path), example_shape=(2,), optimizer=train.get_optimizer(lr=3e-3, warmup=50),
        schedule=train.Schedule(n_iters=400, log_freq=100, snapshot_freq=400, snapshot_freq_for_preemption=400),
        loss_kwargs=dict(condition=lambda b: b["label"], p_uncond=0.2, reduce_mean=True), ema_rate=0.99,
        progress=False, handle_signals=False, checkpoint_kwargs=dict(async_save=False),
    )
    score_fn = models.get_score_fn(sde, model, state.ema_params)
    n = 512
    for y in (0, 1):
        x, _ = sample(jax.random.PRNGKey(y), sde, guidance.condition(score_fn, jnp.full((n,), y)), (n, 2),
                      "dpm_solver++", num_steps=20)
        on_cluster = np.mean((np.asarray(x)[:, 0] > 0) == (y == 1))
        assert on_cluster > 0.95, f"class {y}: {on_cluster:.3f} of the samples on its cluster"
    x, _ = sample(jax.random.PRNGKey(2), sde, score_fn, (n, 2), "dpm_solver++", num_steps=20)
    right = np.mean(np.asarray(x)[:, 0] > 0)
    assert abs(right - 0.5) < 5 * 0.5 / np.sqrt(n) + 0.05, f"unconditional: {right:.3f} on the right cluster"
