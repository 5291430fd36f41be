"""The command line for conditional generation, end to end on tiny digits models:
class-conditional training, classifier-free guidance, classifier guidance with a trained
noise-conditional classifier, inpainting and super-resolution with their before/after
grids, the guidance sweep in `ablate`, and the one-line errors of each.
"""

import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from conftest import error_of, run

TINY = [
    "--config.training.n_iters=2",
    "--config.training.batch_size=16",
    "--config.training.snapshot_freq=2",
    "--config.training.snapshot_freq_for_preemption=2",
    "--config.training.log_freq=1",
    "--config.training.eval_freq=2",
    "--config.training.snapshot_sampling=False",
    "--config.model.nf=8",
    "--config.model.ch_mult=(1,)",
]


@pytest.fixture(scope="module")
def workdirs(tmp_path_factory):
    """Tiny trained workdirs by config name, each trained on first use (so that each test's
    time includes only the models it needs)."""
    root, trained = tmp_path_factory.mktemp("cond"), {}

    class Workdirs:
        def __getitem__(self, name):
            if name not in trained:
                trained[name] = str(root / name)
                run("train", "--config", name, "--workdir", trained[name], *TINY)
            return trained[name]

    return Workdirs()


def test_class_conditional_sample_and_guidance(workdirs, tmp_path, capsys):
    out = str(tmp_path / "cfg")
    run("sample", "--workdir", workdirs["digits_vp_class"], "--sampler", "ddim", "--steps", "2", "--num", "20",
        "--guidance", "3", "--out", out)
    saved = np.load(out + ".npz")
    assert saved["samples"].shape == (20, 8, 8, 1) and np.all(np.isfinite(saved["samples"]))
    np.testing.assert_array_equal(saved["labels"], np.arange(20) % 10)  # every class in turn
    assert float(saved["guidance"]) == 3.0
    assert Image.open(out + ".png").size[0] > Image.open(out + ".png").size[1]  # 10 columns, 2 rows
    assert "accuracy of the bundled digits classifier" in capsys.readouterr().out
    run("sample", "--workdir", workdirs["digits_vp_class"], "--sampler", "ddim", "--steps", "2", "--num", "4",
        "--label", "7", "--out", out)
    np.testing.assert_array_equal(np.load(out + ".npz")["labels"], [7, 7, 7, 7])
    assert "must lie in [0, 10)" in error_of("sample", "--workdir", workdirs["digits_vp_class"], "--label", "12")
    assert "integers" in error_of("sample", "--workdir", workdirs["digits_vp_class"], "--label", "seven")
    assert "spelling-conditioned" in error_of("sample", "--workdir", workdirs["digits_vp_class"], "--text", "seven")


def test_classifier_guidance(workdirs, tmp_path):
    out = str(tmp_path / "clf")
    run("sample", "--workdir", workdirs["digits_vp"], "--classifier", workdirs["digits_vp_classifier"],
        "--classifier-scale", "2", "--label", "3", "--sampler", "dpm_solver++", "--steps", "2", "--num", "4", "--out", out)
    saved = np.load(out + ".npz")
    assert np.all(np.isfinite(saved["samples"])) and list(saved["labels"]) == [3, 3, 3, 3]
    # The same classifier, relabelled as trained for the VE SDE.
    ve = str(tmp_path / "ve_classifier")
    shutil.copytree(workdirs["digits_vp_classifier"], ve)
    config = json.load(open(os.path.join(ve, "config.json")))
    config["training"]["sde"] = "vesde"
    json.dump(config, open(os.path.join(ve, "config.json"), "w"))
    assert "another SDE" in error_of("sample", "--workdir", workdirs["digits_vp"], "--classifier", ve)
    assert "is conditional" in error_of("sample", "--workdir", workdirs["digits_vp_class"], "--classifier",
                                        workdirs["digits_vp_classifier"])
    assert "unconditional" in error_of("sample", "--workdir", workdirs["digits_vp"], "--guidance", "1")
    assert "not a score model" in error_of("sample", "--workdir", workdirs["digits_vp_classifier"])
    assert "not a classifier" in error_of("sample", "--workdir", workdirs["digits_vp"], "--classifier",
                                          workdirs["digits_vp_class"])


def test_inpaint_writes_before_after_grid(workdirs, tmp_path):
    image, mask = str(tmp_path / "x.png"), str(tmp_path / "mask.png")
    digit = np.zeros((8, 8), np.uint8)
    digit[1:7, 3:5] = 255
    Image.fromarray(digit).save(image)
    m = np.full((8, 8), 255, np.uint8)
    m[:, 4:] = 0  # right half unknown
    Image.fromarray(m).save(mask)
    out = str(tmp_path / "inp")
    run("sample", "--workdir", workdirs["digits_vp"], "--inpaint", mask, "--image", image, "--sampler",
        "euler_maruyama", "--steps", "3", "--num", "3", "--out", out)
    x = np.load(out + ".npz")["samples"]
    assert x.shape == (3, 8, 8, 1)
    # The known half is the image (up to the final step's noise-free mean at t = eps).
    np.testing.assert_allclose(x[:, :, :4, 0], np.broadcast_to(digit[:, :4] / 255.0, (3, 8, 4)), atol=0.05)
    grid = np.asarray(Image.open(out + ".png"))
    assert grid.shape[0] == grid.shape[1]  # 3 rows of original | input | output
    assert "need --image" in error_of("sample", "--workdir", workdirs["digits_vp"], "--inpaint", mask)
    assert "No image file" in error_of("sample", "--workdir", workdirs["digits_vp"], "--inpaint", mask, "--image",
                                       str(tmp_path / "missing.png"))
    assert "RGB" in error_of("sample", "--workdir", workdirs["digits_vp"], "--colorize", "--image", image)
    assert "add one of them" in error_of("sample", "--workdir", workdirs["digits_vp"], "--image", image)


def test_upsample_writes_before_after_grid(workdirs, tmp_path):
    """Super-resolution of a 4x4 PNG with the unconditional 8x8 model (average pooling, TMPD).
    (That the output's 2x2 block means are the low-resolution pixels is tests/test_inverse.py's;
    this 2-step model's outputs are clipped to 0 or 1 when saved.)"""
    low = str(tmp_path / "low.png")
    pixels = np.array([[0, 255, 0, 0], [0, 255, 0, 0], [0, 255, 255, 0], [0, 0, 255, 0]], np.uint8)
    Image.fromarray(pixels).save(low)
    out = str(tmp_path / "up")
    run("sample", "--workdir", workdirs["digits_vp"], "--upsample", low, "--impute-method", "tmpd", "--sampler",
        "ddim", "--steps", "3", "--num", "2", "--out", out)
    x = np.load(out + ".npz")["samples"]
    assert x.shape == (2, 8, 8, 1) and np.all(np.isfinite(x))
    grid = np.asarray(Image.open(out + ".png"))
    assert grid.shape == (8 * 19, 8 * 19)  # 2 rows of input | output, 8x8 tiles upscaled 8x, 1-pixel gaps
    np.testing.assert_array_equal(grid[8:72, 8:72], np.kron(pixels, np.ones((16, 16), np.uint8)))  # nearest
    np.testing.assert_array_equal(grid[8:72, 80:144], np.kron((x[0, ..., 0] * 255 + 0.5).astype(np.uint8),
                                                             np.ones((8, 8), np.uint8)))
    Image.fromarray(np.zeros((3, 3), np.uint8)).save(str(tmp_path / "odd.png"))
    assert "3x3; its size must divide the model's 8x8 by one integer factor" in error_of(
        "sample", "--workdir", workdirs["digits_vp"], "--upsample", str(tmp_path / "odd.png"))
    assert "leave out --image" in error_of("sample", "--workdir", workdirs["digits_vp"], "--upsample", low,
                                           "--image", low, "--inpaint", low)
    assert "add --upsample" in error_of("sample", "--workdir", workdirs["digits_vp"], "--sigma-y", "0.1")


def test_ablate_guidance_sweep(workdirs, tmp_path):
    prefix = str(tmp_path / "abl")
    run("ablate", "--workdir", workdirs["digits_vp_class"], "--guidance", "0,2", "--samplers", "ddim", "--nfes", "2",
        "--num", "20", "--out", prefix)
    lines = open(prefix + ".csv").read().splitlines()
    header = lines[0].split(",")
    assert header[0] == "guidance" and "accuracy" in header and "fd_digits" in header
    assert [line.split(",")[0] for line in lines[1:]] == ["0.0", "2.0"]
    assert os.path.exists(prefix + ".png") and "classifier-free guidance" in open(prefix + ".md").read()
    assert "unconditional" in error_of("ablate", "--workdir", workdirs["digits_vp"], "--guidance", "1", "--samplers",
                                       "ddim", "--nfes", "2", "--num", "8", "--out", prefix)


def test_ablate_guidance_sweep_compiles_the_sampler_once(workdirs):
    """`scoresde ablate --guidance 0,1,3` as one library call: from cold caches, the sampler compiles
    once for the three weights (w = 0 once sampled a plain conditional score: a second program)."""
    import jax

    from scoresde import ablation

    compiled = []

    def listener(event, duration_secs, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            compiled.append(kwargs.get("fun_name", "?"))

    jax.clear_caches()
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        result = ablation.ablate_workdir(workdirs["digits_vp_class"], ["ddim"], [2], num=20, guidance=[0.0, 1.0, 3.0])
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert [row["guidance"] for row in result.rows] == [0.0, 1.0, 3.0]
    samplers = [name for name in compiled if "dpm" in name]  # DDIM is DPM-Solver-1: `fast._dpm_loop`
    assert len(samplers) == 1, compiled


def test_condition_config_errors(tmp_path):
    workdir = str(tmp_path / "bad")
    assert "model.num_classes=10" in error_of("train", "--config", "digits_vp", "--workdir", workdir,
                                              "--config.training.condition=class", *TINY)
    assert "context_vocab_size=28" in error_of("train", "--config", "digits_vp", "--workdir", workdir,
                                               "--config.training.condition=spelling", *TINY)
    assert "condition" in error_of("train", "--config", "digits_vp", "--workdir", workdir,
                                   "--config.training.condition=labels", *TINY)
    assert "needs class labels" in error_of("train", "--config", "toy_8gaussians", "--workdir", workdir,
                                            "--config.training.condition=class", "--config.model.num_classes=10", *TINY[:-2])
    saved = json.load(open(os.path.join(workdir, "config.json"))) if os.path.exists(os.path.join(workdir, "config.json")) else None
    assert saved is None  # nothing was written before the error


def test_colorize_writes_before_after_grid(workdirs, tmp_path):
    image = str(tmp_path / "gray.png")
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[1:7, 3:5] = (200, 40, 40)
    Image.fromarray(rgb).save(image)
    out = str(tmp_path / "col")
    run("sample", "--workdir", workdirs["digits_vp_color"], "--colorize", "--image", image, "--sampler", "ddim",
        "--steps", "3", "--num", "2", "--out", out)
    x = np.load(out + ".npz")["samples"]
    # (The grey component is kept exactly before clipping to [0, 1]: tests/test_imputation.py; this
    # 2-step model's colours are far out of range, so the saved images are clipped.)
    assert x.shape == (2, 8, 8, 3) and np.all((0 <= x) & (x <= 1))
    grid = np.asarray(Image.open(out + ".png"))
    assert grid.ndim == 3 and grid.shape[0] < grid.shape[1]  # 2 rows of original | grey input | output
