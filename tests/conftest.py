"""Shared fixtures and helpers.

Fixtures are found by pytest; the helpers are imported by the test files with
`from conftest import name` (pytest puts this directory on sys.path).
"""

import contextlib
import functools
import os
import shutil

# The suite is compile-bound: XLA's CPU backend at LLVM -O0 compiles about twice as fast, and
# float semantics are the same (no fast math either way). Set before any backend starts, so
# subprocesses (the CLI tests) inherit it; the library's own runs keep XLA's default.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()
# Many tests (and the CLI's subprocesses) compile the same programs: JAX's persistent cache,
# shared by the workers, compiles each once per run. A fresh folder per run (named by the
# main pytest process, the workers' parent; under the checkout, ignored by git), so that a
# test never depends on what an earlier run cached.
_CACHE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".pytest-jax-cache",
                      str(os.getppid() if os.environ.get("PYTEST_XDIST_WORKER") else os.getpid()))
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _CACHE)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scoresde import analytic, sde_lib

# The slowest tests (each 5-95 s of CPU on the 2-core CI machine), left out of the default
# run so that `pytest` stays under 10 minutes there; `pytest -m slow` runs them, `pytest -m ""`
# everything. Each is an end-to-end or statistical check whose parts the default run also
# tests more cheaply.
SLOW = (
    "tests/test_cli.py::test_train_resume_sample_ablate",
    "tests/test_cli_conditional.py::test_class_conditional_sample_and_guidance",
    "tests/test_cli_conditional.py::test_colorize_writes_before_after_grid",
    "tests/test_cli_conditional.py::test_classifier_guidance",
    "tests/test_conditional_models.py::test_classifier_overfits_random_labels",
    "tests/test_likelihood.py::test_hutchinson_is_unbiased_with_one_over_sqrt_k_spread",
    "tests/test_imputation.py::test_tmpd_6d_exact_conditional[vp-pc]",
    "tests/test_samplers.py::test_pc_sampler_matches_target[16-vp-reverse_diffusion-langevin]",
    "tests/test_samplers.py::test_pc_sampler_matches_target[16-cosine-reverse_diffusion-langevin]",
    "tests/test_samplers.py::test_pc_sampler_matches_target[16-subvp-reverse_diffusion-ald]",
    "tests/test_samplers.py::test_pc_sampler_matches_target[16-ve-euler_maruyama-langevin]",
    "tests/test_samplers.py::test_corrector_only_matches_target_at_recommended_settings[vp-langevin",
    "tests/test_score_model.py::test_memory_stays_flat_over_ten_parameter_sets",
    "tests/test_score_model.py::test_no_parameter_is_compiled_in_as_a_constant",
    "tests/test_train.py::test_eight_devices_match_one_device",
    "tests/test_train.py::test_signals_save_checkpoint_and_exit_cleanly",
    "tests/test_cli.py::test_interrupted_train_saves_and_resumes[SIGINT]",
    "tests/test_cli_conditional.py::test_ablate_guidance_sweep",
    "tests/test_guidance.py::test_trained_conditional_model_separates_classes",
    "tests/test_guidance.py::test_classifier_free_w0_samples_conditional[ve-pc-options1]",
    "tests/test_guidance.py::test_exact_classifier_guidance_samples_conditional[vp]",
    "tests/test_imputation.py::test_replacement_follows_its_own_law[ve-reverse_diffusion]",
    "tests/test_imputation.py::test_colorize_tmpd_matches_the_colour_conditional",
    "tests/test_imputation.py::test_tmpd_6d_exact_conditional[ve-euler_maruyama]",
    "tests/test_imputation.py::test_tmpd_2d_exact_conditional",
    "tests/test_conditional_models.py::test_cross_attention_ncsnpp",
    "tests/test_memory_options.py::test_accumulation_cuts_the_step_memory",
    "tests/test_super_resolution.py::test_cli_cascade",
    "tests/test_super_resolution.py::test_the_loss_draws_the_pairs_from_each_batch",
    "tests/test_adaptive_sde.py::test_default_tolerance_matches_target[ve]",
    "tests/test_inverse.py::test_blur_tmpd_and_noisy_replacement_run",
    "tests/test_cli_conditional.py::test_inpaint_writes_before_after_grid",
    "tests/test_latent.py::test_cli_autoencoder_then_latent_model",
    "tests/test_text_condition.py::test_cli_text_conditioned_digits_are_recognised",
    "tests/test_imputation.py::test_replacement_follows_its_own_law[vp-euler_maruyama]",
    "tests/test_imputation.py::test_replacement_is_biased[ve-reverse_diffusion]",
    "tests/test_guidance.py::test_classifier_free_w0_samples_conditional[vp-euler_maruyama-options0]",
    "tests/test_samplers.py::test_pc_sampler_matches_target[2-cosine-reverse_diffusion-langevin]",
    "tests/test_samplers.py::test_pc_sampler_matches_target[2-subvp-reverse_diffusion-langevin]",
    "tests/test_samplers.py::test_pc_sampler_matches_target[2-ve-ancestral_sampling-ald]",
    "tests/test_samplers.py::test_fixed_step_orders_of_convergence",
    "tests/test_cli_conditional.py::test_ablate_guidance_sweep_compiles_the_sampler_once",
    "tests/test_cli_conditional.py::test_upsample_writes_before_after_grid",
    "tests/test_score_model.py::test_samples_and_likelihoods_are_bit_for_bit_the_reference_formula[ode]",
    "tests/test_memory_options.py::test_accumulation_is_the_plain_step",
    "tests/test_cli.py::test_evaluate_cache_is_keyed_by_its_settings",
    "tests/test_imputation.py::test_replacement_is_biased[vp-euler_maruyama]",
    "tests/test_samplers.py::test_pc_sampler_matches_target[2-vp-euler_maruyama-ald]",
    "tests/test_samplers.py::test_pc_sampler_matches_target[2-ve-reverse_diffusion-langevin]",
    "tests/test_fast_samplers.py::test_order_of_convergence[vp-ode_euler]",
    "tests/test_fast_samplers.py::test_order_of_convergence[subvp-dpm_solver_3s]",
    "tests/test_fast_samplers.py::test_order_of_convergence[ve-ddim]",
    "tests/test_unipc.py::test_order_of_convergence[unipc1]",
    "tests/test_train.py::test_registered_mlp_learns_toy_data[ve-continuous]",
    "tests/test_likelihood.py::test_exact_divergence_logp_matches_analytic_density[2-",
    "tests/test_likelihood.py::test_exact_divergence_logp_matches_analytic_density[8-vp]",
    "tests/test_latent.py::test_short_training_reduces_reconstruction_error",
)


def pytest_collection_modifyitems(config, items):
    for item in items:  # an entry names a test, all its parameters, or (with "[") a prefix of them
        name = item.nodeid.split("[")[0]
        if name in SLOW or any("[" in entry and item.nodeid.startswith(entry) for entry in SLOW):
            item.add_marker(pytest.mark.slow)


def pytest_sessionfinish(session):
    if not os.environ.get("PYTEST_XDIST_WORKER"):  # the main process: the run's cache goes
        shutil.rmtree(_CACHE, ignore_errors=True)


_EVENTS = {"/jax/core/compile/backend_compile_duration": "backend", "/jax/core/compile/jaxpr_trace_duration": "trace"}


@pytest.fixture
def x64():
    """Run the test with 64-bit floats (jax_enable_x64), restoring the previous setting after."""
    with jax.enable_x64(True):
        yield


@contextlib.contextmanager
def count_compiles():
    """Count XLA compilations ("backend") and jaxpr traces ("trace") inside the block."""
    counts = {"backend": 0, "trace": 0}

    def listener(event, duration_secs, **kwargs):
        if event in _EVENTS:
            counts[_EVENTS[event]] += 1

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        with no_compilation_cache():  # a cache hit would not count
            yield counts
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


@contextlib.contextmanager
def no_compilation_cache():
    """Compile for real inside the block (the persistent cache off)."""
    cached = jax.config.jax_enable_compilation_cache
    jax.config.update("jax_enable_compilation_cache", False)
    try:
        yield
    finally:
        jax.config.update("jax_enable_compilation_cache", cached)


# ---------------------------------------------------------------------------------------
# The command line (tests/test_cli*.py).


def run(*argv):
    """`scoresde ARGV...`, in this process."""
    from scoresde import cli

    cli.main(list(argv))


def error_of(*argv) -> str:
    """The message of `scoresde ARGV...`'s user error, checked to be a one-line `scoresde: error:`."""
    from scoresde import cli

    with pytest.raises(SystemExit) as info:
        cli.main(list(argv))
    message = str(info.value.code)
    # A one-line cause (and its fix), never a traceback; a fix may add indented command lines.
    assert message.startswith("scoresde: error:") and "Traceback" not in message, message
    return message


# ---------------------------------------------------------------------------------------
# Exact targets and their scores. One score function per (target, SDE): the samplers and
# solvers take a plain function as a static score model, so a fresh closure per call
# would recompile every time.

def _decay(t):
    return jnp.exp(-t)


def _identity(t):
    return t


# A user-defined path, neither VP nor VE: alpha = e^-t, sigma = t on [0, 5] (alpha(T) = 0.0067),
# so f = -1 and g^2 = 2t (1 + t). One instance: a LinearPath compares by its functions.
LINEAR_PATH = sde_lib.LinearPath(_decay, _identity, T=5.0)

# The SDEs and paths at their default parameters, by short name (only looked up by name:
# adding one here adds no test by itself).
SDES = {
    "vp": sde_lib.VPSDE(),
    "subvp": sde_lib.subVPSDE(),
    "ve": sde_lib.VESDE(),
    "cosine": sde_lib.CosineVPSDE(),
    "rf": sde_lib.RectifiedFlow(),
    "edm": sde_lib.EDMPath(),
    "linear": LINEAR_PATH,
}


@functools.cache
def target(dim: int) -> analytic.GaussianMixture:
    """`analytic.separated_mixture(dim)`: three well-separated modes of weights 1/9, 3/9, 5/9
    with full covariances, eigenvalues in [0.1, 0.5]."""
    return analytic.separated_mixture(dim)


@functools.cache
def target_score(dim: int, sde_name: str):
    """The exact score of `target(dim)` under `SDES[sde_name]`, one function object per pair."""
    return target(dim).score_fn(SDES[sde_name])


def assign_modes(g, x):
    """Component labels by the exact posterior argmax of the data mixture (at t = 0 the VP
    marginal is the data itself: s = 1, sigma = 0)."""
    x = jnp.asarray(x, jnp.float32)
    post = g.posterior_t(x, jnp.zeros(x.shape[0], x.dtype), SDES["vp"])
    return np.asarray(jnp.argmax(post, axis=1))


class CountingScore:
    """The exact score, counting its evaluations on device: a jax.debug.callback (test-only)
    increments `count` once per executed evaluation, inside compiled loops (scan, while,
    taken cond branches) too."""

    def __init__(self, fn):
        self.fn, self.count = fn, 0

    def _increment(self):
        self.count += 1

    def __call__(self, x, t):
        jax.debug.callback(self._increment)
        return self.fn(x, t)

    def reset(self):
        jax.effects_barrier()
        self.count = 0

    def total(self):
        jax.effects_barrier()
        return self.count


class TracingScore:
    """A score_fn that counts how often it is traced (its Python body runs only while tracing)."""

    def __init__(self, fn):
        self.fn, self.traces = fn, 0

    def __call__(self, x, t):
        self.traces += 1
        return self.fn(x, t)


# ---------------------------------------------------------------------------------------
# Statistical checks.

K_SE = 5.0  # tolerance of every statistical comparison, in standard errors (false alarm ~6e-7 each)


def check_gaussian(x, mean, cov):
    """Sample mean and covariance of x `(n, d)` within K_SE standard errors of (mean, cov):

      mean_i:  |m_i - mean_i| < K_SE sqrt(S_ii / n)
      cov_ij:  |C_ij - S_ij| < K_SE sqrt((S_ii S_jj + S_ij^2) / (n - 1))  (Gaussian data)

    returns the largest |error| / SE of each."""
    n = len(x)
    assert np.all(np.isfinite(x)), "non-finite samples"
    z_mean = np.abs(x.mean(0) - mean) / np.sqrt(np.diag(cov) / n)
    d = np.diag(cov)
    se_cov = np.sqrt((np.outer(d, d) + cov**2) / (n - 1))
    z_cov = np.abs(np.cov(x.T, ddof=1).reshape(cov.shape) - cov) / se_cov
    assert z_mean.max() < K_SE, f"mean off by {z_mean.max():.1f} SE: {x.mean(0)} vs {mean}"
    assert z_cov.max() < K_SE, f"covariance off by {z_cov.max():.1f} SE: {np.cov(x.T)} vs {cov}"
    return z_mean.max(), z_cov.max()


# ---------------------------------------------------------------------------------------
# Networks: inputs and random parameters made in numpy (jitting `model.init` costs far
# more than a forward pass of a tiny network).


def images(shape=(2, 8, 8, 3), seed=0):
    """Uniform [0, 1) float32 images."""
    return jnp.asarray(np.random.default_rng(seed).uniform(size=shape), jnp.float32)


def random_params(shapes, seed=0, vector_std=0.0, fourier_std=16.0):
    """Random parameters with the structure (and dtypes) of `shapes`: kernels and embeddings
    ~ N(0, 1/fan_in), GroupNorm scales 1, the Fourier projection's W ~ N(0, fourier_std^2),
    and every other vector (biases) ~ N(0, vector_std^2), zero for vector_std = 0."""
    rng = np.random.default_rng(seed)

    def make(path, leaf):
        name = path[-1].key
        if leaf.ndim >= 2:
            return jnp.asarray(rng.normal(size=leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1])), leaf.dtype)
        if name == "scale":
            return jnp.ones(leaf.shape, leaf.dtype)
        std = fourier_std if name == "W" else vector_std
        if std == 0:
            return jnp.zeros(leaf.shape, leaf.dtype)
        return jnp.asarray(std * rng.normal(size=leaf.shape), leaf.dtype)

    return jax.tree_util.tree_map_with_path(make, shapes)


# ---------------------------------------------------------------------------------------
# Latent diffusion (tests/test_latent.py, tests/test_configs.py).

# Tiny autoencoders: digits 8x8x1 -> 4x4x2, photos 32x32x3 -> 8x8x4.
TINY_AE = {"digits_ae": ["model.nf=8", "model.ch_mult=(1, 2)", "model.num_res_blocks=0", "model.latent_channels=2"],
           "photos_ae": ["model.nf=8", "model.ch_mult=(1, 2, 2)", "model.num_res_blocks=0"]}


def make_autoencoder(path, name="digits_ae", seed=0, step=1):
    """An autoencoder workdir (config `name` with `TINY_AE`) holding one checkpoint at `step`
    of freshly initialized parameters (`seed`): no training needed to test what reads it.
    Returns (model, params)."""
    from scoresde import checkpoints, experiment, train
    from scoresde.workdir import save_config

    config = experiment.get_config(name, TINY_AE[name] + [f"seed={seed}"])
    model = experiment.model_from_config(config)
    state = train.init_train_state(model, None, jax.random.PRNGKey(seed), experiment.data_shape(config),
                                   experiment.train_kwargs(config)["optimizer"])
    save_config(str(path), config)
    with checkpoints.CheckpointManager(str(path), async_save=False) as manager:
        manager.save(step, state)
    return model, state.ema_params
