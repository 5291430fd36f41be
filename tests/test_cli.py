"""The command line end to end on a tiny toy config, and its one-line user errors."""

import json
import os

import numpy as np
import pytest

from scoresde import cli

TINY = [
    "--config.training.n_iters=20",
    "--config.training.batch_size=64",
    "--config.training.snapshot_freq=10",
    "--config.training.snapshot_freq_for_preemption=10",
    "--config.training.log_freq=5",
    "--config.training.eval_freq=5",
    "--config.training.snapshot_sampling=False",
]


def run(*argv):
    cli.main(list(argv))


def error_of(*argv) -> str:
    with pytest.raises(SystemExit) as info:
        cli.main(list(argv))
    message = str(info.value.code)
    # A one-line cause (and its fix), never a traceback; a fix may add indented command lines.
    assert message.startswith("scoresde: error:") and "Traceback" not in message, message
    return message


def test_train_resume_sample_ablate(tmp_path):
    workdir = str(tmp_path / "run")
    run("train", "--config", "toy_8gaussians", "--workdir", workdir, *TINY[:1], "--config.training.n_iters=10", *TINY[1:])
    steps = [json.loads(line)["step"] for line in open(os.path.join(workdir, "metrics.jsonl"))]
    assert max(steps) == 10
    assert os.listdir(os.path.join(workdir, "tensorboard"))
    # Resume the same workdir to a longer run: it continues from step 10, not from 0.
    run("train", "--workdir", workdir, "--config.training.n_iters=20")
    steps = [json.loads(line)["step"] for line in open(os.path.join(workdir, "metrics.jsonl"))]
    assert max(steps) == 20 and steps.count(10) == 1
    out = str(tmp_path / "s")
    run("sample", "--workdir", workdir, "--sampler", "dpm_solver++", "--steps", "5", "--num", "32", "--out", out)
    samples = np.load(out + ".npz")["samples"]
    assert samples.shape == (32, 2) and np.all(np.isfinite(samples))
    assert os.path.exists(out + ".png")
    prefix = str(tmp_path / "abl")
    run("ablate", "--workdir", workdir, "--samplers", "ddim,edm_heun", "--nfes", "5,9", "--num", "64", "--out", prefix)
    for ext in (".csv", ".md", ".png"):
        assert os.path.exists(prefix + ext)
    prefix = str(tmp_path / "target")
    run("ablate", "--target", "8gaussians", "--samplers", "ddim,euler_maruyama", "--nfes", "10", "--num", "256", "--out", prefix)
    assert "fd_modes" in open(prefix + ".md").read()


def test_user_errors_are_one_line(tmp_path):
    assert "No workdir" in error_of("sample", "--workdir", str(tmp_path / "missing"))
    assert "did you mean" in error_of("train", "--config", "digits_vpp", "--workdir", str(tmp_path / "a")).lower()
    assert "batch_size" in error_of(
        "train", "--config", "toy_8gaussians", "--workdir", str(tmp_path / "b"), "--config.training.batchsize=3"
    )
    assert "expected" in error_of(
        "train", "--config", "toy_8gaussians", "--workdir", str(tmp_path / "c"), "--config.training.batch_size=abc"
    )
    assert "No config" in error_of("train", "--workdir", str(tmp_path / "d"))
    assert "unknown sampler" in error_of("ablate", "--target", "8gaussians", "--samplers", "nope")
    assert "unknown target" in error_of("ablate", "--target", "nope")
    # A workdir with a config but no checkpoint yet.
    os.makedirs(tmp_path / "e")
    from scoresde import configs, experiment

    experiment.save_config(str(tmp_path / "e"), configs.get_config("toy_8gaussians"))
    assert "no checkpoint" in error_of("sample", "--workdir", str(tmp_path / "e"))
    # A TFDS data set that is not prepared.
    message = error_of(
        "train", "--config", "vp/cifar10_ddpmpp_continuous", "--workdir", str(tmp_path / "f"),
        "--config.training.batch_size=8",
    )
    assert "tfds build" in message or "prepare" in message.lower()
