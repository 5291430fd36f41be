"""Score models are traced: a new parameter set, label or guidance weight reuses the
compiled sampler, no parameter is compiled in as a constant, and memory stays flat.

Each check has a control that shows it can fail: the same call with the parameters
closed over by a plain function (today's way for users' own closures) does recompile,
does embed the weights, and does grow the process.
"""

from __future__ import annotations

import functools
import gc
import glob
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scoresde import likelihood, models, samplers, sde_lib
from scoresde.samplers import guidance, imputation
from scoresde.score import NetworkScore, ScoreFunction, as_score_model, output_to_score

from conftest import count_compiles, no_compilation_cache, random_params

SDE = sde_lib.VPSDE()
DIM = 16
STEPS = {"pc": 25, "euler_maruyama": 3, "reverse_diffusion": 25, "ancestral": 25, "ode_heun": 3, "edm_heun": 3,
         "edm_stochastic": 3, "dpm_solver++": 3, "dpm_solver++_3m": 3, "dpm_solver": 1, "ddim": 3,
         "unipc": 3}


def mlp(hidden=32, num_classes=0):
    return models.get_model("mlp", hidden=hidden, num_layers=2, num_classes=num_classes, init_scale=1.0)


def params_for(net, seed, dim=DIM):
    return random_params(models.param_shapes(net, (2, dim)), seed=seed, vector_std=0.05)


# Adaptive samplers take tolerances instead of steps (adaptive_sde its defaults: ~380 NFE).
TOLERANCES = {"ode": {"rtol": 1e-2, "atol": 1e-2}, "adaptive_sde": {}}


def run_sampler(name, score, batch=4):
    opts = TOLERANCES[name] if name in TOLERANCES else {"num_steps": STEPS[name]}
    return samplers.sample(jax.random.PRNGKey(0), SDE, score, (batch, DIM), name, **opts)[0]


# ---------------------------------------------------------------------------------------
# One compile per sampler, whatever the parameters.


@pytest.mark.parametrize("name", list(samplers.SAMPLERS))
def test_new_parameters_do_not_recompile_a_sampler(name):
    net = mlp()
    jax.block_until_ready(run_sampler(name, models.get_score_fn(SDE, net, params_for(net, 0))))
    with count_compiles() as compiles:
        for seed in (1, 2):
            x = run_sampler(name, models.get_score_fn(SDE, net, params_for(net, seed)))
    assert compiles["backend"] == 0, f"{name} compiled {compiles['backend']} programs for new parameters"
    assert np.all(np.isfinite(np.asarray(x)))


def test_the_compile_counter_sees_closures_recompile():
    """Control: parameters closed over by a plain function are constants, one program per set."""
    net = mlp()
    run_sampler("ddim", lambda x, t, p=params_for(net, 0): NetworkScore(p, net, SDE)(x, t))
    with count_compiles() as compiles:
        for seed in (1, 2):
            run_sampler("ddim", lambda x, t, p=params_for(net, seed): NetworkScore(p, net, SDE)(x, t))
    assert compiles["backend"] >= 2


def test_likelihood_encode_guidance_and_imputation_do_not_recompile():
    net = mlp(num_classes=3)
    key, x = jax.random.PRNGKey(0), jax.random.normal(jax.random.PRNGKey(1), (4, DIM))
    y = jnp.array([0, 1, 2, 0])
    mask = jnp.zeros((4, DIM)).at[:, : DIM // 2].set(1.0)

    def everything(seed, w, labels):
        score = models.get_score_fn(SDE, net, params_for(net, seed))
        guided = guidance.classifier_free(score, labels, w)
        out = [
            likelihood.log_likelihood(key, SDE, score, x, rtol=1e-2, atol=1e-2)[0],
            samplers.ode_encode(SDE, score, x, rtol=1e-2, atol=1e-2)[0],
            samplers.sample(key, SDE, guided, x.shape, "dpm_solver++", num_steps=3)[0],
            samplers.sample(key, SDE, guidance.condition(score, labels), x.shape, "ddim", num_steps=3)[0],
            imputation.inpaint(key, SDE, guided, x, mask, "dpm_solver++", num_steps=3)[0],
        ]
        return jax.block_until_ready(out)

    everything(0, 0.0, y)
    other_y = y[::-1]
    with count_compiles() as compiles:
        for seed, w in ((1, 1.0), (2, 3.0)):  # new parameters, guidance weight and labels
            everything(seed, w, other_y)
    assert compiles["backend"] == 0


def test_classifier_guidance_does_not_recompile_for_a_new_classifier():
    net, clf = mlp(), models.get_model("mlp", hidden=8, num_layers=1)  # an MLP as a 16-class classifier
    y = jnp.array([0, 3, 5, 7])

    def run(seed, scale):
        log_prob = models.get_classifier_log_prob_fn(SDE, clf, params_for(clf, seed + 10))
        guided = guidance.classifier_guidance(models.get_score_fn(SDE, net, params_for(net, seed)), log_prob, y, scale)
        return jax.block_until_ready(run_sampler("euler_maruyama", guided))

    run(0, 1.0)
    with count_compiles() as compiles:
        run(1, 2.0)
    assert compiles["backend"] == 0


# ---------------------------------------------------------------------------------------
# No parameter compiled in as a constant.

_TENSOR = re.compile(r"stablehlo\.constant dense<[^\n]*?> : tensor<([0-9x]*)(f64|f32|bf16|f16|i64|i32|i8|i1|ui32)>")
_BYTES = {"f64": 8, "i64": 8, "f32": 4, "i32": 4, "ui32": 4, "bf16": 2, "f16": 2, "i8": 1, "i1": 1}


def largest_constant(dump_dir) -> int:
    """Bytes of the largest `stablehlo.constant` in the modules JAX lowered into dump_dir."""
    largest = 0
    for path in glob.glob(os.path.join(dump_dir, "*.mlir")):
        with open(path) as f:
            for dims, dtype in _TENSOR.findall(f.read()):
                size = int(np.prod([int(d) for d in dims.split("x") if d], dtype=np.int64))
                largest = max(largest, size * _BYTES[dtype])
    return largest


@pytest.fixture
def dump_dir(tmp_path):
    """Dump every module lowered in the test to tmp_path (the caches are cleared first)."""
    jax.clear_caches()
    previous = jax.config.values["jax_dump_ir_to"]
    jax.config.update("jax_dump_ir_to", str(tmp_path))
    yield str(tmp_path)
    jax.config.update("jax_dump_ir_to", previous)


WIDE = dict(hidden=512, num_layers=2)  # 2.4 MB of parameters, 1 MB per hidden kernel


def test_no_parameter_is_compiled_in_as_a_constant(dump_dir):
    net = models.get_model("mlp", **WIDE)
    params = params_for(net, 0)
    assert models.count_params(params) * 4 > 2e6
    score, key, x = models.get_score_fn(SDE, net, params), jax.random.PRNGKey(0), jnp.ones((4, DIM))
    for name in ("pc", "dpm_solver++"):
        run_sampler(name, score)
    likelihood.log_likelihood(key, SDE, score, x, rtol=1e-2, atol=1e-2)
    imputation.inpaint(key, SDE, score, x, jnp.ones_like(x).at[:, :4].set(0.0), "ddim", method="tmpd")
    assert glob.glob(os.path.join(dump_dir, "*.mlir"))
    assert largest_constant(dump_dir) < 2**20


def test_the_constant_scan_sees_closed_over_parameters(dump_dir):
    """Control: the same sampler with the parameters closed over embeds the 1 MB kernels."""
    net = models.get_model("mlp", **WIDE)
    score = models.get_score_fn(SDE, net, params_for(net, 0))
    run_sampler("ddim", lambda x, t: score(x, t))
    assert largest_constant(dump_dir) >= 2**20


# ---------------------------------------------------------------------------------------
# Memory stays flat over many parameter sets.


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc (Linux)")
def test_memory_stays_flat_over_ten_parameter_sets():
    with no_compilation_cache():  # the control's programs are compiled and held, not read back
        _memory_stays_flat()


def _memory_stays_flat():
    net = models.get_model("mlp", hidden=768, num_layers=2)  # 2.6 M parameters, 10 MB
    nbytes = models.count_params(params_for(net, 0)) * 4

    def sample(seed, closed_over):
        score = models.get_score_fn(SDE, net, params_for(net, seed))
        fn = (lambda x, t: score(x, t)) if closed_over else score
        jax.block_until_ready(run_sampler("ddim", fn))
        gc.collect()

    for seed in (0, 1):  # the program, and the allocator's second parameter buffer
        sample(seed, False)
    start = rss_bytes()
    for seed in range(2, 12):
        sample(seed, False)
    traced_growth = rss_bytes() - start
    assert traced_growth < nbytes, f"RSS grew {traced_growth / 2**20:.0f} MB over 10 parameter sets"
    start = rss_bytes()  # control: three closures, three programs with the weights inside
    for seed in range(12, 15):
        sample(seed, True)
    assert rss_bytes() - start > 2 * nbytes


# ---------------------------------------------------------------------------------------
# The same numbers as the formula of the reference, bit for bit.


def reference_score(net, sde, params, x, t):
    """The reference's score of an eps network (`get_score_fn` before score models): -F / std."""
    output = net.apply({"params": params}, x, t * 999, train=False)
    return -output / sde.marginal_coeffs(t)[1][:, None]


@pytest.mark.parametrize("name", ["pc", "ode", "dpm_solver++", "edm_stochastic"])
def test_samples_and_likelihoods_are_bit_for_bit_the_reference_formula(name):
    """Both traced: a `jax.tree_util.Partial` of the formula above is a callable pytree too."""
    net = mlp()
    params = params_for(net, 3)
    ours = models.get_score_fn(SDE, net, params)
    theirs = jax.tree_util.Partial(functools.partial(reference_score, net, SDE), params)
    assert as_score_model(theirs) is theirs  # a callable pytree is traced as it is
    np.testing.assert_array_equal(run_sampler(name, ours), run_sampler(name, theirs))
    if name == "ode":
        key, x = jax.random.PRNGKey(1), jax.random.normal(jax.random.PRNGKey(2), (4, DIM))
        a = likelihood.log_likelihood(key, SDE, ours, x, rtol=1e-3, atol=1e-3)
        b = likelihood.log_likelihood(key, SDE, theirs, x, rtol=1e-3, atol=1e-3)
        np.testing.assert_array_equal(a[0], b[0])
        assert a[2] == b[2]


def test_plain_functions_are_static_score_models():
    fn = lambda x, t: -x  # noqa: E731
    wrapped = as_score_model(fn)
    assert isinstance(wrapped, ScoreFunction) and jax.tree_util.tree_leaves(wrapped) == []
    assert as_score_model(wrapped) is wrapped
    with pytest.raises(TypeError, match="callable"):
        as_score_model(3.0)


@pytest.mark.parametrize("parameterization", ["score", "eps", "x0", "v"])
def test_preconditioning_turns_each_parameterization_into_the_exact_score(parameterization):
    """For x = s x0 + std eps with known x0 and eps, each parameterization's ideal output
    gives score = -eps / std (the score of the perturbation kernel at that point)."""
    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    x0, eps = jax.random.normal(k1, (8, 3)), jax.random.normal(k2, (8, 3))
    scale, std = jnp.linspace(0.2, 1.0, 8), jnp.linspace(0.9, 0.1, 8)
    x = scale[:, None] * x0 + std[:, None] * eps
    ideal = {"score": -eps / std[:, None], "eps": eps, "x0": x0, "v": scale[:, None] * eps - std[:, None] * x0}
    score = output_to_score(ideal[parameterization], x, scale, std, parameterization)
    np.testing.assert_allclose(score, -eps / std[:, None], rtol=1e-5, atol=1e-5)
