"""Learnt sampling grids (`samplers.timesteps`), against the exact score and the exact target."""

import csv
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scoresde import ablation, analytic, sde_lib
from scoresde.samplers import fast, registry
from scoresde.samplers.timesteps import grid_from_logits, logits_of_grid, optimize_timesteps

SDE = sde_lib.VPSDE()
TARGET = analytic.toy_target("8gaussians")
SCORE = TARGET.score_fn(SDE)
FIT = dict(num_steps=6, progress=False)


@pytest.fixture(scope="module")
def learnt():
    """A DPM-Solver++(2M) grid of 6 steps fitted on 256 calibration latents."""
    return optimize_timesteps(jax.random.key(7), SDE, SCORE, (256, 2), "dpm_solver++", **FIT)


def test_logits_round_trip():
    ts = fast.time_grid(SDE, 8, 1e-3, "karras")
    np.testing.assert_allclose(grid_from_logits(SDE, logits_of_grid(SDE, ts), 1e-3), ts, rtol=2e-5, atol=1e-6)


def test_learnt_grid_is_a_valid_grid(learnt):
    ts, info = learnt
    assert ts.shape == (7,) and ts[0] == SDE.T and np.isclose(ts[-1], 1e-3) and np.all(np.diff(ts) < 0)
    assert info["loss_after"] < info["loss_before"] and info["teacher_nfe"] > 6


def test_learnt_grid_is_closer_to_the_ode_on_new_latents(learnt):
    """On latents it was not fitted to, the learnt grid lands nearer the tight ODE solve
    (tsit5, 1e-5) than the logSNR grid it started from: by at least 3x in RMS distance."""
    z = SDE.prior_sampling(jax.random.key(11), (2048, 2))
    exact, _ = registry.sample(None, SDE, SCORE, (2048, 2), "ode", z=z)
    start, _ = registry.sample(None, SDE, SCORE, (2048, 2), "dpm_solver++", num_steps=6, z=z)
    fitted, _ = registry.sample(None, SDE, SCORE, (2048, 2), "dpm_solver++", num_steps=6, z=z, timesteps=learnt[0])
    rms = lambda x: float(jnp.sqrt(jnp.mean((x - exact) ** 2)))  # noqa: E731
    assert rms(fitted) < rms(start) / 3, (rms(fitted), rms(start))


def test_learnt_grid_samples_the_target(learnt):
    """At 6 NFE the learnt grid's samples are as close to the exact mixture as the exact
    ODE map's from the same latents, up to 4 sd of the distance between exact sample sets of
    the same size (fd_modes, per mode); the logSNR grid's are far outside that, so the check
    can fail."""
    quality = ablation.exact_target_quality(TARGET, jax.random.key(1))
    run = lambda **kw: registry.sample(jax.random.key(3), SDE, SCORE, (4096, 2), **kw)[0]  # noqa: E731
    start = quality(run(sampler="dpm_solver++", num_steps=6))["fd_modes"]
    fitted = quality(run(sampler="dpm_solver++", num_steps=6, timesteps=learnt[0]))
    exact = quality(run(sampler="ode"))["fd_modes"]
    tolerance = 4 * fitted["fd_modes_floor_sd"]
    assert fitted["fd_modes"] - exact <= tolerance < start - exact, (fitted, exact, start)


def test_unipc_and_karras_start():
    ts, info = optimize_timesteps(jax.random.key(7), SDE, SCORE, (128, 2), "unipc", spacing="karras", iterations=100,
                                  **FIT)
    assert np.all(np.diff(ts) < 0) and info["loss_after"] < info["loss_before"] / 2


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(sampler="edm_heun"), "no timesteps option.*dpm_solver"),
        (dict(sampler="dpm_solver++", iterations=0), "iterations must be an integer >= 1"),
        (dict(sampler="dpm_solver++", learning_rate=-1.0), "learning_rate"),
        (dict(sampler="dpm_solver++", learning_rate=float("nan")), "learning_rate"),
        (dict(sampler="dpm_solver++", iterations=True), "iterations must be an integer >= 1"),
        (dict(sampler="dpm_solver++", order=5), "order must be 1, 2 or 3"),
        (dict(sampler="dpm_solver++", spacing="linear"), "Unknown step spacing"),
        (dict(sampler="dpm_solver++", teacher="nope"), "Unknown sampler 'nope'"),
    ],
)
def test_optimize_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        optimize_timesteps(jax.random.key(0), SDE, SCORE, (8, 2), **{"num_steps": 4, "progress": False, **kwargs})


@pytest.mark.parametrize(
    "timesteps,options,match",
    [
        ([1.0, 0.5, 0.001], {"num_steps": 3}, "has 3 times but num_steps=3 needs 4"),
        ([1.0, 0.5, 0.6, 0.001], {"num_steps": 3}, "strictly decreasing"),
        ([1.0, 0.5, 0.1, 0.0], {"num_steps": 3}, "strictly decreasing"),
        ([1.0, float("nan"), 0.1, 0.001], {"num_steps": 3}, "strictly decreasing"),
        ("karras", {"num_steps": 3}, "strictly decreasing"),
        ([2.0, 0.5, 0.1, 0.001], {"num_steps": 3}, "at most T = 1"),
        ([1.0, 0.5, 0.1, 0.001], {"num_steps": 3, "eps": 0.01}, "end at 0.001.* but eps=0.01"),
    ],
)
def test_timesteps_option_errors(timesteps, options, match):
    with pytest.raises(ValueError, match=match):
        registry.sample(jax.random.key(0), SDE, SCORE, (8, 2), "dpm_solver++", timesteps=timesteps, **options)


@pytest.mark.parametrize("bad", [0, -4, 2.5, True])
def test_run_grid_rejects_bad_calibration_sizes(bad):
    with pytest.raises(ValueError, match="learn_timesteps must be None or an integer >= 1"):
        ablation.run_grid(jax.random.key(0), SDE, SCORE, (8, 2), [("ddim", {})], lambda x: {}, nfes=[4],
                          learn_timesteps=bad)


def test_direct_calls_check_the_grid():
    """The samplers' own check (without the registry's): decreasing, finite, within (0, T]."""
    for bad in ([1.0, 0.5, 0.6, 0.001], [1.0, float("inf"), 0.001], [[1.0, 0.5]], [1.0]):
        with pytest.raises(ValueError, match="strictly decreasing 1-D sequence"):
            fast.check_timesteps(SDE, bad)
    with pytest.raises(ValueError, match="at most T = 1"):
        fast.dpm_solver_sample(jax.random.key(0), SDE, SCORE, (8, 2), num_steps=2, timesteps=[1.5, 0.5, 0.001])
    fast.check_timesteps(SDE, [1.0, 0.5, 0.001], eps=0.001)


def test_given_timesteps_are_the_grid():
    """timesteps equal to a named spacing give that spacing's samples, for each grid sampler."""
    ts = np.asarray(fast.time_grid(SDE, 5, 1e-3, "karras")).tolist()
    for name in ("dpm_solver++", "dpm_solver++_3m", "ddim", "unipc"):
        a, _ = registry.sample(jax.random.key(0), SDE, SCORE, (64, 2), name, num_steps=5, spacing="karras")
        b, _ = registry.sample(jax.random.key(0), SDE, SCORE, (64, 2), name, num_steps=5, timesteps=ts)
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5, err_msg=name)


def test_cli_ablate_learns_timesteps(tmp_path):
    """`scoresde ablate --learn-timesteps`: a learnt row per grid sampler and budget, nearer the
    exact target than its start; the grid in the CSV is what `--option timesteps=` takes."""
    from conftest import error_of, run

    prefix = str(tmp_path / "abl")
    run("ablate", "--target", "8gaussians", "--samplers", "dpm_solver++,edm_heun", "--nfes", "6", "--num", "1024",
        "--learn-timesteps", "128", "--out", prefix)
    rows = {r["options"]: r for r in csv.DictReader(open(prefix + ".csv"))}
    plain, learnt = rows['{"num_steps": 6}'], rows['{"num_steps": 6, "timesteps": "learnt"}']
    assert learnt["sampler"] == "dpm_solver++" and len(rows) == 3, rows
    assert float(learnt["fd_modes"]) < float(plain["fd_modes"]) / 3, (learnt, plain)
    grid = json.loads(learnt["timesteps"])
    registry.check_options("dpm_solver++", {"num_steps": 6, "timesteps": grid})
    assert "--learn-timesteps" in error_of("ablate", "--target", "8gaussians", "--learn-timesteps", "0")
