"""The command line end to end on tiny toy and digits configs, and its one-line user errors.

Train / resume / sample / ablate; likelihood (digits: bits/dim needs discrete image data);
Ctrl-C and SIGTERM during `scoresde train` (a subprocess) and the resumption; every user
mistake a one-line `scoresde: error:` message.
"""

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from scoresde import cli

from conftest import error_of, run

TINY = [
    "--config.training.n_iters=20",
    "--config.training.batch_size=64",
    "--config.training.snapshot_freq=10",
    "--config.training.snapshot_freq_for_preemption=10",
    "--config.training.log_freq=5",
    "--config.training.eval_freq=5",
    "--config.training.snapshot_sampling=False",
]


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
    run("ablate", "--workdir", workdir, "--samplers", "ddim,edm_heun", "--nfes", "5,9", "--num", "64", "--out", prefix,
        "--learn-timesteps", "32")
    for ext in (".csv", ".md", ".png"):
        assert os.path.exists(prefix + ext)
    # A learnt grid of the ablation, from its CSV, is a sampler option.
    rows = list(csv.DictReader(open(prefix + ".csv")))
    learnt = [r for r in rows if "learnt" in r["options"]]
    assert [(r["sampler"], r["nfe"]) for r in learnt] == [("ddim", "5"), ("ddim", "9")], rows
    run("sample", "--workdir", workdir, "--sampler", "ddim", "--steps", "5", "--num", "32", "--out", out,
        "--option", "timesteps=" + learnt[0]["timesteps"])
    assert np.all(np.isfinite(np.load(out + ".npz")["samples"]))
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


# ----------------------------------------------------------------------------- likelihood

# Smaller networks than the configs' own: these tests check the plumbing, not the fit.
TINY_MLP = ["--config.model.hidden=32", "--config.model.num_layers=1"]
TINY_UNET = ["--config.model.nf=8", "--config.model.ch_mult=(1,)", "--config.model.num_res_blocks=1"]


def metric_steps(workdir):
    return [json.loads(line)["step"] for line in open(os.path.join(workdir, "metrics.jsonl"))]


def latest_checkpoint(workdir):
    from scoresde import checkpoints

    with checkpoints.CheckpointManager(workdir, async_save=False, read_only=True) as manager:
        return manager.latest()


@pytest.fixture(scope="module")
def toy_workdir(tmp_path_factory):
    """A toy (2-D points) workdir trained for 10 steps."""
    workdir = str(tmp_path_factory.mktemp("toy") / "run")
    run("train", "--config", "toy_8gaussians", "--workdir", workdir, *TINY, "--config.training.n_iters=10", *TINY_MLP)
    return workdir


@pytest.fixture(scope="module")
def digits_workdir(tmp_path_factory):
    """An image (8 x 8 digits) workdir trained for 2 steps: `likelihood` needs discrete image data."""
    workdir = str(tmp_path_factory.mktemp("digits") / "run")
    run("train", "--config", "digits_vp", "--workdir", workdir, *TINY, "--config.training.n_iters=2",
        "--config.training.batch_size=16", *TINY_UNET)
    return workdir


def test_likelihood_writes_report(digits_workdir, capsys):
    capsys.readouterr()
    # 6 examples in batches of 4: the last batch is padded, and the padding dropped.
    run("likelihood", "--workdir", digits_workdir, "--split", "test", "--passes", "2", "--limit", "6",
        "--batch", "4", "--method", "dopri5", "--rtol", "1e-2", "--atol", "1e-2")
    path = os.path.join(digits_workdir, "eval", "bpd_test_step2.json")
    out = capsys.readouterr().out
    assert "test bits/dim:" in out and path in out
    report = json.load(open(path))
    assert set(report) >= {
        "bpd", "bpd_stderr", "bpd_per_pass", "num_examples", "num_passes", "num_bins", "centered",
        "mean_nfe_per_batch", "split", "step", "divergence", "rtol", "atol", "workdir",
    }
    values = [report["bpd"], report["bpd_stderr"], report["mean_nfe_per_batch"], *report["bpd_per_pass"]]
    assert np.all(np.isfinite(values)), report
    assert report["bpd"] > 0 and report["bpd_stderr"] >= 0 and report["mean_nfe_per_batch"] > 0
    assert len(report["bpd_per_pass"]) == report["num_passes"] == 2
    # Every pass has the same examples, so the overall mean is the mean of the passes' means.
    assert report["bpd"] == pytest.approx(np.mean(report["bpd_per_pass"]), rel=1e-5)
    assert report["num_examples"] == 6
    assert report["num_bins"] == 17 and report["centered"] is True  # digits: 17 grey levels, data in [-1, 1]
    assert (report["split"], report["step"], report["divergence"]) == ("test", 2, "rademacher")
    assert (report["rtol"], report["atol"], report["workdir"]) == (1e-2, 1e-2, digits_workdir)


@pytest.fixture
def quick_load(monkeypatch):
    """`experiment.load_score_fn` without building the network (restoring an image model compiles
    its initialization: many seconds): for the tests of what happens around the model."""
    from scoresde import experiment

    def load_score_fn(workdir, step=None):
        config = experiment.load_config(workdir)
        return config, experiment.sde_from_config(config), None, latest_checkpoint(workdir)[0]

    monkeypatch.setattr(experiment, "load_score_fn", load_score_fn)


@pytest.fixture
def seen_by_likelihood(monkeypatch):
    """Stubs out the ODE solves of `likelihood`; records what they were given."""
    from scoresde import likelihood

    seen = {}

    def evaluate_bpd(key, sde, score_fn, images, batch_size, **kwargs):
        seen.update(images=images, batch_size=batch_size, **kwargs)
        return {"bpd": 1.0, "bpd_stderr": 0.0, "bpd_per_pass": [1.0]}

    monkeypatch.setattr(likelihood, "evaluate_bpd", evaluate_bpd)
    return seen


def test_likelihood_splits(digits_workdir, quick_load, seen_by_likelihood):
    """--split picks the examples, whole and in order, as values in [0, 1]; --limit the first N."""
    from scoresde import data

    train_x, _, test_x, _ = data.digits_split(0)
    for split, expected in (("test", test_x), ("train", train_x)):
        run("likelihood", "--workdir", digits_workdir, "--split", split, "--batch", "64", "--passes", "3")
        np.testing.assert_allclose(seen_by_likelihood["images"], expected, atol=1e-6)
        assert seen_by_likelihood["batch_size"] == 64 and seen_by_likelihood["num_passes"] == 3
        assert seen_by_likelihood["num_bins"] == 17 and seen_by_likelihood["centered"] is True
        assert os.path.exists(os.path.join(digits_workdir, "eval", f"bpd_{split}_step2.json"))
    run("likelihood", "--workdir", digits_workdir, "--limit", "5")
    np.testing.assert_allclose(seen_by_likelihood["images"], test_x[:5], atol=1e-6)
    assert seen_by_likelihood["batch_size"] == 5  # the batch shrinks to the examples there are


@pytest.mark.parametrize(
    "bad",
    [["--split", "tset"], ["--limit", "0"], ["--limit", "-3"], ["--passes", "0"], ["--batch", "0"],
     ["--passes", "two"], ["--divergence", "rademachr"]],
    ids=lambda b: b[0] + "=" + b[1],
)
def test_likelihood_bad_arguments_are_user_errors(digits_workdir, quick_load, seen_by_likelihood, bad):
    # Unchecked, --split tset evaluated the test split (into bpd_tset_*.json), --limit 0 divided
    # by zero in evaluate_bpd, a negative --limit dropped examples and --passes 0 wrote NaNs.
    message = error_of("likelihood", "--workdir", digits_workdir, *bad)
    assert f"argument {bad[0]}:" in message and repr(bad[1]) in message, message
    assert "images" not in seen_by_likelihood


def test_likelihood_exponential_integrator(digits_workdir, capsys):
    """--method dpm_solver_2m --steps 12: 13 evaluations per batch, the setting in the report."""
    out = os.path.join(digits_workdir, "eval", "bpd_dpm.json")
    run("likelihood", "--workdir", digits_workdir, "--limit", "4", "--passes", "1", "--method", "dpm_solver_2m",
        "--steps", "12", "--out", out)
    report = json.load(open(out))
    assert (report["method"], report["num_steps"], report["mean_nfe_per_batch"]) == ("dpm_solver_2m", 12, 13.0)
    assert (report["rtol"], report["time_variable"]) == (None, None)
    assert np.isfinite(report["bpd"]) and report["bpd"] > 0


def test_likelihood_default_settings(digits_workdir, quick_load, seen_by_likelihood):
    """Without options: DPM-Solver-3M with 256 steps; an adaptive --method: rtol = atol = 1e-5 in
    sigma with the max norm; the other method family's options are one-line errors."""
    from scoresde import likelihood

    run("likelihood", "--workdir", digits_workdir, "--limit", "4")
    assert {k: seen_by_likelihood[k] for k in ("method", "num_steps")} == dict(
        method=likelihood.REPORT_METHOD, num_steps=likelihood.REPORT_STEPS) == dict(method="dpm_solver_3m", num_steps=256)
    assert all(k not in seen_by_likelihood for k in ("rtol", "atol", "time_variable", "error_norm"))
    run("likelihood", "--workdir", digits_workdir, "--limit", "4", "--method", "bosh3", "--atol", "1e-3")
    assert {k: seen_by_likelihood[k] for k in ("method", "rtol", "atol", "time_variable", "error_norm")} == dict(
        method="bosh3", rtol=1e-5, atol=1e-3, time_variable="sigma", error_norm="max")
    for bad, message in [(["--rtol", "1e-3"], "rtol set an adaptive method's solve"),
                         (["--method", "dpm_solver_2m", "--time-variable", "t", "--error-norm", "rms"],
                          "time_variable, error_norm set an adaptive"),
                         (["--method", "dopri5", "--steps", "8"], "A number of steps goes with the fixed-step")]:
        assert message in error_of("likelihood", "--workdir", digits_workdir, *bad)


def test_likelihood_choices_are_the_libraries():
    from scoresde import likelihood
    from scoresde.samplers import ode

    assert cli.DIVERGENCES == likelihood.DIVERGENCES
    assert cli.ADAPTIVE_METHODS == tuple(name for name, spec in ode.METHODS.items() if spec.adaptive)
    assert cli.TIME_VARIABLES == ode.TIME_VARIABLES and cli.ERROR_NORMS == tuple(ode.ERROR_NORMS)
    assert cli.EXPONENTIAL_METHODS == tuple(likelihood.EXPONENTIAL_METHODS)


def test_likelihood_of_one_example_writes_strict_json(digits_workdir, quick_load, monkeypatch, capsys):
    """One example has no standard error: the report says null (JSON has no NaN), not NaN."""
    from scoresde import likelihood

    monkeypatch.setattr(likelihood, "evaluate_bpd", lambda *a, **k: {
        "bpd": 1.5, "bpd_stderr": float("nan"), "bpd_per_pass": [1.5], "num_examples": 1})
    capsys.readouterr()
    run("likelihood", "--workdir", digits_workdir, "--limit", "1", "--split", "train")
    path = os.path.join(digits_workdir, "eval", "bpd_train_step2.json")

    def no_constants(name):
        raise AssertionError(f"{path} holds {name}: not JSON")

    report = json.load(open(path), parse_constant=no_constants)
    assert report["bpd_stderr"] is None and report["bpd"] == 1.5
    assert "train bits/dim: 1.5000 (one example: no standard error)" in capsys.readouterr().out


def test_likelihood_user_errors(toy_workdir, digits_workdir, tmp_path, quick_load):
    # 2-D toy points have no bits/dim (and no image metrics).
    assert "2-D points" in error_of("likelihood", "--workdir", toy_workdir)
    assert "2-D points" in error_of("evaluate", "--workdir", toy_workdir)
    os.makedirs(tmp_path / "not_a_workdir")
    assert "no config.json" in error_of("likelihood", "--workdir", str(tmp_path / "not_a_workdir"))
    # A workdir whose data set has gone missing: the data error, not a traceback.
    workdir = str(tmp_path / "moved")
    shutil.copytree(digits_workdir, workdir)
    config = json.load(open(os.path.join(workdir, "config.json")))
    config["data"]["dataset"] = str(tmp_path / "gone.npz")
    json.dump(config, open(os.path.join(workdir, "config.json"), "w"))
    assert "No such file" in error_of("likelihood", "--workdir", workdir, "--split", "test")


# ----------------------------------------------------------------------------- interrupt and resume


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=lambda s: s.name)
def test_interrupted_train_saves_and_resumes(tmp_path, capsys, sig):
    """Ctrl-C or a preemption (SIGTERM) stops `scoresde train` with a checkpoint; train resumes it."""
    workdir = str(tmp_path / "run")
    far = "--config.training.{}=1000000"
    cmd = [
        sys.executable, "-m", "scoresde", "train", "--config", "toy_8gaussians", "--workdir", workdir,
        *TINY, *TINY_MLP, far.format("n_iters"), far.format("snapshot_freq"), far.format("snapshot_freq_for_preemption"),
    ]
    # Output to files, not pipes: nobody reads a pipe while it runs (tqdm writes to stderr).
    with open(tmp_path / "out", "w") as out, open(tmp_path / "err", "w") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, cwd=tmp_path)
        try:
            metrics = os.path.join(workdir, "metrics.jsonl")
            deadline = time.monotonic() + 60
            while not (os.path.exists(metrics) and os.path.getsize(metrics)):  # training has begun
                assert proc.poll() is None, f"train exited early:\n{open(tmp_path / 'err').read()[-2000:]}"
                assert time.monotonic() < deadline, "no training progress within 60 s"
                time.sleep(0.1)
            proc.send_signal(sig)
            start = time.monotonic()
            rc = proc.wait(timeout=30)
            stopped_in = time.monotonic() - start
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    stdout, stderr = open(tmp_path / "out").read(), open(tmp_path / "err").read()
    # A stop on request: not a crash (1) nor a death by the signal (-sig), nor a success (0, so
    # that scripts can tell a finished run from a stopped one), but the shell's 128 + signal.
    assert rc == 128 + sig, (rc, stdout, stderr[-2000:])
    assert stopped_in < 15, stopped_in
    assert "Traceback" not in stderr, stderr[-2000:]
    lines = [line for line in stdout.splitlines() if line.startswith(f"Stopped by {sig.name} at step ")]
    assert len(lines) == 1, stdout
    stopped_at = int(lines[0].split(" at step ")[1].split(";")[0])
    assert f"checkpoint saved in {workdir}" in lines[0]
    assert stopped_at >= 5  # metrics.jsonl had its first record (log_freq=5)
    assert f"Stopped at step {stopped_at}; resume with: scoresde train --workdir {workdir}\n" in stderr, stderr[-2000:]
    assert latest_checkpoint(workdir) == (stopped_at, "meta")  # the preemption checkpoint, and no other
    before = metric_steps(workdir)
    assert before and max(before) <= stopped_at

    # Resume (no --config: the workdir's config.json), to a few steps past the stop.
    capsys.readouterr()
    run("train", "--workdir", workdir, f"--config.training.n_iters={stopped_at + 7}")
    assert capsys.readouterr().out.startswith(f"Resuming {workdir}")
    steps = metric_steps(workdir)
    after = steps[len(before):]
    # It went on from the stop, not from 0: no step logged twice, the first new one right after the stop.
    assert steps == sorted(set(steps)), steps
    assert after and stopped_at < after[0] <= stopped_at + 5 and after[-1] == stopped_at + 7
    assert latest_checkpoint(workdir) == (stopped_at + 7, "periodic")


# ----------------------------------------------------------------------------- more user errors


@pytest.mark.parametrize(
    "argv, expected",
    [
        # Bad overrides: a misplaced key gets the right one, a bad value its valid choices or type.
        (["--config.training.lr=1e-3"], "did you mean optim.lr?"),
        (["--config.trainig.n_iters=3"], "did you mean training.n_iters?"),
        (["--config.training.n_iters.x=3"], "not a section"),
        (["--config.training.sde=vpsd"], "did you mean 'vpsde'?"),
        (["--config.training.snapshot_sampling=maybe"], "expected bool"),
        (["--config.model.hidden=3.5"], "expected int"),
        (["--config.training.n_iters=None"], "cannot be None"),
        # Values the types allow but training does not.
        (["--config.training.n_iters=0"], "n_iters must be positive"),
        (["--config.training.log_freq=0"], "log_freq=0 must be a positive multiple"),
        (["--config.training.n_jitted_steps=2", "--config.training.log_freq=5"], "log_freq=5 must be a positive multiple"),
        (["--config.training.n_jitted_steps=0"], "n_jitted_steps must be >= 1"),
        (["--config.training.p_uncond=2.0"], "p_uncond must be in [0, 1]"),
        (["--config.model.beta_min=30.0"], "beta_min must be < beta_max"),
        (["--config.model.nonlinearity=nope"], "Unknown nonlinearity 'nope'"),
        # Data that is not there.
        (["--config.data.dataset=/nonexistent/images.npz"], "No such file: /nonexistent/images.npz"),
        (["--config.data.dataset=/nonexistent/folder/"], "Unknown data set '/nonexistent/folder/'"),
    ],
    ids=lambda v: v[0] if isinstance(v, list) else None,
)
def test_train_config_errors(tmp_path, argv, expected):
    message = error_of("train", "--config", "toy_8gaussians", "--workdir", str(tmp_path / "w"), *argv)
    assert expected in message, message
    # Checked before anything is written: no config.json of a run that cannot train.
    assert not os.path.exists(tmp_path / "w" / "config.json")


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--config", "toy_8gaussians", "--config.training.n_iters"], "key=value"),
        (["--config", "toy_8gaussians", "--config.training=3"], "is a section"),
        (["--config", "cifar10_ncsnpp_continuous"], "ambiguous"),
        (["--config", "no/such/config.py"], "No such config file"),
    ],
    ids=["override-without-value", "override-of-a-section", "ambiguous-config-name", "missing-config-file"],
)
def test_user_value_errors_without_keywords(tmp_path, argv, expected):
    # configs raises these ValueErrors for the user; the CLI converts every ValueError of
    # configs.get_config / apply_overrides (it once guessed from keywords in the message).
    assert expected in error_of("train", "--workdir", str(tmp_path / "w"), *argv)
    assert expected in error_of("fid-stats", "--out", str(tmp_path / "s.npz"), *argv)
    assert not os.path.exists(tmp_path / "w")


def test_other_value_errors_keep_their_traceback(toy_workdir, monkeypatch):
    """A ValueError the CLI did not convert is a bug: it is raised, whatever its wording."""
    from scoresde import experiment

    def broken(*args, **kwargs):
        raise ValueError("operands must be valid: unknown shapes")

    monkeypatch.setattr(experiment, "load_score_fn", broken)
    with pytest.raises(ValueError, match="operands must be valid"):
        cli.main(["sample", "--workdir", toy_workdir])


def test_command_line_errors(tmp_path):
    # Config names (an unknown one is in test_user_errors_are_one_line).
    assert "Unknown config 'nope'" in error_of("fid-stats", "--config", "nope", "--out", str(tmp_path / "s.npz"))
    # Overrides belong to train and fid-stats.
    assert "apply to train and fid-stats only" in error_of(
        "sample", "--workdir", str(tmp_path / "a"), "--config.training.n_iters=3"
    )
    # Missing arguments, unknown commands (argparse, through the same one-line format).
    assert "--workdir" in error_of("train", "--config", "toy_8gaussians")
    assert "invalid choice: 'trian'" in error_of("trian")
    # Every command that reads a workdir says when there is none.
    for command in ("sample", "evaluate", "likelihood", "ablate"):
        assert "No workdir" in error_of(command, "--workdir", str(tmp_path / "missing"))


def test_top_level_error_names_the_right_help():
    message = error_of("trian")
    assert "scoresde scoresde" not in message and message.endswith("(see scoresde --help)"), message
    assert error_of("sample", "--nope").endswith("(see scoresde sample --help)")


@pytest.mark.parametrize(
    "argv, option",
    [
        (["sample", "--workdir", "w", "--num", "0"], "--num"),
        (["sample", "--workdir", "w", "--steps", "-1"], "--steps"),
        (["evaluate", "--workdir", "w", "--chunk", "0"], "--chunk"),
        (["evaluate", "--workdir", "w", "--num", "x"], "--num"),
        (["ablate", "--target", "8gaussians", "--nfes", "10,x"], "--nfes"),
        (["ablate", "--target", "8gaussians", "--nfes", "10,0"], "--nfes"),
        (["ablate", "--target", "8gaussians", "--nfes", ","], "--nfes"),
        (["ablate", "--target", "8gaussians", "--snrs", "0.1,high"], "--snrs"),
        (["ablate", "--target", "8gaussians", "--num", "0"], "--num"),
        (["ablate", "--workdir", "w", "--guidance", "1,strong"], "--guidance"),
        (["fid-stats", "--config", "digits_vp", "--out", "s.npz", "--split", "tset"], "--split"),
    ],
    ids=lambda v: " ".join(v[-2:]) if isinstance(v, list) else None,
)
def test_bad_numbers_name_their_option(argv, option):
    """Checked while parsing, before any work: the message names the option and the value."""
    message = error_of(*argv)
    assert f"argument {option}:" in message and repr(argv[-1]) in message, message


def test_workdir_errors(toy_workdir, tmp_path):
    # A workdir of another config (toy_workdir was trained with a smaller MLP than the config's).
    message = error_of("train", "--config", "toy_moons", "--workdir", toy_workdir)
    assert "holds a run of another config" in message and "omit --config" in message
    assert "holds a run of another config" in error_of("train", "--config", "toy_8gaussians", "--workdir", toy_workdir)
    # A workdir with a config but no checkpoint (a run that failed before its first save).
    workdir = str(tmp_path / "fresh")
    os.makedirs(workdir)
    shutil.copy(os.path.join(toy_workdir, "config.json"), workdir)
    for argv in (["sample"], ["likelihood"], ["evaluate"], ["ablate"]):
        assert "has no checkpoint yet" in error_of(*argv, "--workdir", workdir)


def test_load_ema_params_restores_the_saved_state(toy_workdir):
    """load_ema_params restores onto an abstract target (shapes, dtypes and shardings, nothing
    computed or compiled): the same arrays as a restore onto a real initial state."""
    import jax

    from scoresde import checkpoints, experiment, train

    config = experiment.load_config(toy_workdir)
    sde, model, kwargs = experiment.sde_from_config(config), experiment.model_from_config(config), experiment.train_kwargs(config)
    target = train.init_train_state(model, sde, jax.random.PRNGKey(0), experiment.data_shape(config),
                                    kwargs["optimizer"], config.training.continuous)
    abstract = experiment.abstract_train_state(config)
    assert jax.tree.structure(abstract) == jax.tree.structure(target)
    for a, t in zip(jax.tree.leaves(abstract), jax.tree.leaves(target)):
        assert isinstance(a, jax.ShapeDtypeStruct) and (a.shape, a.dtype, a.sharding) == (t.shape, t.dtype, t.sharding)
    saved = checkpoints.restore_state(toy_workdir, target)
    params, step = experiment.load_ema_params(toy_workdir, config)
    assert step == int(saved.step) == latest_checkpoint(toy_workdir)[0] == 10
    assert jax.tree.structure(params) == jax.tree.structure(saved.ema_params)
    for p, q in zip(jax.tree.leaves(params), jax.tree.leaves(saved.ema_params)):
        assert p.dtype == q.dtype and p.sharding == q.sharding
        np.testing.assert_array_equal(np.asarray(p), np.asarray(q))


def test_sampler_errors(toy_workdir, tmp_path, quick_load):
    out = ["--out", str(tmp_path / "s")]
    message = error_of("sample", "--workdir", toy_workdir, "--sampler", "nope", *out)
    assert "unknown sampler 'nope'" in message.lower() and "dpm_solver++" in message  # with the valid names
    assert "--option takes KEY=VALUE" in error_of("sample", "--workdir", toy_workdir, "--option", "snr", *out)
    message = error_of("sample", "--workdir", toy_workdir, "--sampler", "ddim", "--option", "snr=0.1", *out)
    assert "sampler 'ddim' has no option(s) snr" in message.lower() and "num_steps" in message
    assert "num_steps" in error_of("sample", "--workdir", toy_workdir, "--sampler", "ddim", "--steps", "0", *out)
    message = error_of("sample", "--workdir", toy_workdir, "--snr", "nan", *out)
    assert "--snr: expected a finite number >= 0, got 'nan'" in message
    assert "unknown sampler 'nope'" in error_of("ablate", "--workdir", toy_workdir, "--samplers", "ddim,nope").lower()
    assert not os.listdir(tmp_path)  # nothing written


def test_data_not_prepared_from_the_shell(tmp_path):
    """The real command line: exit status 1, the cause and the fix on stderr, no traceback."""
    empty = tmp_path / "tfds"
    empty.mkdir()
    env = {**os.environ, "TFDS_DATA_DIR": str(empty)}
    workdir = str(tmp_path / "w")
    proc = subprocess.run(
        [sys.executable, "-m", "scoresde", "train", "--config", "toy_8gaussians", "--workdir", workdir,
         "--config.data.dataset=mnist"],
        capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path,
    )
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith("scoresde: error: The TFDS data set 'mnist' (split 'train') is not available")
    assert str(empty) in proc.stderr and "tfds build mnist --file_format=array_record" in proc.stderr
    assert not os.path.exists(os.path.join(workdir, "checkpoints"))


# ----------------------------------------------------------------------------- the config's sampler, TensorBoard, evaluate


@pytest.fixture(scope="module")
def snapshot_workdir(tmp_path_factory):
    """A digits workdir (centered data) trained for 2 steps with a sample snapshot at step 2 from
    the config's sampler, set to dpm_solver++; and what training printed."""
    import contextlib
    import io

    workdir = str(tmp_path_factory.mktemp("snapshots") / "run")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        run("train", "--config", "digits_vp", "--workdir", workdir, *TINY, "--config.training.n_iters=2",
            "--config.training.batch_size=16", "--config.training.snapshot_freq=2",
            "--config.training.snapshot_sampling=True", "--config.sampling.method=dpm_solver++", *TINY_UNET)
    return workdir, printed.getvalue()


def test_config_sampling_method_is_the_sampler_used(snapshot_workdir, tmp_path, capsys):
    """sampling.method names any sampler of the registry, and that sampler samples: the training
    snapshots, and sample and evaluate without --sampler (dpm_solver++ once passed validation and
    sampled with PC: NFE 1000)."""
    from scoresde.samplers import registry

    workdir, printed = snapshot_workdir
    nfe = registry.get_sampler("dpm_solver++").nfe(registry.sampler_options("dpm_solver++")["num_steps"])
    assert nfe == 20 and f"samples at step 2 (dpm_solver++, NFE {nfe}):" in printed, printed
    out = str(tmp_path / "s")
    run("sample", "--workdir", workdir, "--num", "4", "--out", out)
    saved = np.load(out + ".npz")
    assert (str(saved["sampler"]), int(saved["nfe"])) == ("dpm_solver++", nfe)
    capsys.readouterr()
    run("evaluate", "--workdir", workdir, "--num", "4", "--chunk", "4")
    report = json.load(open(capsys.readouterr().out.rsplit("wrote ", 1)[1].strip()))
    assert report["sampler"] == "dpm_solver++" and report["num_samples"] == 4


def tensorboard_images(logdir):
    """{(tag, step): image array} of the image summaries in the event files of logdir."""
    import glob
    import io
    import struct

    from PIL import Image
    from tensorboardX.proto import event_pb2

    images = {}
    for path in glob.glob(os.path.join(logdir, "events.out.tfevents.*")):
        raw, i = open(path, "rb").read(), 0
        while i < len(raw):  # TFRecords: length (u64), its crc (u32), data, the data's crc (u32)
            (n,) = struct.unpack("<Q", raw[i : i + 8])
            event = event_pb2.Event.FromString(raw[i + 12 : i + 12 + n])
            i += 16 + n
            for value in event.summary.value:
                if value.HasField("image"):
                    images[value.tag, event.step] = np.asarray(Image.open(io.BytesIO(value.image.encoded_image_string)))
    return images


def test_tensorboard_samples_are_the_png_grid(snapshot_workdir):
    """The TensorBoard image of the training samples shows what the PNG shows (for centered data
    it was converted to [0, 1] twice, so that every pixel lay in [0.5, 1])."""
    from PIL import Image

    workdir, _ = snapshot_workdir
    png = np.asarray(Image.open(os.path.join(workdir, "samples", "step_00000002.png")))
    image = tensorboard_images(os.path.join(workdir, "tensorboard"))["samples", 2]
    assert image.ndim == 3 and np.all(image == image[..., :1])  # grey, stored as RGB
    upscale = png.shape[0] // image.shape[0]  # the PNG grid is upscaled to be visible
    assert png.shape == (image.shape[0] * upscale, image.shape[1] * upscale)
    np.testing.assert_array_equal(image[..., 0], png[::upscale, ::upscale])
    assert image.min() < 127  # not the [0.5, 1] of the double conversion (a 2-step model's samples are noise)


def test_evaluate_cache_is_keyed_by_its_settings(digits_workdir, monkeypatch, capsys):
    """evaluate keeps its sample chunks for a rerun only with the settings that made them: another
    --steps or --seed samples afresh (a rerun once reused the chunks and reported their metrics
    under the new options), and the same settings reuse them."""
    from scoresde.samplers import registry

    calls, sample = [], registry.sample

    def spy(key, sde, score_fn, shape, name, **options):
        calls.append(options)
        return sample(key, sde, score_fn, shape, name, **options)

    def evaluate(*argv):
        capsys.readouterr()
        run("evaluate", "--workdir", digits_workdir, "--num", "8", "--chunk", "8", "--sampler", "ddim", *argv)
        path = capsys.readouterr().out.rsplit("wrote ", 1)[1].strip()
        return path, json.load(open(path)), np.load(os.path.join(os.path.dirname(path), "chunk_00000.npz"))["samples"]

    monkeypatch.setattr(registry, "sample", spy)
    path1, first, x1 = evaluate("--steps", "1")
    path2, steps, _ = evaluate("--steps", "2")
    path3, seed, x3 = evaluate("--steps", "1", "--seed", "1")
    assert calls == [{"num_steps": 1}, {"num_steps": 2}, {"num_steps": 1}]  # each sampled its own chunk
    assert len({path1, path2, path3}) == 3
    assert (first["options"], steps["options"], seed["options"]) == ({"num_steps": 1}, {"num_steps": 2}, {"num_steps": 1})
    assert (first["seed"], steps["seed"], seed["seed"]) == (0, 0, 1)
    assert not np.array_equal(x1, x3) and seed["fd"] != first["fd"]
    # The first settings again: their chunk, nothing sampled, the same report.
    path4, again, x4 = evaluate("--steps", "1")
    assert len(calls) == 3 and path4 == path1 and again == first and np.array_equal(x4, x1)


# ----------------------------------------------------------------------------- jemalloc for the command line


def test_jemalloc_env_decisions(tmp_path):
    """The re-run's environment: jemalloc preloaded from the first existing candidate, told to
    keep freed memory unless MALLOC_CONF says otherwise; nothing without a library or where
    LD_PRELOAD is set (the re-run itself, or a user's choice)."""
    lib = tmp_path / "libjemalloc.so.2"
    lib.write_bytes(b"")
    missing = str(tmp_path / "missing.so")
    base = {"PATH": "/bin"}
    env = cli.jemalloc_env(base, (missing, str(lib)))
    assert env == {"PATH": "/bin", "LD_PRELOAD": str(lib), "MALLOC_CONF": cli.JEMALLOC_CONF}
    assert base == {"PATH": "/bin"}
    assert cli.jemalloc_env({"MALLOC_CONF": "narenas:2"}, (str(lib),))["MALLOC_CONF"] == "narenas:2"
    assert cli.jemalloc_env({"LD_PRELOAD": ""}, (str(lib),)) is None
    assert cli.jemalloc_env({"LD_PRELOAD": "/x/libtcmalloc.so"}, (str(lib),)) is None
    assert cli.jemalloc_env(base, (missing,)) is None
    assert cli.jemalloc_env(base, (str(tmp_path),)) is None  # a folder is not a library


def test_only_the_entry_points_rerun(tmp_path, monkeypatch):
    """`main(argv)` from Python never re-executes (it would rerun the caller's program); the
    entry points do, for every command but `configs`; a failed execve carries on."""
    lib = tmp_path / "libjemalloc.so.2"
    lib.write_bytes(b"")
    monkeypatch.setattr(cli, "JEMALLOC_PATHS", (str(lib),))
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    monkeypatch.setattr(sys, "platform", "linux")
    calls = []

    def execve(path, args, env):
        calls.append(env["LD_PRELOAD"])
        raise OSError("refused")

    monkeypatch.setattr(cli.os, "execve", execve)
    missing = ["sample", "--workdir", str(tmp_path / "missing")]
    for kwargs in ({}, {"rerun_under_jemalloc": False}):
        with pytest.raises(SystemExit):
            cli.main(missing, **kwargs)
    cli.main(["configs"], rerun_under_jemalloc=True)
    assert calls == []
    with pytest.raises(SystemExit, match="scoresde: error"):  # the command still runs after the refusal
        cli.main(missing, rerun_under_jemalloc=True)
    assert calls == [str(lib)]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="LD_PRELOAD and execve: Linux")
def test_rerun_with_jemalloc_reexecutes_the_same_process():
    """The same pid and arguments, now with the library preloaded; the re-run does not re-run.
    A harmless stand-in for jemalloc: the C library this Python has mapped already."""
    with open("/proc/self/maps") as f:
        libc = next((line.split()[-1] for line in f if "/libc.so" in line or "/libc-" in line), None)
    if libc is None:
        pytest.skip("no glibc mapped (another C library)")
    environ = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "MALLOC_CONF")}
    code = ("import os, sys; print('start', flush=True); from scoresde import cli; "
            f"cli.rerun_with_jemalloc(({libc!r},)); "
            "print(os.getpid(), os.environ['LD_PRELOAD'], os.environ['MALLOC_CONF'], sys.argv[1:])")
    proc = subprocess.Popen([sys.executable, "-c", code, "a b", "c"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=environ)
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert out.splitlines() == ["start", "start", f"{proc.pid} {libc} {cli.JEMALLOC_CONF} ['a b', 'c']"]
    assert "ld.so" not in err, err
