"""The sampler registry: each entry's declared cost, its inverse, and option validation."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import pytest

from scoresde.samplers import imputation, registry

from conftest import SDES, target_score

SDE = SDES["vp"]
SCORE = target_score(2, "vp")
# Adaptive samplers: their cost is known only after the run (nfe(steps) is None).
ADAPTIVE = [n for n in registry.SAMPLERS if registry.get_sampler(n).nfe(1) is None]


def test_adaptive_samplers():
    assert ADAPTIVE == ["ode", "adaptive_sde"]


@pytest.mark.parametrize("name", [n for n in registry.SAMPLERS if n not in ADAPTIVE])
def test_declared_cost_is_the_returned_nfe(name):
    entry = registry.get_sampler(name)
    steps = 25  # PC's DDPM chain on VP needs N > beta_max
    _, nfe = registry.sample(jax.random.PRNGKey(0), SDE, SCORE, (4, 2), name, num_steps=steps)
    assert entry.nfe(steps) == nfe


@pytest.mark.parametrize("name", list(registry.SAMPLERS))
@pytest.mark.parametrize("budget", [1, 2, 3, 10, 17, 50, 1000])
def test_steps_for_nfe_is_the_most_steps_within_budget(name, budget):
    entry = registry.get_sampler(name)
    steps = entry.steps_for_nfe(budget)
    if name in ADAPTIVE:
        assert steps is None and entry.nfe(5) is None
        return
    assert steps >= 1
    if entry.nfe(1) <= budget:
        assert entry.nfe(steps) <= budget < entry.nfe(steps + 1)


def test_costs_follow_options():
    assert registry.get_sampler("pc").nfe(10, n_steps=3) == 40
    assert registry.get_sampler("ode_heun").nfe(10, denoise=True) == 21
    assert registry.get_sampler("ode").nfe(10, method="euler") == 10
    assert registry.get_sampler("dpm_solver++").nfe(10, order=3, method="singlestep") == 30
    assert registry.get_sampler("edm_stochastic").steps_for_nfe(20) == 10


@pytest.mark.parametrize(
    "name, options, message",
    [
        ("pc", {"snr": -1.0}, "snr must be a finite number >= 0"),
        ("pc", {"snr": math.nan}, "snr must be a finite number >= 0"),
        ("pc", {"n_steps": 1.5}, "n_steps must be an integer >= 0"),
        ("ddim", {"num_steps": 0}, "num_steps must be an integer >= 1"),
        ("ddim", {"num_steps": True}, "num_steps must be an integer >= 1"),
        ("ode", {"rtol": 0.0}, "rtol must be a finite number > 0"),
        ("ode", {"atol": -1e-3}, "atol must be a finite number > 0"),
        ("ode", {"max_steps": 0}, "max_steps must be an integer >= 1"),
        ("edm_heun", {"S_noise": math.inf}, "S_noise must be a finite number >= 0"),
        ("edm_heun", {"rho": 0}, "rho must be a finite number > 0"),
        ("dpm_solver++", {"order": 4}, "order must be 1, 2 or 3"),
        ("dpm_solver++", {"eps": -1e-3}, "eps must be a finite number > 0"),
        ("ddim", {"snr": 0.1}, "has no option"),
        ("nope", {}, "Unknown sampler"),
    ],
)
def test_bad_options_raise_one_line_before_any_work(name, options, message):
    with pytest.raises(ValueError, match=message) as err:
        registry.sample(jax.random.PRNGKey(0), SDE, SCORE, (4, 2), name, **options)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match=message):  # imputation goes through the same check
        imputation.inpaint(jax.random.PRNGKey(0), SDE, SCORE, jnp.zeros((4, 2)), jnp.ones((4, 2)), name, **options)
