"""scoresde.configs: every config loads and validates, reference hyperparameters, names, overrides."""

import dataclasses
import json
import os
import re

import ml_collections
import pytest

from scoresde import configs, experiment
from scoresde.analytic import TOY_TARGETS

from conftest import make_autoencoder

ALL = configs.list_configs()
IMAGE = [n for n in ALL if not n.startswith("toy_")]
CONDITIONAL = ["digits_vp_class", "digits_vp_spelling", "digits_vp_text", "digits_vp_classifier", "digits_ve_classifier",
               "digits_vp_color"]
# The objective configs (tests/test_objectives.py): (training.sde, training.loss, model.parameterization).
OBJECTIVE = {"digits_edm": ("edm", "edm", "edm"), "digits_fm": ("rectified_flow", "flow_matching", "velocity"),
             "digits_v": ("vpsde", "v", "v")}
TOYS = [f"toy_{t}" for t in ("8gaussians", "moons", "checkerboard", "swissroll", "grid")]
SUPER_RESOLUTION = ["digits_sr", "photos_vp", "photos_sr"]
# Latent diffusion: autoencoders, and score models on their latents (data.autoencoder), and the pixel baseline.
AUTOENCODERS = ["digits_ae", "photos_ae"]
LATENT = {"digits_ldm": "runs/digits_ae", "photos_ldm": "runs/photos_ae"}
CPU = (["digits_vp", "digits_ve", "digits_dit", "photos32_vp"] + CONDITIONAL + list(OBJECTIVE) + SUPER_RESOLUTION + TOYS
       + AUTOENCODERS + list(LATENT))

REFERENCE_NAMES = {
    "vp/cifar10_ddpmpp", "vp/cifar10_ddpmpp_continuous", "vp/cifar10_ddpmpp_deep_continuous",
    "vp/cifar10_ncsnpp", "vp/cifar10_ncsnpp_continuous", "vp/cifar10_ncsnpp_deep_continuous",
    "vp/ddpm/cifar10", "vp/ddpm/cifar10_continuous", "vp/ddpm/cifar10_unconditional",
    "vp/ddpm/bedroom", "vp/ddpm/church", "vp/ddpm/celebahq",
    "subvp/cifar10_ddpm_continuous", "subvp/cifar10_ddpmpp_continuous", "subvp/cifar10_ddpmpp_deep_continuous",
    "subvp/cifar10_ncsnpp_continuous", "subvp/cifar10_ncsnpp_deep_continuous",
    "ve/cifar10_ncsnpp", "ve/cifar10_ncsnpp_continuous", "ve/cifar10_ncsnpp_deep_continuous", "ve/cifar10_ddpm",
    "ve/celeba_ncsnpp", "ve/bedroom_ncsnpp_continuous", "ve/church_ncsnpp_continuous",
    "ve/celebahq_256_ncsnpp_continuous", "ve/ffhq_256_ncsnpp_continuous",
    "ve/celebahq_ncsnpp_continuous", "ve/ffhq_ncsnpp_continuous",
}


def test_list_configs():
    assert set(ALL) == REFERENCE_NAMES | set(CPU)
    assert ALL == sorted(ALL)
    assert not any(n.rsplit("/", 1)[-1].startswith(("default_", "_")) for n in ALL)


@pytest.mark.parametrize("name", ALL)
def test_every_config_loads_locked_and_valid(name):
    config = configs.get_config(name)
    assert config.name == name and config.is_locked and config.model.is_locked
    with pytest.raises(AttributeError):
        config.training.batchsize = 1  # locked: a typo cannot add a key
    configs.validate(config)
    if name in AUTOENCODERS:
        return check_autoencoder_config(config)
    # The toolkit's fields, in every config.
    assert config.model.name in ("ncsnpp", "ddpm", "dit", "mlp", "classifier")
    assert (config.model.name == "classifier") == (config.training.objective == "classifier")
    assert config.data.autoencoder == LATENT.get(name, "") and config.data.autoencoder_step == -1
    assert config.data.latent_scale == 0.0
    sde, loss, parameterization = OBJECTIVE.get(name, (config.training.sde, "dsm", None))
    assert (config.training.sde, config.training.loss, config.model.parameterization) == (sde, loss, parameterization)
    assert config.training.sde in ("vpsde", "subvpsde", "vesde") or name in OBJECTIVE
    for key in ("method", "predictor", "corrector", "snr", "n_steps_each", "noise_removal"):
        assert key in config.sampling
    for key in ("batch_size", "num_samples", "bpd_dataset"):
        assert key in config.eval
    # What the experiment layer builds from it (no parameters are created).
    model = experiment.model_from_config(config)
    assert type(model).__name__.lower() == config.model.name or config.model.name == "classifier"
    experiment.sde_from_config(config)
    kwargs = experiment.train_kwargs(config)
    assert kwargs["ema_rate"] == config.model.ema_rate and kwargs["schedule"].n_iters == config.training.n_iters
    assert float(kwargs["lr_schedule"](config.optim.warmup)) == pytest.approx(config.optim.lr, rel=1e-6)  # warmed up
    if name in LATENT:  # the latent shape is the autoencoder's: a clear error until it is trained
        with pytest.raises(experiment.UserError, match=f"data.autoencoder='{LATENT[name]}'"):
            experiment.data_shape(config)
        return
    shape = experiment.data_shape(config)
    if name.startswith("toy_"):
        assert shape == (2,)
    else:
        assert shape == (config.data.image_size,) * 2 + (config.data.num_channels,)
        assert config.data.num_bins == (17 if name.startswith("digits") else 256)
    # JSON round trip (what a workdir keeps).
    assert json.loads(config.to_json())["model"]["name"] == config.model.name


def check_autoencoder_config(config):
    """An autoencoder config: no SDE, its own loss settings, no latent settings of its own."""
    assert (config.model.name, config.training.objective) == ("autoencoder", "autoencoder")
    assert experiment.sde_from_config(config) is None and "autoencoder" not in config.data
    model = experiment.model_from_config(config)
    assert type(model).__name__ == "Autoencoder" and model.num_channels == config.data.num_channels
    kwargs = experiment.train_kwargs(config)
    assert kwargs["loss_kwargs"] == {"kl_weight": config.training.kl_weight, "reconstruction": "l1"}
    assert experiment.data_shape(config) == (config.data.image_size,) * 2 + (config.data.num_channels,)
    size = config.data.image_size // model.factor
    assert {"digits_ae": (size, model.latent_channels) == (4, 2),
            "photos_ae": (size, model.latent_channels) == (8, 4)}[config.name]


def test_configs_are_fresh_copies():
    a, b = configs.get_config("digits_vp"), configs.get_config("digits_vp")
    a.training.batch_size = 7
    assert b.training.batch_size == 128


# (config, dotted key, reference value)
SPOT_CHECKS = [
    ("vp/cifar10_ddpmpp_continuous", "optim.lr", 2e-4),
    ("vp/cifar10_ddpmpp_continuous", "training.batch_size", 128),
    ("vp/cifar10_ddpmpp_continuous", "training.n_iters", 1300001),
    ("vp/cifar10_ddpmpp_continuous", "training.snapshot_freq", 50000),
    ("vp/cifar10_ddpmpp_continuous", "training.snapshot_freq_for_preemption", 10000),
    ("vp/cifar10_ddpmpp_continuous", "training.n_jitted_steps", 5),
    ("vp/cifar10_ddpmpp_continuous", "training.sde", "vpsde"),
    ("vp/cifar10_ddpmpp_continuous", "training.continuous", True),
    ("vp/cifar10_ddpmpp_continuous", "training.reduce_mean", True),
    ("vp/cifar10_ddpmpp_continuous", "model.ema_rate", 0.9999),
    ("vp/cifar10_ddpmpp_continuous", "model.beta_min", 0.1),
    ("vp/cifar10_ddpmpp_continuous", "model.beta_max", 20.0),
    ("vp/cifar10_ddpmpp_continuous", "model.nf", 128),
    ("vp/cifar10_ddpmpp_continuous", "model.ch_mult", (1, 2, 2, 2)),
    ("vp/cifar10_ddpmpp_continuous", "model.num_res_blocks", 4),
    ("vp/cifar10_ddpmpp_continuous", "model.attn_resolutions", (16,)),
    ("vp/cifar10_ddpmpp_continuous", "model.dropout", 0.1),
    ("vp/cifar10_ddpmpp_continuous", "model.fir", False),
    ("vp/cifar10_ddpmpp_continuous", "model.progressive_input", "none"),
    ("vp/cifar10_ddpmpp_continuous", "model.embedding_type", "positional"),
    ("vp/cifar10_ddpmpp_continuous", "model.scale_by_sigma", False),
    ("vp/cifar10_ddpmpp_continuous", "data.centered", True),
    ("vp/cifar10_ddpmpp_continuous", "data.dataset", "cifar10"),
    ("vp/cifar10_ddpmpp_continuous", "sampling.predictor", "euler_maruyama"),
    ("vp/cifar10_ddpmpp_continuous", "sampling.corrector", "none"),
    ("vp/cifar10_ddpmpp_continuous", "optim.warmup", 5000),
    ("vp/cifar10_ddpmpp_continuous", "optim.grad_clip", 1.0),
    ("vp/cifar10_ddpmpp_continuous", "eval.batch_size", 1024),
    ("vp/cifar10_ddpmpp_continuous", "eval.num_samples", 50000),
    ("vp/cifar10_ddpmpp_continuous", "seed", 42),
    ("vp/cifar10_ddpmpp", "training.continuous", False),
    ("vp/cifar10_ddpmpp", "sampling.predictor", "ancestral_sampling"),
    ("vp/cifar10_ddpmpp_deep_continuous", "training.n_iters", 950001),
    ("vp/cifar10_ddpmpp_deep_continuous", "model.num_res_blocks", 8),
    ("vp/cifar10_ncsnpp", "sampling.predictor", "reverse_diffusion"),
    ("vp/cifar10_ncsnpp_continuous", "model.fir", True),
    ("vp/cifar10_ncsnpp_continuous", "model.progressive_input", "residual"),
    ("vp/ddpm/cifar10", "model.name", "ddpm"),
    ("vp/ddpm/cifar10", "model.num_res_blocks", 2),
    ("vp/ddpm/cifar10", "training.continuous", False),
    ("vp/ddpm/cifar10", "sampling.predictor", "ancestral_sampling"),
    ("vp/ddpm/cifar10_unconditional", "model.conditional", False),
    ("vp/ddpm/church", "optim.lr", 2e-5),
    ("vp/ddpm/church", "model.ch_mult", (1, 1, 2, 2, 4, 4)),
    ("vp/ddpm/church", "model.num_scales", 1000),
    ("vp/ddpm/church", "data.dataset", "lsun/church_outdoor"),
    ("vp/ddpm/bedroom", "data.dataset", "lsun/bedroom"),
    ("vp/ddpm/celebahq", "data.image_size", 256),
    ("subvp/cifar10_ddpm_continuous", "training.sde", "subvpsde"),
    ("subvp/cifar10_ddpm_continuous", "model.name", "ddpm"),
    ("subvp/cifar10_ddpmpp_continuous", "training.sde", "subvpsde"),
    ("subvp/cifar10_ddpmpp_continuous", "model.ema_rate", 0.9999),
    ("subvp/cifar10_ddpmpp_deep_continuous", "training.n_iters", 950001),
    ("subvp/cifar10_ddpmpp_deep_continuous", "model.num_res_blocks", 8),
    ("subvp/cifar10_ncsnpp_deep_continuous", "model.progressive_input", "residual"),
    ("subvp/cifar10_ncsnpp_deep_continuous", "model.embedding_type", "positional"),
    ("ve/cifar10_ncsnpp_continuous", "training.sde", "vesde"),
    ("ve/cifar10_ncsnpp_continuous", "training.reduce_mean", False),
    ("ve/cifar10_ncsnpp_continuous", "model.sigma_min", 0.01),
    ("ve/cifar10_ncsnpp_continuous", "model.sigma_max", 50.0),
    ("ve/cifar10_ncsnpp_continuous", "model.num_scales", 1000),
    ("ve/cifar10_ncsnpp_continuous", "model.ema_rate", 0.999),
    ("ve/cifar10_ncsnpp_continuous", "model.fir", True),
    ("ve/cifar10_ncsnpp_continuous", "model.fir_kernel", (1, 3, 3, 1)),
    ("ve/cifar10_ncsnpp_continuous", "model.resblock_type", "biggan"),
    ("ve/cifar10_ncsnpp_continuous", "model.progressive", "none"),
    ("ve/cifar10_ncsnpp_continuous", "model.progressive_input", "residual"),
    ("ve/cifar10_ncsnpp_continuous", "model.embedding_type", "fourier"),
    ("ve/cifar10_ncsnpp_continuous", "model.fourier_scale", 16.0),
    ("ve/cifar10_ncsnpp_continuous", "model.scale_by_sigma", True),
    ("ve/cifar10_ncsnpp_continuous", "data.centered", False),
    ("ve/cifar10_ncsnpp_continuous", "sampling.predictor", "reverse_diffusion"),
    ("ve/cifar10_ncsnpp_continuous", "sampling.corrector", "langevin"),
    ("ve/cifar10_ncsnpp_continuous", "sampling.snr", 0.16),
    ("ve/cifar10_ncsnpp_deep_continuous", "training.n_iters", 950001),
    ("ve/cifar10_ncsnpp", "training.continuous", False),
    ("ve/cifar10_ncsnpp", "model.embedding_type", "positional"),
    ("ve/cifar10_ddpm", "model.scale_by_sigma", True),
    ("ve/celeba_ncsnpp", "model.sigma_max", 90.0),
    ("ve/celeba_ncsnpp", "sampling.snr", 0.17),
    ("ve/celeba_ncsnpp", "data.dataset", "celeb_a"),
    ("ve/celeba_ncsnpp", "data.image_size", 64),
    ("ve/church_ncsnpp_continuous", "model.sigma_max", 380.0),
    ("ve/church_ncsnpp_continuous", "model.num_scales", 2000),
    ("ve/church_ncsnpp_continuous", "model.dropout", 0.0),
    ("ve/church_ncsnpp_continuous", "model.ch_mult", (1, 1, 2, 2, 2, 2, 2)),
    ("ve/church_ncsnpp_continuous", "model.num_res_blocks", 2),
    ("ve/church_ncsnpp_continuous", "model.progressive", "output_skip"),
    ("ve/church_ncsnpp_continuous", "model.progressive_input", "input_skip"),
    ("ve/church_ncsnpp_continuous", "sampling.snr", 0.075),
    ("ve/church_ncsnpp_continuous", "training.batch_size", 64),
    ("ve/church_ncsnpp_continuous", "training.n_iters", 2400001),
    ("ve/church_ncsnpp_continuous", "training.snapshot_freq_for_preemption", 5000),
    ("ve/church_ncsnpp_continuous", "eval.batch_size", 512),
    ("ve/church_ncsnpp_continuous", "data.image_size", 256),
    ("ve/bedroom_ncsnpp_continuous", "model.sigma_max", 378.0),
    ("ve/celebahq_256_ncsnpp_continuous", "model.sigma_max", 348.0),
    ("ve/ffhq_256_ncsnpp_continuous", "model.sigma_max", 348.0),
    ("ve/ffhq_ncsnpp_continuous", "model.nf", 16),
    ("ve/ffhq_ncsnpp_continuous", "model.ch_mult", (1, 2, 4, 8, 16, 32, 32, 32)),
    ("ve/ffhq_ncsnpp_continuous", "model.num_res_blocks", 1),
    ("ve/ffhq_ncsnpp_continuous", "model.sigma_max", 1348.0),
    ("ve/ffhq_ncsnpp_continuous", "model.ema_rate", 0.9999),
    ("ve/ffhq_ncsnpp_continuous", "training.batch_size", 8),
    ("ve/ffhq_ncsnpp_continuous", "training.reduce_mean", True),
    ("ve/ffhq_ncsnpp_continuous", "training.n_jitted_steps", 2),
    ("ve/ffhq_ncsnpp_continuous", "sampling.snr", 0.15),
    ("ve/ffhq_ncsnpp_continuous", "eval.batch_size", 1024),
    ("ve/ffhq_ncsnpp_continuous", "data.image_size", 1024),
    ("ve/celebahq_ncsnpp_continuous", "training.reduce_mean", False),
    ("ve/celebahq_ncsnpp_continuous", "training.n_jitted_steps", 1),
]


@pytest.mark.parametrize("name,key,value", SPOT_CHECKS, ids=[f"{n}:{k}" for n, k, _ in SPOT_CHECKS])
def test_reference_hyperparameters(name, key, value):
    node = configs.get_config(name)
    for part in key.split("."):
        node = node[part]
    assert node == value and type(node) is type(value), (node, value)


def test_network_sections_match_model_presets():
    """The models package's independent transcription of the CIFAR-10 networks agrees field for field."""
    from scoresde.models import presets

    for key in presets.CIFAR10:
        model, preset = experiment.model_from_config(configs.get_config(key)), presets.build(key)
        assert type(model) is type(preset)
        for f in dataclasses.fields(model):
            if f.name not in ("parent", "name"):
                assert getattr(model, f.name) == getattr(preset, f.name), (key, f.name)


def test_reference_fixes():
    # Misspelled / unread keys are gone; keys missing from the reference's standalone files are there.
    assert "sigma_begin" not in configs.get_config("ve/celeba_ncsnpp").model
    assert "conv_size" not in configs.get_config("ve/cifar10_ddpm").model
    for name in ("ve/celebahq_ncsnpp_continuous", "ve/ffhq_ncsnpp_continuous"):
        c = configs.get_config(name)
        assert "amsgrad" not in c.optim and "tfrecords_path" not in c.data
        assert c.eval.bpd_dataset == "test"
    assert configs.get_config("vp/ddpm/cifar10").model.fourier_scale == 16.0  # next to embedding_type


def test_fixes_are_listed_in_readme():
    readme = open(os.path.join(configs.CONFIG_DIR, "README.md")).read()
    for root, _, files in os.walk(configs.CONFIG_DIR):
        for f in files:
            if f.endswith(".py") and f != "__init__.py" and "# FIX(reference):" in open(os.path.join(root, f)).read():
                rel = os.path.relpath(os.path.join(root, f), configs.CONFIG_DIR).replace(os.sep, "/")
                assert rel in readme, rel


def test_validate_finds_unread_and_missing_model_keys():
    config = configs.get_config("ve/cifar10_ddpm", lock=False)
    config.model.conv_size = 3
    config.model.sigma_begin = 90.0
    del config.model["nf"]
    with pytest.raises(ValueError) as err:
        configs.validate(config)
    text = str(err.value)
    assert "config.model.conv_size is not read by the 'ddpm' network" in text
    assert "sigma_begin" in text and "'nf' is missing" in text


def test_cpu_configs():
    for name in ("digits_vp", "digits_ve"):
        c = configs.get_config(name)
        assert (c.data.dataset, c.data.image_size, c.data.num_channels, c.data.num_bins) == ("digits", 8, 1, 17)
        assert not c.data.random_flip and c.model.attn_resolutions == () and c.training.batch_size == 128
        assert (c.model.nf, c.model.ch_mult, c.model.num_res_blocks) == (32, (1, 2), 1)
    vp, ve = configs.get_config("digits_vp"), configs.get_config("digits_ve")
    assert (vp.training.sde, vp.data.centered, vp.model.embedding_type, vp.model.fir) == ("vpsde", True, "positional", False)
    assert (ve.training.sde, ve.data.centered, ve.model.embedding_type, ve.model.fir) == ("vesde", False, "fourier", True)
    assert ve.model.scale_by_sigma and ve.sampling.corrector == "langevin"
    for name in TOYS:
        c = configs.get_config(name)
        assert c.model.name == "mlp" and c.data.dim == 2 and c.data.dataset in TOY_TARGETS
        assert "image_size" not in c.data
    # The objective variants change only the objective (its path, parameterization and snapshot sampler):
    # ablate_objectives compares them at the same network, data, optimizer and schedule.
    base = json.loads(vp.to_json())
    objective_keys = {"training.sde", "training.loss", "training.min_snr_gamma", "model.parameterization",
                      "model.sigma_min", "model.sigma_max", "sampling.method"}
    for name in OBJECTIVE:
        c = json.loads(configs.get_config(name).to_json())
        changed = {f"{s}.{k}" for s, section in c.items() if isinstance(section, dict)
                   for k, v in section.items() if v != base[s][k]}
        assert set(c) == set(base) and changed <= objective_keys, (name, changed - objective_keys)
    # The conditional variants change only what they are about.
    cls, spell = configs.get_config("digits_vp_class"), configs.get_config("digits_vp_spelling")
    assert (cls.training.condition, cls.model.num_classes, cls.training.p_uncond) == ("class", 10, 0.1)
    assert (spell.training.condition, spell.model.context_vocab_size, spell.model.attn_resolutions) == ("spelling", 28, (4,))
    text = configs.get_config("digits_vp_text")
    assert (text.training.condition, text.model.context_embedding_dim, text.model.context_vocab_size,
            text.data.dataset) == ("text_embedding", 32, 0, "runs/digits_text.npz")
    for name in ("digits_vp_classifier", "digits_ve_classifier"):
        c = configs.get_config(name)
        assert (c.training.objective, c.model.name, c.model.num_classes) == ("classifier", "classifier", 10)
        assert c.training.sde == name.split("_")[1] + "sde" and not c.training.snapshot_sampling
    color = configs.get_config("digits_vp_color")
    assert (color.data.dataset, color.data.num_channels) == ("digits_color", 3)
    for name in ("digits_vp", "digits_ve", "toy_moons"):  # every config gets the unconditional defaults
        c = configs.get_config(name)
        assert (c.training.objective, c.training.condition, c.model.num_classes, c.model.context_vocab_size) == (
            "score", "none", 0, 0)


def test_digits_network_is_small():
    from scoresde.models import count_params, param_shapes

    for name in ("digits_vp", "digits_ve"):
        n = count_params(param_shapes(experiment.model_from_config(configs.get_config(name)), (1, 8, 8, 1)))
        assert 2e5 < n < 2e6, n


# ----------------------------------------------------------------------------- names and paths


@pytest.mark.parametrize(
    "given,full",
    [
        ("digits_vp", "digits_vp"),
        ("vp/cifar10_ddpmpp_continuous", "vp/cifar10_ddpmpp_continuous"),
        ("ddpm/cifar10", "vp/ddpm/cifar10"),
        ("cifar10", "vp/ddpm/cifar10"),
        ("cifar10_ddpm", "ve/cifar10_ddpm"),
        ("celeba_ncsnpp", "ve/celeba_ncsnpp"),
        ("configs/vp/cifar10_ddpmpp_continuous.py", "vp/cifar10_ddpmpp_continuous"),
        ("vp.cifar10_ddpmpp_continuous", "vp/cifar10_ddpmpp_continuous"),
    ],
)
def test_short_names(given, full):
    assert configs.resolve_name(given) == full
    assert configs.get_config(given).name == full


def test_ambiguous_name_lists_candidates():
    with pytest.raises(ValueError, match="ambiguous") as err:
        configs.get_config("cifar10_ddpmpp_continuous")
    assert "vp/cifar10_ddpmpp_continuous" in str(err.value) and "subvp/cifar10_ddpmpp_continuous" in str(err.value)
    with pytest.raises(ValueError) as err:
        configs.get_config("cifar10_ncsnpp_continuous")
    for family in ("vp", "subvp", "ve"):
        assert f"{family}/cifar10_ncsnpp_continuous" in str(err.value)


def test_unknown_name_suggests_and_says_how_to_list():
    with pytest.raises(ValueError) as err:
        configs.get_config("digit_vp")
    assert "Did you mean: digits_vp" in str(err.value) and "scoresde configs" in str(err.value)
    with pytest.raises(ValueError, match="No such config file"):
        configs.get_config("nowhere/my_config.py")


def test_load_from_path(tmp_path):
    path = tmp_path / "my_config.py"
    path.write_text(
        "from scoresde.configs.default_digits_configs import get_default_configs\n\n"
        "def get_config():\n"
        "  config = get_default_configs()\n"
        "  config.training.n_iters = 10\n"
        "  return config\n"
    )
    config = configs.get_config(str(path))
    assert config.name == str(path) and config.training.n_iters == 10 and config.is_locked
    bad = tmp_path / "bad.py"
    bad.write_text("x = 1\n")
    with pytest.raises(ValueError, match="defines no get_config"):
        configs.get_config(str(bad))


# ----------------------------------------------------------------------------- overrides


@pytest.mark.parametrize(
    "override,key,value",
    [
        ("training.batch_size=64", "training.batch_size", 64),
        ("training.n_iters=1e4", "training.n_iters", 10000),
        ("optim.lr=1e-3", "optim.lr", 1e-3),
        ("model.sigma_max=3", "model.sigma_max", 3.0),  # an int for a float field
        ("model.ch_mult=(1,2)", "model.ch_mult", (1, 2)),
        ("model.ch_mult=[1, 2, 2]", "model.ch_mult", (1, 2, 2)),
        ("model.attn_resolutions=()", "model.attn_resolutions", ()),
        ("model.attn_resolutions=(16, 8)", "model.attn_resolutions", (16, 8)),
        ("data.random_flip=false", "data.random_flip", False),
        ("training.continuous=True", "training.continuous", True),
        ("model.name=ddpm", "model.name", "ddpm"),
        ("model.name='ddpm'", "model.name", "ddpm"),
        ("sampling.corrector=none", "sampling.corrector", "none"),
        ("data.dataset=lsun/church_outdoor", "data.dataset", "lsun/church_outdoor"),
        ("model.parameterization=v", "model.parameterization", "v"),
        ("model.parameterization=None", "model.parameterization", None),
        ("training.sde=subvpsde", "training.sde", "subvpsde"),
        ("--config.training.log_freq=10", "training.log_freq", 10),
    ],
)
def test_overrides_parse(override, key, value):
    config = configs.get_config("vp/cifar10_ddpmpp_continuous")
    assert configs.apply_overrides(config, [override]) is config
    node = config
    for part in key.split("."):
        node = node[part]
    assert node == value and type(node) is type(value)
    assert config.is_locked


@pytest.mark.parametrize(
    "override,message",
    [
        ("training.batch_size=2.5", "config.training.batch_size: expected int, got '2.5'"),
        ("training.batch_size=abc", "expected int"),
        ("optim.lr=fast", "config.optim.lr: expected float"),
        ("data.random_flip=1", "expected bool (True or False)"),
        ("model.ch_mult=(1,2.5)", "expected a tuple of int"),
        ("model.ch_mult=16", "expected a tuple"),
        ("model.attn_resolutions=(16)", "expected a tuple, e.g. (16,)"),
        ("model.nf=None", "config.model.nf cannot be None (expected int)"),
        ("training=3", "config.training is a section"),
        ("training.batch_size.x=3", "config.training.batch_size is a value (int), not a section"),
        ("nokey", "not of the form key=value"),
        ("training.batchsize=64", "unknown key config.training.batchsize; did you mean training.batch_size?"),
        ("training.lr=1e-3", "unknown key config.training.lr; did you mean optim.lr?"),
        ("modle.nf=64", "unknown key config.modle.nf; did you mean model.nf?"),
        ("optim.learning_rate=1", "the keys of config.optim are: beta1, eps, grad_clip"),
        ("training.sde=vesd",
         "unknown value 'vesd' (valid: vpsde, subvpsde, vesde, cosinevpsde, rectified_flow, edm); did you mean 'vesde'?"),
        ("model.name=ncsn", "did you mean 'ncsnpp'?"),
        ("sampling.predictor=ancestral", "did you mean 'ancestral_sampling'?"),
        ("model.parameterization=eps2", "unknown value 'eps2'"),
        ("optim.optimizer=SGD", "config.optim.optimizer: unknown value 'SGD' (valid: Adam)"),
    ],
)
def test_bad_overrides_fail_clearly(override, message):
    config = configs.get_config("vp/cifar10_ddpmpp_continuous")
    with pytest.raises(ValueError) as err:
        configs.apply_overrides(config, [override])
    assert message in str(err.value), str(err.value)


def test_overrides_on_a_config_read_back_from_json():
    """A workdir's config.json has lists for tuples and plain None for placeholders."""
    saved = configs.get_config("digits_ve")
    config = ml_collections.ConfigDict(json.loads(saved.to_json()))
    config.lock()
    configs.apply_overrides(
        config, ["model.ch_mult=(1,2,2)", "model.parameterization=eps", "model.parameterization=None",
                 "training.n_iters=4000"]
    )
    assert list(config.model.ch_mult) == [1, 2, 2] and config.model.parameterization is None
    assert config.training.n_iters == 4000
    assert experiment.model_from_config(config).ch_mult == (1, 2, 2)


def test_unknown_key_message_format():
    with pytest.raises(ValueError, match=re.escape("unknown key config.training.batchsize; did you mean training.batch_size?")):
        configs.apply_overrides(configs.get_config("digits_vp"), ["training.batchsize=64"])


# ----------------------------------------------------------------------------- every key is read


def _leaves(node, prefix=""):
    for key, value in node.items():
        if isinstance(value, ml_collections.ConfigDict):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield prefix + key


@pytest.fixture
def record_reads(monkeypatch):
    """`record(config)` starts recording the keys of `config` that are read (attribute access,
    `config[key]`, `get`); `reads` is the set of their dotted paths. `items()` is not counted:
    `models.registry.model_kwargs` iterates whole sections and keeps the network's fields,
    which the test credits itself."""
    original = ml_collections.ConfigDict.__getitem__
    paths, reads = {}, set()

    def getitem(self, key):
        value = original(self, key)
        if id(self) in paths and isinstance(key, str) and "." not in key and not isinstance(value, ml_collections.ConfigDict):
            reads.add(paths[id(self)] + key)
        return value

    def items(self, preserve_field_references=False):
        return [(k, original(self, k)) for k in self.keys()]

    def record(config):
        def walk(node, prefix):
            paths[id(node)] = prefix
            for key in node.keys():
                value = original(node, key)
                if isinstance(value, ml_collections.ConfigDict):
                    walk(value, f"{prefix}{key}.")

        walk(config, "")
        return config

    monkeypatch.setattr(ml_collections.ConfigDict, "__getitem__", getitem)
    monkeypatch.setattr(ml_collections.ConfigDict, "items", items)
    record.reads = reads
    return record


def test_every_config_key_has_a_reader(record_reads, monkeypatch, tmp_path):
    """Every key of every config is read by the library when that config is used: the
    reference's keys that nothing here reads (eval.begin_ckpt, eval.enable_bpd,
    sampling.probability_flow, ...) were removed (configs/README.md lists them), and a key
    added without a reader fails here. The readers are run with everything expensive (data,
    networks, samplers, metrics, the training loop) stubbed out."""
    import types

    import numpy as np

    from scoresde import autoencoder, data, evaluation, likelihood, train
    from scoresde.evaluation import feature_spaces
    from scoresde.models.registry import model_fields
    from scoresde.samplers import registry

    def get_dataset(name, split, batch_size, image_size=None, num_channels=None, **kwargs):
        shape = (batch_size, image_size, image_size, num_channels or 1) if image_size else (batch_size, 2)
        return iter([{"image": np.zeros(shape, np.float32), "label": np.zeros(batch_size, np.int32)}])

    monkeypatch.setattr(data, "get_dataset", get_dataset)
    monkeypatch.setattr(train, "train", lambda *args, **kwargs: types.SimpleNamespace(step=0))
    monkeypatch.setattr(likelihood, "evaluate_bpd", lambda *args, **kwargs: {"bpd": 1.0, "bpd_per_pass": [1.0]})
    monkeypatch.setattr(registry, "sample", lambda key, sde, score, shape, name, **o: (np.zeros(shape, np.float32), 1))
    monkeypatch.setattr(feature_spaces, "evaluate", lambda *args, **kwargs: {})
    present, read = set(), set()
    for name in ALL:
        config = configs.get_config(name)
        if name in LATENT:  # a latent config reads its autoencoder: a tiny, freshly initialized one
            config.data.autoencoder = str(tmp_path / f"{name}_ae")
            make_autoencoder(config.data.autoencoder, name.replace("_ldm", "_ae"))
        config = record_reads(config)
        record_reads.reads.clear()
        sde, model = experiment.sde_from_config(config), experiment.model_from_config(config)
        experiment.train_kwargs(config)
        experiment.dataset_from_config(config, "train")
        if name in AUTOENCODERS:
            autoencoder.snapshot_hook(config, model, str(tmp_path))
        else:
            experiment.sampler_from_config(config)
            experiment.snapshot_hook(config, sde, model, str(tmp_path))
        if name in ("digits_vp", "toy_8gaussians", "digits_ae", "digits_ldm"):  # what the commands read besides
            workdir = str(tmp_path / name)
            experiment.train_workdir(workdir, config)  # reads config.name for its first line
        if name in ("digits_vp", "toy_8gaussians", "digits_ldm"):
            monkeypatch.setattr(experiment, "load_score_fn", lambda workdir, step=None: (config, sde, None, 0))
            experiment.sample_workdir(workdir, 2)
            if experiment.is_image_data(config):
                if name not in LATENT:  # no pixel likelihood of latents
                    experiment.likelihood_report(workdir)
                evaluation.evaluate_workdir(workdir, progress=False)
        network = set(model_fields(config.model.name))  # model_kwargs passes these to the network
        read |= record_reads.reads | {f"{s}.{k}" for s in ("model", "data") for k in network}
        present |= set(_leaves(config))
    # Per key, not per config: the defaults give every network embedding_type, which DDPM's ignores.
    assert not present - read, f"config keys that nothing reads: {sorted(present - read)}"
