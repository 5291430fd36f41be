"""A workdir survives bad resumes, corrupt checkpoints, a second trainer, kills and read-only
use; bad options and inputs get one line before any work (issue: reliability)."""

import contextlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import error_of, run

from scoresde import checkpoints, experiment, train, workdir

TINY = [
    "--config.training.batch_size=64",
    "--config.training.snapshot_freq=10",
    "--config.training.snapshot_freq_for_preemption=5",
    "--config.training.log_freq=5",
    "--config.training.eval_freq=5",
    "--config.training.snapshot_sampling=False",
    "--config.model.hidden=32",
    "--config.model.num_layers=1",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A toy workdir trained for 20 steps: periodic checkpoints 10, 20; preemption 15."""
    path = str(tmp_path_factory.mktemp("rel") / "run")
    run("train", "--config", "toy_8gaussians", "--workdir", path, "--config.training.n_iters=20", *TINY)
    return path


@pytest.fixture
def copy_of(trained, tmp_path):
    path = str(tmp_path / "run")
    shutil.copytree(trained, path)
    return path


def test_resume_refuses_changes_the_checkpoints_cannot_follow(copy_of):
    before = open(workdir.config_path(copy_of)).read()
    message = error_of("train", "--workdir", copy_of, "--config.model.hidden=16")
    assert "model.hidden (32 -> 16)" in message
    # A change of the optimizer's state structure is named alone, not with the harmless n_iters.
    message = error_of("train", "--workdir", copy_of, "--config.optim.weight_decay=0.1", "--config.training.n_iters=30")
    assert "Changing optim.weight_decay when" in message and "n_iters" not in message
    assert open(workdir.config_path(copy_of)).read() == before
    assert [h["event"] for h in workdir.history(copy_of)] == ["start"]


def test_diverging_resume_reverts_config_and_keeps_history(copy_of):
    message = error_of("train", "--workdir", copy_of, "--config.optim.lr=1e12", "--config.optim.warmup=0",
                       "--config.training.n_iters=30")
    assert "Non-finite" in message and "reverted" in message
    config = experiment.load_config(copy_of)
    assert config.optim.lr == 1e-3 and config.training.n_iters == 20
    events = workdir.history(copy_of)
    assert [e["event"] for e in events] == ["start", "resume", "revert"]
    assert events[1]["changes"]["optim.lr"] == [1e-3, 1e12]
    assert events[2]["changes"]["optim.lr"] == [1e12, 1e-3]
    # The run goes on under its old settings.
    run("train", "--workdir", copy_of, "--config.training.n_iters=25", *TINY)
    assert experiment.load_config(copy_of).training.n_iters == 25
    assert workdir.history(copy_of)[-1]["changes"] == {"training.n_iters": [20, 25]}


def _garble_newest(path):
    """Truncate the array files of checkpoint 20 (the newest)."""
    files = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(path, "checkpoints", "20", "state"))
             for f in fs if os.sep + "d" + os.sep in os.path.join(d, f) or d.endswith(os.sep + "d")]
    assert files
    for f in files:
        with open(f, "r+b") as handle:
            handle.truncate(7)


def test_corrupt_newest_checkpoint_falls_back(copy_of, capfd, tmp_path):
    _garble_newest(copy_of)
    capfd.readouterr()
    run("sample", "--workdir", copy_of, "--num", "8", "--sampler", "ddim", "--steps", "2",
        "--out", str(tmp_path / "s"))
    err = capfd.readouterr().err
    assert "Checkpoint 20 (periodic)" in err and "does not restore" in err and "Traceback" not in err
    assert int(np.load(tmp_path / "s.npz")["step"]) == 15  # the preemption checkpoint before it
    # Training resumes from 15 too; the bad checkpoint is moved aside, not deleted, and saved anew.
    with open(os.path.join(copy_of, "metrics.jsonl"), "a") as f:
        f.write('{"step": 20, "loss": 1.0}\n{"step": 2')  # rows past 15 and a torn line (kill -9)
    run("train", "--workdir", copy_of, "--config.training.n_iters=25", *TINY)
    assert os.path.isdir(os.path.join(copy_of, "checkpoints-unreadable", "periodic-20", "state"))
    with checkpoints.CheckpointManager(copy_of, read_only=True) as manager:
        assert manager.all_steps() == [10, 20, 25]
    steps = [json.loads(line)["step"] for line in open(os.path.join(copy_of, "metrics.jsonl"))]
    assert steps == sorted(set(steps)) and max(steps) == 25, steps


def test_no_checkpoint_restores_is_one_line(copy_of):
    for kind, step in (("checkpoints", "10"), ("checkpoints", "20"), ("checkpoints-meta", "15")):
        shutil.rmtree(os.path.join(copy_of, kind, step, "state"))
        os.makedirs(os.path.join(copy_of, kind, step, "state"))
    assert "restores" in error_of("sample", "--workdir", copy_of, "--num", "4")


def test_truncate_metrics(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s}) + "\n" for s in (5, 10, 15, 20)) + '{"step": 2')
    assert train.truncate_metrics(str(path), 10) == 3
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [5, 10]


@pytest.mark.parametrize("text", ["", "{not json"])
def test_unreadable_config_is_one_line(copy_of, text):
    open(workdir.config_path(copy_of), "w").write(text)
    assert "config.json is unreadable" in error_of("sample", "--workdir", copy_of)


HOLD_LOCK = """
import sys, time
from scoresde import workdir
with workdir.Lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(60)
"""


def test_second_trainer_is_refused_and_a_killed_holder_does_not_block(copy_of):
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, copy_of], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        message = error_of("train", "--workdir", copy_of, "--config.training.n_iters=30")
        assert f"in use by PID {holder.pid} (train)" in message
    finally:
        holder.kill()  # SIGKILL: no clean-up of any kind
        holder.wait()
    with workdir.Lock(copy_of):  # the kernel dropped the dead holder's lock
        pass


@contextlib.contextmanager
def read_only(path):
    """Make `path` unwritable, for root too (the immutable flag), or skip where that is impossible."""
    if os.geteuid() == 0:
        if shutil.which("chattr") is None or subprocess.run(["chattr", "-R", "+i", path]).returncode:
            pytest.skip("cannot make a read-only folder for root here (chattr)")
        undo = ["chattr", "-R", "-i", path]
    else:
        subprocess.run(["chmod", "-R", "a-w", path], check=True)
        undo = ["chmod", "-R", "u+w", path]
    try:
        yield
    finally:
        subprocess.run(undo, check=True)


def test_read_only_workdir(copy_of, tmp_path):
    with read_only(copy_of):
        run("sample", "--workdir", copy_of, "--num", "4", "--sampler", "ddim", "--steps", "2",
            "--out", str(tmp_path / "out" / "s"))
        assert os.path.exists(tmp_path / "out" / "s.png")
        # Writing into it is refused before sampling, in one line.
        assert "Cannot write to" in error_of("sample", "--workdir", copy_of, "--num", "4")
        assert "Cannot write to" in error_of("ablate", "--workdir", copy_of, "--samplers", "ddim", "--nfes", "2")
        assert "Cannot write to" in error_of("train", "--workdir", copy_of, "--config.training.n_iters=30")


def test_option_ranges_are_checked_first(copy_of):
    for argv in (["likelihood", "--workdir", copy_of, "--rtol", "-1"], ["likelihood", "--workdir", copy_of, "--atol", "nan"],
                 ["sample", "--workdir", copy_of, "--snr", "nan"], ["sample", "--workdir", copy_of, "--snr", "-1"],
                 ["sample", "--workdir", copy_of, "--seed", "-3"], ["ablate", "--target", "eight_gaussians", "--snrs", "inf"]):
        assert "expected" in error_of(*argv), argv
    assert "at most" in error_of("sample", "--workdir", copy_of, "--num", str(10**13))


def test_data_that_does_not_fit_the_model_writes_nothing(tmp_path):
    np.savez(tmp_path / "rgb.npz", images=np.random.default_rng(0).random((32, 8, 8, 3), dtype=np.float32))
    path = str(tmp_path / "run")
    message = error_of("train", "--config", "digits_vp", "--workdir", path, f"--config.data.dataset={tmp_path}/rgb.npz",
                       "--config.training.batch_size=16")
    assert "(8, 8, 3)" in message and "(8, 8, 1)" in message
    assert not os.path.exists(path)


def test_bad_image_inputs(tmp_path):
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(experiment.UserError, match="not an image"):
        experiment.load_image(str(tmp_path / "notes.png"), (8, 8, 1), 2)
    with pytest.raises(experiment.UserError, match="No image file"):
        experiment.load_image(str(tmp_path), (8, 8, 1), 2)
    from PIL import Image

    Image.fromarray(np.zeros((16, 12), np.uint8)).save(tmp_path / "big.png")
    with contextlib.redirect_stderr(open(tmp_path / "err", "w")):
        assert experiment.load_image(str(tmp_path / "big.png"), (8, 8, 1), 2).shape == (2, 8, 8, 1)
    assert "12x16 resized to the model's 8x8" in (tmp_path / "err").read_text()


def test_a_file_in_the_working_directory_does_not_shadow_a_config(tmp_path, monkeypatch):
    from scoresde import configs

    monkeypatch.chdir(tmp_path)
    (tmp_path / "digits_vp").write_text("raise SystemExit('executed')")
    assert configs.get_config("digits_vp").name == "digits_vp"


def test_lock_message_names_holder(tmp_path):
    with workdir.Lock(str(tmp_path)):
        # flock is per open file: a second Lock in the same process conflicts too.
        with pytest.raises(experiment.UserError, match=f"PID {os.getpid()}"):
            with workdir.Lock(str(tmp_path)):
                pass
