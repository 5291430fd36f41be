"""Conditional super-resolution (SR3 / cascaded diffusion): the low-resolution condition
(`conditioning.LowResolution`, `low_res_input`), the NCSN++ network's concatenated input, pairs
made on the fly in the loss, `samplers.cascade` against exact Gaussian laws, the photos data
set, pixel metrics, the config checks and the command line end to end.

Exact laws (the 4x4x1 Gaussian image x ~ N(mu, S) of tests/test_inverse.py; A the 4 x 16 matrix
of 2x2 average pooling, built in numpy). The condition is y = A x + s n (s the noise
augmentation), so, written here independently of the library,

    p(x | y) = N(m(y), C),  K = S A^T (A S A^T + s^2 I)^-1,  m(y) = mu + K (y - A mu),  C = S - K A S,

and under the VP SDE p_t(x_t | y) = N(alpha m(y), alpha^2 C + sigma^2 I), whose score is the
"exact super-resolution model" `sr_score`. `cascade.upsample` given clean y0 = A x_true adds
s n itself, so its samples are x = m(y0) + s K n + C^1/2 w: residuals x - m(y0) ~
N(0, C + s^2 K K^T). A cascade whose base samples p(A x) exactly samples p(x) = N(mu, S)
(A x + s n has the law the model was conditioned on). Sample moments are compared with
conftest.check_gaussian (K_SE = 5 standard errors), n = 2000, Euler-Maruyama with 100 steps
(as tests/test_inverse.py: its discretization bias is well under a standard error here).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from PIL import Image

from scoresde import analytic, conditioning, data, experiment, losses, models
from scoresde.conditioning import LowResolution
from scoresde.evaluation import metrics
from scoresde.samplers import cascade

from conftest import SDES, check_gaussian, error_of, images, random_params, run
from test_inverse import D, N, STEPS, gaussian, pool_matrix

S_AUG = 0.3  # the noise augmentation of the exact tests


# ---------------------------------------------------------------------------------------
# The condition and the network's input


def test_low_res_input_is_x_and_the_nearest_upsampling():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(2, 6, 6, 3)).astype(np.float32), rng.normal(size=(2, 2, 2, 3)).astype(np.float32)
    out = np.asarray(conditioning.low_res_input(jnp.asarray(x), jnp.asarray(y), 3))
    up = np.stack([np.stack([np.kron(y[b, ..., c], np.ones((3, 3))) for c in range(3)], -1) for b in range(2)])
    np.testing.assert_array_equal(out, np.concatenate([x, up], -1))
    np.testing.assert_array_equal(np.asarray(conditioning.low_res_input(jnp.asarray(x), None, 3))[..., 3:], 0)


def _sr_net(**kw):
    return models.get_model("ddpmpp", nf=8, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(), dropout=0.0,
                            **{"sr_factor": 2, **kw})


def test_sr_network_takes_the_concatenation_and_checks_y():
    net = _sr_net()
    shapes = models.param_shapes(net, (1, 8, 8, 1))  # initialized with y=None: zeros in its place
    assert shapes["Conv_0"]["kernel"].shape == (3, 3, 2, 8)  # x and the upsampled y: 2 input channels
    params = random_params(shapes)
    x, labels, y = images((2, 8, 8, 1)), jnp.full((2,), 500.0), images((2, 4, 4, 1), seed=1)
    apply = jax.jit(lambda x, y: net.apply({"params": params}, x, labels, y, train=False))
    out = apply(x, y)
    assert out.shape == x.shape  # the output has x's channels, not the input's
    assert not np.allclose(out, apply(x, 1 - y))  # it depends on y

    def shape_of(net, x, y=None, params=params):
        return jax.eval_shape(lambda: net.apply({"params": params}, x, labels, y, train=False))

    with pytest.raises(ValueError, match=r"takes a low-resolution image y of shape \(2, 4, 4, 1\), got \(2, 8, 8, 1\)"):
        shape_of(net, x, x)
    with pytest.raises(ValueError, match="floating point"):
        shape_of(net, x, jnp.ones((2, 4, 4, 1), jnp.int32))
    with pytest.raises(ValueError, match="divisible"):
        shape_of(net, jnp.ones((2, 5, 5, 1)))
    with pytest.raises(ValueError, match="cannot also take class labels"):
        models.param_shapes(_sr_net(num_classes=10), (1, 8, 8, 1))
    with pytest.raises(ValueError, match="sr_factor must be an integer >= 0"):
        models.param_shapes(_sr_net(sr_factor=-1), (1, 8, 8, 1))
    plain = _sr_net(sr_factor=0)
    plain_shapes = models.param_shapes(plain, (1, 8, 8, 1))
    assert plain_shapes["Conv_0"]["kernel"].shape == (3, 3, 1, 8)
    with pytest.raises(ValueError, match="unconditional"):
        shape_of(plain, x, y, random_params(plain_shapes))


# ---------------------------------------------------------------------------------------
# Pairs made on the fly


def _block_means(x, f):
    n, h, w, c = x.shape
    return x.reshape(n, h // f, f, w // f, f, c).mean(axis=(2, 4))


def test_low_resolution_pairs_and_their_noise():
    x = np.random.default_rng(2).uniform(size=(256, 8, 8, 1)).astype(np.float32)
    np.testing.assert_allclose(LowResolution(2).observe(jax.random.key(0), x), _block_means(x, 2), atol=1e-6)
    r = np.asarray(LowResolution(4, S_AUG).observe(jax.random.key(1), x)) - _block_means(x, 4)
    n = r.size  # 1024 independent N(0, s^2) values: mean within 5 SE, std within 5 SE (sqrt(s^2 / 2n))
    assert abs(r.mean()) < 5 * S_AUG / np.sqrt(n) and abs(r.std() - S_AUG) < 5 * S_AUG / np.sqrt(2 * n)
    for bad in (dict(factor=0), dict(factor=2.0), dict(factor=2, noise_std=-0.1), dict(factor=2, noise_std=np.inf)):
        with pytest.raises(ValueError, match="must be"):
            LowResolution(**bad)


def test_the_loss_draws_the_pairs_from_each_batch():
    """`losses.get_loss_fn(low_res=...)`: y of each batch is its 2x2 block means plus N(0, s^2),
    independent of the times and noise drawn for x (fresh per key); the loss is finite."""
    net, sde = _sr_net(), SDES["vp"]
    batch = np.random.default_rng(3).uniform(-1, 1, size=(512, 8, 8, 1)).astype(np.float32)
    exact = losses.get_loss_fn(sde, net, train=True, reduce_mean=True, low_res=LowResolution(2))
    noisy = losses.get_loss_fn(sde, net, train=True, reduce_mean=True, low_res=LowResolution(2, S_AUG))
    np.testing.assert_allclose(exact.draw(jax.random.key(0), batch)[0]["y"], _block_means(batch, 2), atol=1e-6)
    draws = [noisy.draw(jax.random.key(k), batch)[0] for k in (0, 1)]
    r = np.asarray(draws[0]["y"]) - _block_means(batch, 2)
    n = r.size
    assert abs(r.mean()) < 5 * S_AUG / np.sqrt(n) and abs(r.std() - S_AUG) < 5 * S_AUG / np.sqrt(2 * n)
    assert abs(np.corrcoef(r.ravel(), (np.asarray(draws[1]["y"]) - _block_means(batch, 2)).ravel())[0, 1]) < 0.1
    params = random_params(models.param_shapes(net, (1, 8, 8, 1)))
    assert np.isfinite(float(jax.jit(noisy)(params, jax.random.key(0), batch[:16])))
    with pytest.raises(ValueError, match="pass condition=None"):
        losses.get_loss_fn(sde, net, train=True, condition=lambda b: b["label"], low_res=LowResolution(2))
    with pytest.raises(ValueError, match="no null condition"):
        losses.get_loss_fn(sde, net, train=True, p_uncond=0.1, low_res=LowResolution(2))
    with pytest.raises(ValueError, match="continuous"):
        losses.get_loss_fn(sde, net, train=True, continuous=False, low_res=LowResolution(2))


# ---------------------------------------------------------------------------------------
# Exact Gaussian laws through samplers.cascade


@functools.cache
def conditional(s):
    """(K, m0 = mu - K A mu, eigenvalues l and vectors V of C) of p(x | A x + s n), in numpy."""
    mu, S = gaussian()
    A = pool_matrix()
    K = S @ A.T @ np.linalg.inv(A @ S @ A.T + s**2 * np.eye(len(A)))
    l, V = np.linalg.eigh(S - K @ A @ S)
    return K, mu - K @ A @ mu, np.maximum(l, 0.0), V


@functools.cache
def sr_score(s):
    """The exact conditional score s(x, t, y) of p_t(x_t | y), x `(B, 4, 4, 1)`, y `(B, 2, 2, 1)`."""
    K, m0, l, V = conditional(s)
    sde = SDES["vp"]

    def score(x, t, y):
        alpha, sigma = sde.marginal_coeffs(t)
        m = m0 + y.reshape(len(y), -1) @ K.T
        r = (x.reshape(len(x), -1) - alpha[:, None] * m) @ V
        return (-(r / (alpha[:, None] ** 2 * l + sigma[:, None] ** 2)) @ V.T).reshape(x.shape)

    return score


@functools.cache
def base_score():
    """The exact score of the low-resolution images A x ~ N(A mu, A S A^T), `(B, 2, 2, 1)`."""
    mu, S = gaussian()
    A = pool_matrix()
    return analytic.GaussianMixture([1.0], [A @ mu], [A @ S @ A.T]).score_fn(SDES["vp"])


@functools.cache
def upsampled(s_model, s_sampling):
    """Samples of `cascade.upsample` (noise s_sampling) with the exact score of p(x | A x + s_model n),
    given y0 = A x_true, x_true ~ N(mu + 1, S) (off the prior mean, so that a wrong gain shows)."""
    mu, S = gaussian()
    A = pool_matrix()
    with jax.enable_x64(True):
        y0 = np.random.default_rng(4).multivariate_normal(mu + 1.0, S, N) @ A.T
        x, nfe = cascade.upsample(jax.random.key(5), SDES["vp"], sr_score(s_model), jnp.asarray(y0.reshape(N, 2, 2, 1)),
                                  LowResolution(2, s_sampling), "euler_maruyama", num_steps=STEPS)
        assert x.shape == (N, 4, 4, 1) and nfe == STEPS
        return np.asarray(x).reshape(N, D), y0


def test_upsample_samples_the_exact_conditional_with_its_noise_augmentation():
    """Residuals x - m(y0) ~ N(0, C + s^2 K K^T), compared in the basis W of the generalized
    eigenvectors of (s^2 K K^T, C) (W^T C W = I, W^T s^2 K K^T W = diag(lam)), where the
    augmentation's share of the covariance is largest: there the same check rejects samples
    drawn without the augmentation (variance 1 instead of 1 + lam_max = 1.8, about 14 SE)."""
    K, m0, l, V = conditional(S_AUG)
    lam, W = scipy.linalg.eigh(S_AUG**2 * K @ K.T, (V * l) @ V.T)
    x, y0 = upsampled(S_AUG, S_AUG)
    z = check_gaussian((x - (m0 + y0 @ K.T)) @ W, np.zeros(D), np.diag(1 + lam))
    print(f"upsample, s = {S_AUG}: mean {z[0]:.2f} SE, covariance {z[1]:.2f} SE (bound 5)")
    x, y0 = upsampled(S_AUG, 0.0)
    with pytest.raises(AssertionError, match="covariance off by"):
        check_gaussian((x - (m0 + y0 @ K.T)) @ W, np.zeros(D), np.diag(1 + lam))


def test_a_cascade_of_exact_models_samples_the_prior():
    mu, S = gaussian()
    A = pool_matrix()
    with jax.enable_x64(True):
        low, x, nfe = cascade.cascade(jax.random.key(6), SDES["vp"], base_score(), SDES["vp"], sr_score(S_AUG),
                                      (N, 2, 2, 1), LowResolution(2, S_AUG), base_sampler="euler_maruyama",
                                      base_options={"num_steps": STEPS}, sampler="euler_maruyama", num_steps=STEPS)
    assert low.shape == (N, 2, 2, 1) and x.shape == (N, 4, 4, 1) and nfe == 2 * STEPS
    check_gaussian(np.asarray(low).reshape(N, 4), A @ mu, A @ S @ A.T)
    z = check_gaussian(np.asarray(x).reshape(N, D), mu, S)
    print(f"cascade: mean {z[0]:.2f} SE, covariance {z[1]:.2f} SE (bound 5)")


def test_cascade_errors():
    with pytest.raises(ValueError, match="LowResolution"):
        cascade.upsample(jax.random.key(0), SDES["vp"], sr_score(S_AUG), jnp.zeros((2, 2, 2, 1)), 2)
    with pytest.raises(ValueError, match=r"float batch \(B, h, w, C\)"):
        cascade.upsample(jax.random.key(0), SDES["vp"], sr_score(S_AUG), jnp.zeros((2, 4)), LowResolution(2))
    with pytest.raises(ValueError, match="no option"):
        cascade.upsample(jax.random.key(0), SDES["vp"], sr_score(S_AUG), jnp.zeros((2, 2, 2, 1)), LowResolution(2),
                         "ddim", snr=0.1)


# ---------------------------------------------------------------------------------------
# Data and metrics


def test_photos_split_and_pooled_small_copies():
    train_x, train_y, test_x, test_y = data.photos_split()
    assert train_x.shape == (4268, 16, 16, 3) and test_x.shape == (270, 16, 16, 3)
    assert train_x.dtype == np.float32 and 0 <= train_x.min() and train_x.max() <= 1
    assert np.bincount(train_y).tolist() == [2134, 2134] and np.bincount(test_y).tolist() == [135, 135]
    # Disjoint regions: no test crop is a training crop (nor a flip of one).
    train_keys = {c.tobytes() for c in train_x} | {c[:, ::-1].tobytes() for c in train_x}
    assert not any(c.tobytes() in train_keys for c in test_x)
    # A smaller copy is the block means (the super-resolution models' low-resolution images).
    small = next(data.get_dataset("photos", "test", 270, image_size=8, shuffle=False))["image"]
    np.testing.assert_allclose(small, _block_means(test_x, 2), atol=1e-6)
    digits4 = next(data.get_dataset("digits", "test", 359, image_size=4, shuffle=False))["image"]
    digits8 = next(data.get_dataset("digits", "test", 359, shuffle=False))["image"]
    np.testing.assert_allclose(digits4, _block_means(digits8, 2), atol=1e-6)


def test_psnr_and_patch_frechet_distance():
    rng = np.random.default_rng(7)
    a = rng.uniform(size=(3, 4, 4, 2))
    b = a + 0.1 * np.array([1.0, 2.0, 0.5])[:, None, None, None]
    np.testing.assert_allclose(metrics.psnr(b, a), [20.0, 10 * np.log10(25), 10 * np.log10(400)])
    p = metrics.image_patches(a, 3)
    assert p.shape == (3 * 2 * 2, 18)
    np.testing.assert_array_equal(p[1], a[0, 0:3, 1:4, :].ravel())  # row-major windows, channels last
    x = rng.normal(size=(400, 8, 8, 1))
    assert abs(metrics.patch_frechet_distance(x, x)) < 1e-9
    # Patches of N(0, I) pixels: FD to N(0, 4 I) pixels is 16 (2 - 1)^2 (16-d patches), up to sampling.
    assert abs(metrics.patch_frechet_distance(x, 2 * rng.normal(size=(400, 8, 8, 1))) - 16) < 0.5


# ---------------------------------------------------------------------------------------
# Configs and the command line


def _config(*overrides):
    return experiment.get_config("digits_sr", list(overrides))


def test_low_res_config_checks():
    low_res = experiment.low_res_from_config(_config())
    assert low_res == LowResolution(2, 0.04)  # 0.02 in [0, 1] units, doubled for centered data
    assert experiment.train_kwargs(_config())["loss_kwargs"]["low_res"] == low_res
    assert experiment.train_kwargs(_config())["loss_kwargs"]["p_uncond"] == 0.0
    assert experiment.low_res_from_config(experiment.get_config("digits_vp")) is None
    cases = [
        (["training.condition=none"], "set --config.training.condition=low_res"),
        (["model.name=ddpm"], "does not"),
        (["model.sr_factor=3"], "dividing data.image_size=8"),
        (["data.sr_noise_aug=1.5"], "in [0, 1]"),
        (["training.objective=classifier"], "score models"),
    ]
    for overrides, message in cases:
        with pytest.raises(experiment.UserError, match=message.replace("[", r"\[").replace("]", r"\]")):
            experiment.low_res_from_config(_config(*overrides))


TINY = ["--config.training.n_iters=2", "--config.training.batch_size=16", "--config.training.snapshot_freq=2",
        "--config.training.snapshot_freq_for_preemption=2", "--config.training.log_freq=1",
        "--config.training.eval_freq=2", "--config.model.nf=8", "--config.model.ch_mult=(1,)"]


@pytest.fixture(scope="module")
def workdirs(tmp_path_factory):
    """Tiny trained workdirs, each trained on first use: a digits_sr run (with its snapshot grid)
    and a 4x4 digits model, the base of the cascade."""
    root, trained = tmp_path_factory.mktemp("sr"), {}
    commands = {"sr": ["--config", "digits_sr", "--config.sampling.method=ddim"],
                "base4": ["--config", "digits_vp", "--config.data.image_size=4", "--config.training.snapshot_sampling=False"]}

    class Workdirs:
        def __getitem__(self, name):
            if name not in trained:
                trained[name] = str(root / name)
                run("train", "--workdir", trained[name], *TINY, *commands[name])
            return trained[name]

    return Workdirs()


def test_cli_upsample_writes_a_before_after_grid(workdirs, tmp_path):
    sr = workdirs["sr"]
    snapshot = np.asarray(Image.open(f"{sr}/samples/step_00000002.png"))
    assert snapshot.shape[1] > snapshot.shape[0]  # 64 (input, output, original) triples, 8 per row
    pixels = np.array([[0, 255, 0, 0], [0, 255, 0, 0], [0, 255, 255, 0], [0, 0, 255, 0]], np.uint8)
    Image.fromarray(pixels).save(tmp_path / "low.png")
    out = str(tmp_path / "up")
    run("sample", "--workdir", sr, "--upsample", str(tmp_path / "low.png"), "--sampler", "ddim", "--steps", "2",
        "--num", "2", "--out", out)
    x = np.load(out + ".npz")["samples"]
    assert x.shape == (2, 8, 8, 1) and np.all(np.isfinite(x))
    grid = np.asarray(Image.open(out + ".png"))
    assert grid.shape == (8 * 19, 8 * 19)  # 2 rows of input | output, 8x8 tiles upscaled 8x, 1-pixel gaps
    np.testing.assert_array_equal(grid[8:72, 8:72], np.kron(pixels, np.ones((16, 16), np.uint8)))  # nearest
    Image.fromarray(np.zeros((2, 2), np.uint8)).save(tmp_path / "tiny.png")
    assert "is 2x2; this super-resolution model upsamples 4x4 images to 8x8" in error_of(
        "sample", "--workdir", sr, "--upsample", str(tmp_path / "tiny.png"))
    assert "one of the two" in error_of("sample", "--workdir", sr)
    assert "condition the base model" in error_of("sample", "--workdir", sr, "--upsample", str(tmp_path / "low.png"),
                                                  "--label", "3")
    assert "not --image, --inpaint" in error_of("sample", "--workdir", sr, "--upsample", str(tmp_path / "low.png"),
                                                "--sigma-y", "0.1")
    assert "makes (8, 8, 1) images" in error_of("sample", "--workdir", sr, "--base-workdir", sr)
    assert "holds a super-resolution model" in error_of("evaluate", "--workdir", sr)
    assert "holds a super-resolution model" in error_of("likelihood", "--workdir", sr)


def test_cli_cascade(workdirs, tmp_path):
    sr, base = workdirs["sr"], workdirs["base4"]
    out = str(tmp_path / "cascade")
    run("sample", "--workdir", sr, "--base-workdir", base, "--sampler", "ddim", "--steps", "2", "--num", "3",
        "--out", out)
    saved = np.load(out + ".npz")
    assert saved["samples"].shape == (3, 8, 8, 1) and np.all(np.isfinite(saved["samples"]))
    assert int(saved["nfe"]) == 4  # both stages
    assert np.asarray(Image.open(out + ".png")).shape == (8 * 28, 8 * 19)  # 3 rows of input | output
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "low.png")
    assert "one of the two" in error_of("sample", "--workdir", sr, "--base-workdir", base, "--upsample",
                                        str(tmp_path / "low.png"))
    assert "feeds a super-resolution model" in error_of("sample", "--workdir", base, "--base-workdir", base)
