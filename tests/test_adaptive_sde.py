"""The adaptive reverse-SDE solver ("Gotta Go Fast", scoresde.samplers.adaptive_sde).

1. Samples at the default tolerance are indistinguishable from the exact 2-D mixture
   (test_samplers' sample-size-derived checks), under VP and VE, and the returned nfe is
   the counted number of score evaluations.
2. The error control works: on a Gaussian target, whose law at eps is exact, a tighter
   tolerance takes more evaluations and lands closer to it, from far (a loose tolerance)
   to within sampling noise. Ignoring the error estimate would take as many steps at
   both tolerances, and fail.
3. Rejection sampling with memory keeps the path Brownian when steps are rejected by the
   value of their own increment (the paper's redraw does not: the control).
4. Errors are one line (max_steps, non-finite scores, options); new tolerances reuse the
   compiled solver; imputation keeps the known part. (Zero recompiles for new network
   parameters: test_score_model, over the registry.)
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scoresde.samplers import SDESolveError, adaptive_sde, imputation, registry

from conftest import SDES, CountingScore, assign_modes, check_gaussian, count_compiles, target, target_score
from test_samplers import check_modes, check_samples, exact_sample, score, seed_of, sliced_w2, sw_threshold

# 2000 samples (test_samplers uses 4000 in 2-D): this file's budget is 15 s, and at -O0
# every attempted step costs ~10 ms for 4000 samples; the smallest mode still has ~220.
N_2D = {"vp": 2000, "ve": 2000}


# ---------------------------------------------------------------------------------------
# 1. Samples at the default tolerance (rtol 0.01, atol 0.0078).


@functools.lru_cache(maxsize=None)
def run(sde_name, **options):
    """The solver on the exact 2-D mixture (one compilation per SDE: tolerances are traced),
    checking the returned nfe against the counted evaluations."""
    sf = score(2, sde_name)
    sf.reset()
    key = jax.random.key(seed_of("adaptive_sde", sde_name))
    x, nfe = registry.sample(key, SDES[sde_name], sf, (N_2D[sde_name], 2), "adaptive_sde", **options)
    assert x.shape == (N_2D[sde_name], 2)
    assert nfe == sf.total(), f"returned nfe {nfe}, counted {sf.count} score evaluations"
    assert nfe % 2 == 1  # two per attempted step, one to denoise
    return np.asarray(x), nfe


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_default_tolerance_matches_target(sde_name):
    check_samples(2, run(sde_name)[0])


# ---------------------------------------------------------------------------------------
# 2. Error control.


def _sliced_w2_to_target(x):
    """test_samplers' divergence: sliced W2^2 to exact samples with the same mode counts."""
    g = target(2)
    counts = np.bincount(assign_modes(g, x), minlength=g.num_components)
    return sliced_w2(x, exact_sample(g, counts, np.random.default_rng(777)))


def test_tighter_tolerance_takes_more_steps_and_lands_closer():
    """VP, 2-D mixture, 2000 samples. Measured: rtol = atol = 0.3 takes 57 evaluations and
    lands far (sliced W2^2 0.030, 5.5x the bound 0.0055 of exact samples of this size; mode
    means off by 37-198 against a chi^2 bound of 23); the default takes 533 and passes (0.0031)."""
    loose, loose_nfe = run("vp", rtol=0.3, atol=0.3)
    tight, tight_nfe = run("vp")
    bound = sw_threshold(2, N_2D["vp"])
    loose_sw, tight_sw = _sliced_w2_to_target(loose), _sliced_w2_to_target(tight)
    assert tight_nfe > 4 * loose_nfe, (loose_nfe, tight_nfe)
    assert tight_sw < bound < loose_sw, (tight_sw, bound, loose_sw)
    assert loose_sw > 5 * tight_sw, (loose_sw, tight_sw)
    with pytest.raises(AssertionError, match="mean statistic"):
        check_modes(target(2), loose)


# ---------------------------------------------------------------------------------------
# 3. Rejection sampling with memory.


@functools.partial(jax.jit, static_argnames=("n",))
def _rejected_paths(key, n):
    """W(1/2) and W(1) of n paths built by steps that are rejected by the value of their own
    increment, as an error test rejects them: accepted if |dW| sqrt(h) < 0.1 (~75% of
    first attempts at h = 0.3 fail); after a rejection h shrinks by U(0.2, 0.9), after an
    acceptance it is drawn afresh from U(0.05, 0.55); no step crosses 1/2. Two sets of
    paths with the same steps' rules: increments from `draw_increment` (with memory), and
    drawn afresh as N(0, h) for every attempt (the paper's redraw). `(2, n, 2)`."""

    def paths(memory):
        def body(carry):
            i, stack, t, w, w_half, h = carry
            active = t < 1.0
            h = jnp.where(active, jnp.minimum(h, jnp.where(t < 0.5, 0.5, 1.0) - t), 0.0)
            noise_key, h_key = jax.random.split(jax.random.fold_in(key, i))
            noise = jax.random.normal(noise_key, (n, 1))
            if memory:
                dw, advance = adaptive_sde.draw_increment(stack, h, noise)
            else:
                dw = jnp.sqrt(h)[:, None] * noise
            accept = active & (jnp.abs(dw[:, 0]) * jnp.sqrt(h) < 0.1)
            if memory:
                stack = advance(accept)
            t_new = jnp.where(accept, t + h, t)
            t_new = jnp.where(jnp.abs(t_new - 0.5) < 1e-6, 0.5, jnp.where(t_new > 1.0 - 1e-6, 1.0, t_new))
            w = jnp.where(accept[:, None], w + dw, w)
            w_half = jnp.where(((t < 0.5) & (t_new >= 0.5))[:, None], w, w_half)
            u = jax.random.uniform(h_key, (n,))
            h = jnp.where(accept, 0.05 + 0.5 * u, h * (0.2 + 0.7 * u))
            return i + 1, stack, t_new, w, w_half, h

        zeros = jnp.zeros((n, 1))
        init = (0, adaptive_sde.empty_increments(n, (1,), jnp.float32), jnp.zeros(n), zeros, zeros, jnp.full(n, 0.3))
        _, _, t, w, w_half, _ = jax.lax.while_loop(lambda c: jnp.any(c[2] < 1.0) & (c[0] < 1000), body, init)
        return jnp.where((t == 1.0)[:, None], jnp.concatenate([w_half, w], axis=1), jnp.nan)

    return jnp.stack([paths(True), paths(False)])


def test_rejection_with_memory_keeps_the_path_brownian():
    """(W(1/2), W(1)) ~ N(0, [[1/2, 1/2], [1/2, 1]]) within 5 SE over 5000 paths, although
    rejections select the increments. The control: redrawing rejected increments instead
    shrinks the variances (measured Var W(1) = 0.21)."""
    memory, redraw = np.asarray(_rejected_paths(jax.random.key(5), 5000), np.float64)
    cov = np.array([[0.5, 0.5], [0.5, 1.0]])
    check_gaussian(memory, np.zeros(2), cov)  # also: every path reached t = 1 (no NaN)
    assert np.var(redraw[:, 1]) < 0.5, np.var(redraw[:, 1])


# ---------------------------------------------------------------------------------------
# 4. Errors, compilation, registry, imputation.

# These runs reuse the VE solver compiled for test 1 (same score, shape and SDE; every
# option below is traced), so they compile nothing; with eps near T they take a few steps.
VE_SHAPE = (N_2D["ve"], 2)


def _ve(**options):
    return registry.sample(jax.random.key(0), SDES["ve"], score(2, "ve"), VE_SHAPE, "adaptive_sde", **options)


def test_step_limit_is_a_one_line_error():
    with pytest.raises(SDESolveError, match="max_steps=3") as info:
        _ve(max_steps=3)
    assert "\n" not in str(info.value) and "(6 evaluations)" in str(info.value)


def test_non_finite_values_are_a_one_line_error():
    """Non-finite latents stand for a score gone non-finite."""
    with pytest.raises(SDESolveError, match="non-finite") as info:
        _ve(z=jnp.full(VE_SHAPE, jnp.nan, jnp.float32))
    assert "\n" not in str(info.value) and "after 1 attempted step" in str(info.value)


@pytest.mark.parametrize(
    "options,message",
    [
        ({"safety": 1.5}, "safety must be a number in \\(0, 1\\]"),
        ({"rtol": 0.0}, "rtol must be a finite number > 0"),
        ({"h_init": -1.0}, "h_init must be a finite number > 0"),
        ({"brownian": "bridge"}, "brownian must be 'memory' or 'redraw'"),
        ({"num_steps": 10}, "has no option.*num_steps"),
    ],
)
def test_options_are_checked(options, message):
    with pytest.raises(ValueError, match=message):
        _ve(**options)


def test_registry_entry():
    entry = registry.get_sampler("adaptive_sde")
    assert entry.nfe(1) is None and registry.num_steps_for_nfe("adaptive_sde", 100) is None
    opts = registry.sampler_options("adaptive_sde")
    paper = {"rtol": 0.01, "atol": 0.0078, "h_init": 0.01, "safety": 0.9, "exponent": 0.9}
    assert {k: opts[k] for k in paper} == paper
    assert opts["brownian"] == "memory" and opts["denoise"] is True


def test_new_tolerances_do_not_recompile():
    _ve(eps=0.8, rtol=0.2)
    with count_compiles() as compiles:
        a, nfe_a = _ve(eps=0.9, rtol=0.1, atol=0.05, h_init=0.02, safety=0.8, exponent=0.5, max_steps=999)
        b, nfe_b = _ve(eps=0.9, rtol=0.1, atol=0.05, h_init=0.02, safety=0.8, exponent=0.5, max_steps=999)
    assert compiles["backend"] == 0
    np.testing.assert_array_equal(a, b)  # the same key, the same samples
    assert nfe_a == nfe_b


def test_inpainting_keeps_the_known_part_and_counts_nfe():
    sf = CountingScore(target_score(2, "ve"))
    data, mask = jnp.tile(jnp.asarray([[0.0, 1.5]]), (64, 1)), jnp.asarray([[0.0, 1.0]])
    x, nfe = imputation.inpaint(jax.random.key(14), SDES["ve"], sf, data, mask, "adaptive_sde", rtol=0.05)
    assert np.all(np.isfinite(x)) and nfe == sf.total() > 0
    np.testing.assert_array_equal(x[:, 1], 1.5)
