"""Latent diffusion: the KL autoencoder (shapes, loss, training), the latent cache and scale,
decoding, a sampler on latents with an exact Gaussian target, the CLI end to end, and the
one-line errors."""

import json
import math
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scoresde import analytic, autoencoder, data, experiment, latent, losses, models, sde_lib, train
from scoresde.errors import UserError
from scoresde.workdir import save_config

from conftest import TINY_AE, check_gaussian, error_of, make_autoencoder, run

TINY_AE = TINY_AE["digits_ae"]
# A tiny score network on its 4x4x2 latents.
TINY_LDM = ["model.nf=8", "model.ch_mult=(1,)", "training.batch_size=32", "training.snapshot_sampling=False",
            "training.log_freq=2", "training.eval_freq=2", "training.snapshot_freq=2",
            "training.snapshot_freq_for_preemption=2"]


def latent_config(ae_path, *overrides):
    return experiment.get_config("digits_ldm", [f"data.autoencoder={ae_path}", *TINY_LDM, *overrides])


def encode_by_hand(model, params, images):
    """The posterior means of images in [0, 1] (digits_ae is centered), by the network itself."""
    return np.asarray(model.apply({"params": params}, jnp.asarray(images * 2 - 1), method="encode")[0])


# ----------------------------------------------------------------------------- the network


@pytest.mark.parametrize("ch_mult,latent_channels,image", [((1,), 3, (8, 8, 1)), ((1, 2), 2, (8, 8, 1)),
                                                           ((1, 2, 2), 4, (32, 32, 3)), ((1, 1, 2, 2), 1, (16, 16, 3))])
def test_autoencoder_shapes(ch_mult, latent_channels, image):
    model = models.get_model("autoencoder", nf=8, ch_mult=ch_mult, num_res_blocks=1, latent_channels=latent_channels,
                             num_channels=image[-1])
    f = 2 ** (len(ch_mult) - 1)
    assert model.factor == f
    x = jax.ShapeDtypeStruct((3,) + image, jnp.float32)
    params = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x)["params"], x)
    mean, logvar = jax.eval_shape(lambda p, x: model.apply({"params": p}, x, method="encode"), params, x)
    latent_shape = (3, image[0] // f, image[1] // f, latent_channels)
    assert mean.shape == logvar.shape == latent_shape
    out = jax.eval_shape(lambda p, z: model.apply({"params": p}, z, method="decode"), params, mean)
    assert out.shape == (3,) + image
    odd = (1, image[0] + 1, image[1] + 1, image[2])
    if f > 1:
        with pytest.raises(ValueError, match="cannot be downsampled"):
            jax.eval_shape(lambda p: model.apply({"params": p}, jnp.zeros(odd)), params)
    with pytest.raises(ValueError, match="channels"):
        jax.eval_shape(lambda p: model.apply({"params": p}, jnp.zeros(image[:2] + (image[2] + 1,))[None]), params)


def test_kl_term_matches_the_closed_form():
    # KL(N(m, s^2) || N(0, 1)) = log(1 / s) + (s^2 + m^2) / 2 - 1/2, summed over dimensions.
    m = np.array([[1.0, 0.0, -2.0], [0.5, 0.5, 0.0]])
    s = np.array([[1.0, np.sqrt(2.0), 0.5], [3.0, 0.1, 1.0]])
    expected = np.sum(np.log(1 / s) + (s**2 + m**2) / 2 - 0.5, axis=1)
    got = np.asarray(losses.diagonal_gaussian_kl(jnp.asarray(m), jnp.asarray(2 * np.log(s))))
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    np.testing.assert_allclose(got[0], 0.5 + 0.5 * (1 - np.log(2)) + (np.log(2) + (0.25 + 4) / 2 - 0.5), rtol=1e-6)


@pytest.mark.parametrize("reconstruction", ["l1", "l2"])
def test_autoencoder_loss_is_reconstruction_plus_weighted_kl(reconstruction):
    model = models.get_model("autoencoder", nf=8, ch_mult=(1, 2), num_res_blocks=0, latent_channels=2, num_channels=1)
    x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (4, 8, 8, 1)), jnp.float32)
    params = model.init(jax.random.PRNGKey(0), x)["params"]
    mean, logvar = model.apply({"params": params}, x, method="encode")
    x_hat = model.apply({"params": params}, mean, method="decode")
    err = np.abs(x - x_hat) if reconstruction == "l1" else np.square(x - x_hat)
    kl = 0.5 * np.sum(np.square(mean) + np.exp(logvar) - 1 - logvar, axis=(1, 2, 3))
    expected = np.mean(err.sum((1, 2, 3)) + 0.3 * kl) / 64
    loss_fn = losses.get_autoencoder_loss_fn(model, train=False, kl_weight=0.3, reconstruction=reconstruction)
    np.testing.assert_allclose(float(loss_fn(params, jax.random.PRNGKey(1), x)), expected, rtol=1e-5)
    # In training the latent is drawn from q(z | x): another loss, the same KL.
    assert float(losses.get_autoencoder_loss_fn(model, train=True, kl_weight=0.3,
                                                reconstruction=reconstruction)(params, jax.random.PRNGKey(1), x)) != expected


def test_short_training_reduces_reconstruction_error(tmp_path):
    workdir = str(tmp_path / "ae")
    overrides = TINY_AE + ["training.n_iters=40", "training.snapshot_freq=40", "training.log_freq=20",
                           "training.snapshot_freq_for_preemption=40", "optim.warmup=5", "training.batch_size=32"]
    experiment.train_workdir(workdir, "digits_ae", overrides, verbose=False)
    report = json.load(open(os.path.join(workdir, "eval", "reconstruction_test_step40.json")))
    assert os.path.exists(os.path.join(workdir, "samples", "reconstruction_step_00000040.png"))
    config = experiment.get_config("digits_ae", overrides)
    model = experiment.model_from_config(config)
    init = train.init_params(model, None, jax.random.PRNGKey(0), (8, 8, 1))
    test = data.digits_split()[2]
    before = autoencoder.evaluate(autoencoder.TrainedAutoencoder(config, model, init, 0), test)[0]
    # The report's MSE is that of the test digits through the trained autoencoder.
    trained = autoencoder.load(workdir)
    after = np.mean((trained.decode(encode_by_hand(model, trained.params, test)) - test) ** 2)
    assert report["mse"] == pytest.approx(after, rel=1e-4) and report["count"] == len(test)
    assert report["mse"] < 0.5 * before["mse"], (report["mse"], before["mse"])
    assert report["psnr"] == pytest.approx(10 * math.log10(1 / report["mse"]))


# ----------------------------------------------------------------------------- latents


def test_latent_cache_scale_reuse_and_invalidation(tmp_path, monkeypatch):
    ae_path, workdir = tmp_path / "ae", str(tmp_path / "ldm")
    model, params = make_autoencoder(ae_path, seed=0)
    config = latent.resolve_step(latent_config(ae_path))
    assert config.data.autoencoder_step == 1 and experiment.data_shape(config) == (4, 4, 2)
    config, train_iter = latent.prepare(workdir, config, verbose=False)
    expected = encode_by_hand(model, params, data.digits_split()[0])
    # The scale is 1 / std of the encoded training digits, and the model sees scaled latents.
    assert config.data.latent_scale == pytest.approx(1 / expected.std(), rel=1e-5)
    np.testing.assert_allclose(train_iter.source.images, expected * config.data.latent_scale, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(train_iter.source.labels, data.digits_split()[1])
    assert next(train_iter)["image"].shape == (32, 4, 4, 2)

    # Resuming with the same config is not "another config": the recorded step and scale are the run's.
    save_config(workdir, config)
    resumed, is_resumed = experiment.train_config(workdir, latent_config(ae_path))
    assert is_resumed and resumed.data.latent_scale == config.data.latent_scale

    # A second run (a resume) reads the cache: nothing is encoded.
    def refuse(*args, **kwargs):
        raise AssertionError("encoded again")

    with monkeypatch.context() as m:
        m.setattr(autoencoder.TrainedAutoencoder, "encode", refuse)
        again, it = latent.prepare(workdir, latent_config(ae_path, "data.autoencoder_step=1",
                                                          f"data.latent_scale={config.data.latent_scale}"), False)
        np.testing.assert_array_equal(it.source.images, train_iter.source.images)

    # The autoencoder's checkpoint changes (retrained into the same workdir): encoded again.
    shutil.rmtree(ae_path / "checkpoints" / "1")
    model, params = make_autoencoder(ae_path, seed=1)
    cached, _ = latent.cached_latents(workdir, config, verbose=False)
    np.testing.assert_allclose(cached, encode_by_hand(model, params, data.digits_split()[0]), rtol=1e-4, atol=1e-5)

    # Samples become images by decoding x / scale with that checkpoint.
    x = np.random.default_rng(0).normal(size=(5, 4, 4, 2)).astype(np.float32)
    images = np.asarray(experiment.to_unit_range(x, config))
    decoded = np.asarray(model.apply({"params": params}, jnp.asarray(x / config.data.latent_scale), method="decode"))
    np.testing.assert_allclose(images, np.clip((decoded + 1) / 2, 0, 1), atol=1e-5)
    assert images.shape == (5, 8, 8, 1)


def test_sampler_on_latents_matches_an_exact_gaussian(tmp_path):
    """The samplers see arrays of the latent shape; on an exact Gaussian target there, a
    registry sampler gives its law, and the samples decode through the recorded scale."""
    make_autoencoder(tmp_path / "ae")
    config = latent.resolve_step(latent_config(tmp_path / "ae", "data.latent_scale=0.5"))
    shape = experiment.data_shape(config)
    dim = math.prod(shape)
    rng = np.random.default_rng(0)
    mean, var = rng.normal(size=dim), rng.uniform(0.2, 1.5, size=dim)
    target = analytic.GaussianMixture([1.0], mean[None], var[None])
    sde = sde_lib.VPSDE()
    x, nfe = experiment.run_sampler(jax.random.PRNGKey(0), sde, target.score_fn(sde), (4000,) + shape,
                                    "dpm_solver++", {"num_steps": 30})
    assert x.shape == (4000,) + shape and nfe == 30
    check_gaussian(np.asarray(x).reshape(4000, dim), mean, np.diag(var))
    ae = latent.load_autoencoder(config)
    np.testing.assert_allclose(experiment.to_unit_range(x[:8], config), ae.decode(np.asarray(x[:8]) / 0.5), atol=1e-6)


# ----------------------------------------------------------------------------- errors


def test_latent_user_errors(tmp_path):
    ldm = str(tmp_path / "ldm")
    missing = str(tmp_path / "missing")
    msg = error_of("train", "--config", "digits_ldm", "--workdir", ldm, f"--config.data.autoencoder={missing}")
    assert "data.autoencoder" in msg and "No workdir" in msg
    make_autoencoder(tmp_path / "ae")
    ae = str(tmp_path / "ae")
    msg = error_of("train", "--config", "photos_ldm", "--workdir", ldm, f"--config.data.autoencoder={ae}")
    assert "data.dataset='digits'" in msg and "'photos'" in msg
    msg = error_of("train", "--config", "digits_ldm", "--workdir", ldm, f"--config.data.autoencoder={ae}",
                   "--config.data.autoencoder_step=7")
    assert "no checkpoint at data.autoencoder_step=7" in msg
    assert not os.path.exists(ldm)  # nothing was written
    # Not an autoencoder, and an autoencoder with no checkpoint yet.
    save_config(str(tmp_path / "vp"), experiment.get_config("digits_vp"))
    assert "not an autoencoder" in error_of("train", "--config", "digits_ldm", "--workdir", ldm,
                                            f"--config.data.autoencoder={tmp_path / 'vp'}")
    save_config(str(tmp_path / "ae0"), experiment.get_config("digits_ae"))
    assert "no checkpoint yet" in error_of("train", "--config", "digits_ldm", "--workdir", ldm,
                                           f"--config.data.autoencoder={tmp_path / 'ae0'}")
    # An autoencoder is not a score model; its settings are checked before anything is written.
    assert "holds an autoencoder" in error_of("sample", "--workdir", ae)
    bad = str(tmp_path / "bad")
    assert "kl_weight" in error_of("train", "--config", "digits_ae", "--workdir", bad, "--config.training.kl_weight=-1")
    assert "reconstruction loss" in error_of("train", "--config", "digits_ae", "--workdir", bad,
                                             "--config.training.reconstruction=l3")
    assert "cannot be downsampled" in error_of("train", "--config", "digits_ae", "--workdir", bad,
                                               "--config.model.ch_mult=(1, 2, 2, 2, 2)")
    assert "go together" in error_of("train", "--config", "digits_ae", "--workdir", bad, "--config.model.name=ncsnpp")
    assert not os.path.exists(bad)


def test_cli_latent_train_and_sample(tmp_path):
    """The default run's CLI check (the full chain is the slow test below): `scoresde train
    --config digits_ldm` on an autoencoder workdir (untrained), then `scoresde sample`: decoded
    8x8 digits in [0, 1] and a PNG; `likelihood` refuses latents."""
    ae, ldm = str(tmp_path / "ae"), str(tmp_path / "ldm")
    make_autoencoder(ae)
    run("train", "--config", "digits_ldm", "--workdir", ldm, f"--config.data.autoencoder={ae}",
        *(f"--config.{o}" for o in TINY_LDM), "--config.training.n_iters=2")
    assert os.path.exists(os.path.join(ldm, latent.CACHE)) and experiment.load_config(ldm).data.latent_scale > 0
    out = str(tmp_path / "s")
    run("sample", "--workdir", ldm, "--sampler", "ddim", "--steps", "2", "--num", "4", "--out", out)
    samples = np.load(out + ".npz")["samples"]
    assert samples.shape == (4, 8, 8, 1) and np.all((samples >= 0) & (samples <= 1))
    assert os.path.exists(out + ".png")
    assert "latents" in error_of("likelihood", "--workdir", ldm)


def test_cli_autoencoder_then_latent_model(tmp_path):
    """scoresde train (autoencoder) -> train (class-conditional latent model, resumed) ->
    sample with classifier-free guidance: decoded 8x8 PNG; ablate and evaluate on decoded
    samples; the refusals of pixel-only commands."""
    ae, ldm = str(tmp_path / "ae"), str(tmp_path / "ldm")
    run("train", "--config", "digits_ae", "--workdir", ae, *(f"--config.{o}" for o in TINY_AE),
        "--config.training.n_iters=4", "--config.training.batch_size=32", "--config.training.snapshot_freq=4",
        "--config.training.log_freq=2", "--config.training.snapshot_freq_for_preemption=4")
    assert os.path.exists(os.path.join(ae, "eval", "reconstruction_test_step4.json"))
    assert os.path.exists(os.path.join(ae, "samples", "reconstruction_step_00000004.png"))
    conditional = ["training.condition=class", "model.num_classes=10", "training.n_iters=2"]
    run("train", "--config", "digits_ldm", "--workdir", ldm, f"--config.data.autoencoder={ae}",
        *(f"--config.{o}" for o in TINY_LDM + conditional))
    saved = experiment.load_config(ldm)
    assert saved.data.autoencoder_step == 4 and saved.data.latent_scale > 0
    cache = os.path.join(ldm, latent.CACHE)
    stamp = os.stat(cache).st_mtime_ns
    run("train", "--workdir", ldm, "--config.training.n_iters=4")  # resumes on the cached latents
    assert os.stat(cache).st_mtime_ns == stamp
    assert max(json.loads(line)["step"] for line in open(os.path.join(ldm, "metrics.jsonl"))) == 4
    out = str(tmp_path / "s")
    run("sample", "--workdir", ldm, "--guidance", "1", "--sampler", "dpm_solver++", "--steps", "3", "--num", "10",
        "--out", out)
    samples = np.load(out + ".npz")
    assert samples["samples"].shape == (10, 8, 8, 1) and list(samples["labels"]) == list(range(10))
    assert np.all((samples["samples"] >= 0) & (samples["samples"] <= 1))
    assert os.path.exists(out + ".png")
    # The ablation tool and the evaluation score decoded samples against the held-out digits.
    prefix = str(tmp_path / "abl")
    run("ablate", "--workdir", ldm, "--samplers", "ddim", "--nfes", "3", "--num", "32", "--out", prefix)
    assert "fd_digits" in open(prefix + ".md").read()
    run("evaluate", "--workdir", ldm, "--num", "32", "--chunk", "32", "--sampler", "ddim", "--steps", "3",
        "--out", str(tmp_path / "eval"))
    report = json.load(open(next(os.path.join(r, f) for r, _, fs in os.walk(tmp_path / "eval") for f in fs
                                 if f == "report.json")))
    assert report["metric"] == "FD-digits" and report["num_samples"] == 32 and np.isfinite(report["fd"])
    assert "latents" in error_of("likelihood", "--workdir", ldm)
    from PIL import Image

    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "img.png")
    assert "act on pixels" in error_of("sample", "--workdir", ldm, "--inpaint", str(tmp_path / "img.png"), "--image",
                                       str(tmp_path / "img.png"))
