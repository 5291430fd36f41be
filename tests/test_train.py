"""Training: the optimizer against the reference's update rule, the compiled step
(scan, 8 devices vs 1), the schedule, the checkpoint policy and the non-finite guard on
their own, exact resumption, signals, kill -9 during a save, NaN stops."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scoresde import checkpoints, sde_lib, train
from scoresde.data import get_dataset

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class TinyScore(nn.Module):
    """A two-layer MLP on flattened inputs, with dropout, conditioned on log(1 + label)."""

    hidden: int = 32

    @nn.compact
    def __call__(self, x, labels, train=False):
        h = x.reshape((x.shape[0], -1))
        h = jnp.concatenate([h, jnp.log1p(jnp.asarray(labels, jnp.float32))[:, None]], -1)
        h = nn.silu(nn.Dense(self.hidden)(h))
        h = nn.Dropout(0.1, deterministic=not train)(h)
        return nn.Dense(x[0].size)(h).reshape(x.shape)


def _env():
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["PYTHONPATH"] = REPO + os.pathsep + os.path.join(REPO, "tests") + os.pathsep + env.get("PYTHONPATH", "")
    return env


# ----------------------------------------------------------------------------- optimizer


def _reference_updates(params, grads_fn, steps, lr, warmup, grad_clip, beta1, eps, ema_rate, beta2=0.999):
    """The reference's optimize_fn + flax Adam + EMA, in NumPy float64."""
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    ema = {k: v.copy() for k, v in p.items()}
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v2 = {k: np.zeros_like(v) for k, v in p.items()}
    for step in range(steps):
        g = grads_fn(p, step)
        lr_t = lr * min(step / warmup, 1.0)
        norm = np.sqrt(sum(np.sum(x**2) for x in g.values()))
        g = {k: x * grad_clip / max(norm, grad_clip) for k, x in g.items()}
        for k in p:
            m[k] = beta1 * m[k] + (1 - beta1) * g[k]
            v2[k] = beta2 * v2[k] + (1 - beta2) * g[k] ** 2
            m_hat, v_hat = m[k] / (1 - beta1 ** (step + 1)), v2[k] / (1 - beta2 ** (step + 1))
            p[k] = p[k] - lr_t * m_hat / (np.sqrt(v_hat) + eps)
            ema[k] = ema[k] * ema_rate + p[k] * (1 - ema_rate)
    return p, ema


def test_optimizer_and_ema_match_reference_update_rule():
    targets = {"a": np.linspace(-3, 3, 5), "b": np.array([[2.0, -1.0], [0.5, 4.0]])}

    def loss_fn(params, key, batch):  # gradient 2 * batch * (p - target): large, so it gets clipped
        return sum(jnp.sum(batch * (params[k] - targets[k]) ** 2) for k in params)

    def grads_fn(p, step):
        return {k: 2 * (step + 1.0) * (p[k] - targets[k]) for k in p}

    params = {"a": jnp.zeros(5), "b": jnp.ones((2, 2))}
    kw = dict(lr=0.1, warmup=3, grad_clip=1.0, beta1=0.9, eps=1e-8)
    opt = train.get_optimizer(kw["lr"], kw["warmup"], kw["grad_clip"], kw["beta1"], kw["eps"])
    state = train.TrainState(jnp.zeros((), jnp.int32), params, params, opt.init(params), jax.random.PRNGKey(0))
    step_fn = jax.jit(train.make_train_step(loss_fn, opt, ema_rate=0.9))
    for step in range(6):
        state, metrics = step_fn(state, jnp.asarray(step + 1.0))
    ref_p, ref_ema = _reference_updates(params, grads_fn, 6, ema_rate=0.9, **kw)
    for k in params:
        np.testing.assert_allclose(state.params[k], ref_p[k], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(state.ema_params[k], ref_ema[k], rtol=1e-5, atol=1e-6)
    assert int(state.step) == 6
    # The first update has learning rate 0 (lr * min(0 / warmup, 1)), as the reference.
    np.testing.assert_allclose(float(train.learning_rate_schedule(0.1, 3)(0)), 0.0)
    np.testing.assert_allclose(float(train.learning_rate_schedule(0.1, 3)(10)), 0.1)


def test_grad_clip_negative_disables_clipping():
    params = {"w": jnp.ones(3)}
    opt = train.get_optimizer(lr=1.0, warmup=0, grad_clip=-1.0)
    updates, _ = opt.update({"w": jnp.full(3, 100.0)}, opt.init(params), params)
    # Adam's first step is lr * sign(g) whatever the norm; check the chain has no clipping
    # by comparing with a clipped optimizer's internal state (the moments see raw grads).
    _, st_noclip = opt.update({"w": jnp.full(3, 100.0)}, opt.init(params), params)
    clip = train.get_optimizer(lr=1.0, warmup=0, grad_clip=1.0)
    _, st_clip = clip.update({"w": jnp.full(3, 100.0)}, clip.init(params), params)
    mu = lambda st: [x for x in jax.tree.leaves(st) if getattr(x, "shape", ()) == (3,)][0]  # noqa: E731
    np.testing.assert_allclose(mu(st_noclip), 10.0, rtol=1e-6)  # (1 - 0.9) * 100
    np.testing.assert_allclose(mu(st_clip), 0.1 / np.sqrt(3), rtol=1e-5)  # clipped to unit norm
    np.testing.assert_allclose(updates["w"], -1.0, rtol=1e-5)


def test_n_jitted_steps_scan_equals_single_steps():
    sde = sde_lib.VPSDE()
    model = TinyScore()
    opt = train.get_optimizer(lr=1e-3, warmup=2)
    from scoresde import losses

    step_fn = train.make_train_step(losses.get_loss_fn(sde, model, train=True), opt, ema_rate=0.99)
    batches = np.random.default_rng(0).uniform(-1, 1, (3, 8, 4, 4, 1)).astype(np.float32)

    init = train.init_train_state(model, sde, jax.random.PRNGKey(1), (4, 4, 1), opt)

    def fresh():  # a copy: the compiled steps donate (delete) the state they are given
        return jax.tree.map(jnp.copy, init)

    one = train.compile_step(step_fn, 1)
    s1, losses1 = fresh(), []
    for b in batches:
        s1, m = one(s1, train.put_batch(b))
        losses1.append(float(m["loss"]))
    three = train.compile_step(step_fn, 3)
    s3, m3 = three(fresh(), train.put_batch(batches, stacked=True))
    np.testing.assert_allclose(np.asarray(m3["loss"]), losses1, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(s1), jax.tree.leaves(s3)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------- 8 devices vs 1

DEVICE_SCRIPT = textwrap.dedent(
    """
    import sys, numpy as np, jax, jax.numpy as jnp
    from test_train import TinyScore
    from scoresde import losses, sde_lib, train, parallel
    n = jax.device_count()
    sde = sde_lib.VESDE()
    model = TinyScore()
    opt = train.get_optimizer(lr=1e-2, warmup=0)
    state = train.init_train_state(model, sde, jax.random.PRNGKey(0), (4, 4, 1), opt)
    batch = np.random.default_rng(0).uniform(-1, 1, (16, 4, 4, 1)).astype(np.float32)
    x = train.put_batch(batch)
    assert len(x.sharding.device_set) == n and x.addressable_shards[0].data.shape[0] == 16 // n
    loss_fn = losses.get_loss_fn(sde, model, train=True, reduce_mean=True)
    loss, grads = jax.jit(jax.value_and_grad(loss_fn))(state.params, jax.random.PRNGKey(5), x)
    step = train.compile_step(train.make_train_step(loss_fn, opt, 0.999), 1)
    new_state, metrics = step(state, x)
    assert new_state.params["Dense_0"]["kernel"].sharding.is_fully_replicated
    leaves = [np.asarray(loss)] + [np.asarray(g) for g in jax.tree.leaves(grads)]
    leaves += [np.asarray(metrics["loss"])] + [np.asarray(p) for p in jax.tree.leaves(new_state.params)]
    np.savez(sys.argv[1], *leaves)
    print("devices", n)
    """
)


def test_eight_devices_match_one_device(tmp_path):
    procs = {}
    for n in (8, 1):  # both subprocesses run at once
        env = _env()
        if n == 8:
            env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
        procs[n] = subprocess.Popen([sys.executable, "-c", DEVICE_SCRIPT, str(tmp_path / f"dev{n}.npz")], env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    outs = {}
    for n, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-3000:]
        assert f"devices {n}" in out
        with np.load(tmp_path / f"dev{n}.npz") as f:
            outs[n] = [f[f"arr_{i}"] for i in range(len(f.files))]
    assert len(outs[8]) == len(outs[1])
    for a, b in zip(outs[8], outs[1]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------- resumption


def _digits(batch=16, seed=0):
    return get_dataset("digits", "train", batch_size=batch, centered=True, random_flip=True, seed=seed)


def _train(workdir, n_iters, n_jitted=1, **kw):
    """`train.train` of TinyScore on digits; `kw` holds `Schedule` fields and other arguments."""
    schedule = dict(n_iters=n_iters, n_jitted_steps=n_jitted, log_freq=n_jitted, snapshot_freq=4,
                    snapshot_freq_for_preemption=2)
    schedule.update({f.name: kw.pop(f.name) for f in dataclasses.fields(train.Schedule) if f.name in kw})
    return train.train(TinyScore(), sde_lib.VPSDE(), _digits(), str(workdir), optimizer=train.get_optimizer(1e-3, 2),
                       schedule=train.Schedule(**schedule), progress=False, **kw)


def _losses(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return {r["step"]: r["last_loss"] for r in map(json.loads, f) if "last_loss" in r}


def test_resumed_run_matches_uninterrupted_run(tmp_path, n_jitted=1):
    full = _train(tmp_path / "full", 8, n_jitted)
    part = _train(tmp_path / "resumed", 6 if n_jitted == 1 else 4, n_jitted)
    assert int(part.step) < 8
    resumed = _train(tmp_path / "resumed", 8, n_jitted)  # a fresh call, as after a restart
    assert int(resumed.step) == 8
    assert _losses(tmp_path / "full") == _losses(tmp_path / "resumed")
    assert len(_losses(tmp_path / "full")) == 8 // n_jitted
    for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(resumed)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # Periodic checkpoints every 4 steps (and at the end) are all kept; meta keeps one.
    mgr = checkpoints.CheckpointManager(tmp_path / "full", read_only=True)
    assert mgr.all_steps("periodic") == [4, 8] and len(mgr.all_steps("meta")) == 1
    state, data_state = mgr.restore(full)
    assert data_state == {"epoch": 0, "index": 8} and int(state.step) == 8


def test_writes_metrics_and_calls_hooks(tmp_path):
    """Also runs the loop with n_jitted_steps=2 (two steps per compiled call)."""
    snaps, logs = [], []
    _train(tmp_path, 4, n_jitted=2, log_freq=2, eval_freq=2, eval_iter=_digits(seed=1),
           on_snapshot=lambda s, step: snaps.append((step, int(s.step))), on_log=lambda step, r: logs.append(step),
           lr_schedule=train.learning_rate_schedule(1e-3, 2))
    records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    train_recs = [r for r in records if "loss" in r]
    assert [r["step"] for r in train_recs] == [2, 4] and logs == [2, 4]
    assert all(np.isfinite(r["loss"]) and r["examples_per_sec"] > 0 for r in train_recs)
    # The learning rate of each log's last update: update 1 (of 0, 1) half-way through warmup.
    np.testing.assert_allclose([r["lr"] for r in train_recs], [5e-4, 1e-3], rtol=1e-6)
    assert [r["step"] for r in records if "eval_loss" in r] == [2, 4]
    assert snaps == [(4, 4)]


# ----------------------------------------------------------------------------- the loop's units


def test_schedule_checks_and_rounds():
    s = train.Schedule(n_iters=11, n_jitted_steps=5, log_freq=10, eval_freq=5, snapshot_freq=5,
                       snapshot_freq_for_preemption=5)
    assert s.last_step == 15  # groups of n_jitted_steps: n_iters rounded up, as the reference
    assert [step for step in (5, 10, 15) if s.is_log_step(step)] == [10, 15]  # and the last step
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.n_iters = 3
    ok = dict(n_iters=8, n_jitted_steps=1, log_freq=2, eval_freq=2, snapshot_freq=2, snapshot_freq_for_preemption=2)
    for bad, message in [
        (dict(n_jitted_steps=3), "log_freq=2 must be a positive multiple of n_jitted_steps=3"),
        (dict(n_jitted_steps=2, snapshot_freq_for_preemption=3), "snapshot_freq_for_preemption=3"),
        (dict(eval_freq=0), "eval_freq=0 must be a positive multiple"),
        (dict(n_jitted_steps=0), "n_jitted_steps must be >= 1"),
        (dict(n_jitted_steps=1.0), "n_jitted_steps must be >= 1 \\(an integer\\)"),
        (dict(n_iters=0), "n_iters must be positive"),
    ]:
        with pytest.raises(ValueError, match=message):
            train.Schedule(**{**ok, **bad})


class _Position:
    """A data iterator's position, as `CheckpointPolicy` saves and restores it."""

    def __init__(self, index=0):
        self.index = index

    def get_state(self):
        return {"epoch": 0, "index": self.index}

    def set_state(self, state):
        self.index = state["index"]


def test_checkpoint_policy(tmp_path):
    schedule = train.Schedule(n_iters=9, snapshot_freq=4, snapshot_freq_for_preemption=3)
    policy = train.CheckpointPolicy(str(tmp_path), schedule, max_to_keep=1, async_save=False)
    # Periodic every 4 steps and at the last step, preemption ("meta") at the other multiples of 3.
    kinds = [policy.kind(step) for step in range(1, 10)]
    assert kinds == [None, None, "meta", "periodic", None, "meta", None, "periodic", "periodic"]
    assert "no checkpoint was saved" in policy.last_saved()
    for step in (3, 4, 6, 8):
        policy.save(step, {"w": np.full(2, float(step))}, _Position(step), policy.kind(step))
    policy.save(8, {"w": np.zeros(2)}, _Position(0), "meta")  # one checkpoint per step: skipped
    policy.save(7, {"w": np.zeros(2)}, _Position(0), "meta")  # older than the newest: skipped
    assert policy.manager.all_steps("periodic") == [8] and policy.manager.all_steps("meta") == [6]
    assert policy.last_saved() == f"the last good checkpoint is step 8 in {tmp_path}"
    data = _Position()
    state = policy.restore({"w": np.zeros(2)}, data)
    np.testing.assert_array_equal(state["w"], [8.0, 8.0])
    assert data.index == 8
    policy.close()
    empty = train.CheckpointPolicy(str(tmp_path / "empty"), schedule)
    fresh = {"w": np.ones(2)}
    assert empty.restore(fresh, data) is fresh and data.index == 8  # nothing to resume: unchanged
    empty.close()


def test_non_finite_guard():
    guard = train.NonFiniteGuard(10, last_saved=lambda: "the last good checkpoint is step 10 in w")
    assert guard.check() is None  # nothing pending
    guard.add({"loss": jnp.asarray([1.0, 3.0]), "grad_norm": jnp.asarray([0.5, 2.0])})  # two steps of one call
    guard.add({"loss": jnp.asarray(5.0), "grad_norm": jnp.asarray(1.0)})
    assert guard.check() == {"loss": 3.0, "last_loss": 5.0, "grad_norm": 1.0} and guard.checked == 13
    guard.add({"loss": jnp.asarray([2.0, 1.0]), "grad_norm": jnp.asarray([1.0, np.inf])})
    guard.add({"loss": jnp.asarray(np.nan), "grad_norm": jnp.asarray(1.0)})
    with pytest.raises(train.NonFiniteLossError, match=r"at step 15 \(loss=1.0, grad_norm=inf\).*step 10 in w"):
        guard.check()
    assert guard.checked == 13


# ----------------------------------------------------------------------------- signals and crashes

SIGNAL_SCRIPT = textwrap.dedent(
    """
    import sys
    from test_train import _train
    state = _train(sys.argv[1], 100000, log_freq=1, snapshot_freq=100000, snapshot_freq_for_preemption=100000)
    print("RETURNED", int(state.step), flush=True)
    """
)


def test_signals_save_checkpoint_and_exit_cleanly(tmp_path):
    """SIGTERM and SIGINT (Ctrl-C), each to its own training subprocess (run at once)."""
    procs = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        workdir = tmp_path / sig.name
        proc = subprocess.Popen([sys.executable, "-c", SIGNAL_SCRIPT, str(workdir)], env=_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs[sig] = (proc, workdir)
    for sig, (proc, workdir) in procs.items():
        metrics = workdir / "metrics.jsonl"
        deadline = time.time() + 60
        while time.time() < deadline and not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
            time.sleep(0.05)
        proc.send_signal(sig)
    for sig, (proc, workdir) in procs.items():
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err[-3000:]
        assert f"Stopped by {sig.name}" in err
        step = int(out.split("RETURNED")[1].split()[0])
        assert step >= 3
        mgr = checkpoints.CheckpointManager(workdir, read_only=True)
        assert mgr.latest() == (step, "meta")


KILL_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys, numpy as np
    from scoresde.checkpoints import CheckpointManager
    mgr = CheckpointManager(sys.argv[1], async_save=False)
    mgr.save(1, {"w": np.arange(4.0), "big": np.zeros((256, 256), np.float32)}, {"epoch": 0, "index": 1})
    from orbax.checkpoint._src.path import atomicity

    async def hang(self):  # every file is written; the final rename never happens
        print("FINALIZING", flush=True)
        await asyncio.sleep(3600)

    atomicity.AtomicRenameTemporaryPath.finalize = hang
    mgr.save(2, {"w": np.full(4, 7.0), "big": np.ones((256, 256), np.float32)}, {"epoch": 0, "index": 2})
    """
)


def test_kill_during_save_keeps_previous_checkpoint(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(tmp_path)], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert "FINALIZING" in line, proc.stderr.read()[-3000:] if proc.poll() is not None else line
    proc.kill()  # SIGKILL in the middle of the save
    proc.wait(timeout=30)
    ckdir = tmp_path / checkpoints.PERIODIC_DIR
    assert any("tmp" in name for name in os.listdir(ckdir)), os.listdir(ckdir)  # the unfinished save
    target = {"w": np.zeros(4), "big": np.zeros((256, 256), np.float32)}
    mgr = checkpoints.CheckpointManager(tmp_path)  # reopening for training cleans the tmp dir up
    assert mgr.latest() == (1, "periodic")
    state, data_state = mgr.restore(target)
    np.testing.assert_array_equal(state["w"], np.arange(4.0))
    assert data_state == {"epoch": 0, "index": 1}
    # The unfinished save never becomes a step (its leftover tmp dir may be cleaned up later).
    assert "2" not in os.listdir(ckdir)
    mgr.close()


def test_partial_tmp_dir_is_ignored(tmp_path):
    with checkpoints.CheckpointManager(tmp_path, async_save=False) as mgr:
        mgr.save(3, {"w": np.ones(2)}, {"epoch": 1, "index": 0}, kind="meta")
    partial = tmp_path / checkpoints.META_DIR / "9.orbax-checkpoint-tmp-1234567890"
    (partial / "state").mkdir(parents=True)
    (partial / "state" / "garbage").write_text("half-written")
    with checkpoints.CheckpointManager(tmp_path, read_only=True) as mgr:
        assert mgr.latest() == (3, "meta")
        state, pos = mgr.restore({"w": np.zeros(2)})
    np.testing.assert_array_equal(state["w"], np.ones(2))
    assert pos == {"epoch": 1, "index": 0}


class _PoisonedIterator:
    """Digits batches, but batch `bad` (0-based) is all NaN."""

    def __init__(self, bad):
        self.it, self.bad = _digits(), bad
        self.element_shape, self.local_batch_size = self.it.element_shape, self.it.local_batch_size

    def get_state(self):
        return self.it.get_state()

    def set_state(self, s):
        self.it.set_state(s)

    def __next__(self):
        index = self.it.index
        batch = next(self.it)
        if index == self.bad:
            batch["image"] = np.full_like(batch["image"], np.nan)
        return batch


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    with pytest.raises(train.NonFiniteLossError, match="Non-finite training loss or gradient at step 7") as e:
        train.train(TinyScore(), sde_lib.VPSDE(), _PoisonedIterator(6), str(tmp_path),
                    optimizer=train.get_optimizer(warmup=2), progress=False,
                    schedule=train.Schedule(n_iters=20, log_freq=4, snapshot_freq=4, snapshot_freq_for_preemption=2))
    assert "last good checkpoint is step 6" in str(e.value)
    mgr = checkpoints.CheckpointManager(tmp_path, read_only=True)
    assert mgr.latest() == (6, "meta") and mgr.all_steps("periodic") == [4]
    opt = train.get_optimizer()
    target = train.init_train_state(TinyScore(), sde_lib.VPSDE(), jax.random.PRNGKey(0), (8, 8, 1), opt)
    state, _ = mgr.restore(target)
    assert int(state.step) == 6
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(state.params))


# ----------------------------------------------------------------------------- registered networks


@pytest.mark.parametrize(
    "sde, continuous, embedding",
    [(sde_lib.VESDE(sigma_max=5.0), True, "fourier"), (sde_lib.VPSDE(N=100), False, "positional")],
    ids=["ve-continuous", "ddpm-discrete"],
)
def test_registered_mlp_learns_toy_data(tmp_path, sde, continuous, embedding):
    """The loop with `get_model("mlp")` on 2-D toy data: the loss goes down."""
    from scoresde.models import get_model

    model = get_model("mlp", hidden=64, num_layers=2, embedding_type=embedding)
    data = get_dataset("toy:8gaussians", batch_size=256)
    train.train(model, sde, data, str(tmp_path), optimizer=train.get_optimizer(lr=2e-3, warmup=0),
                schedule=train.Schedule(n_iters=60, log_freq=20, snapshot_freq=60, snapshot_freq_for_preemption=60),
                loss_kwargs=dict(reduce_mean=True, continuous=continuous), progress=False)
    loss = [r["loss"] for r in map(json.loads, open(tmp_path / "metrics.jsonl"))]
    assert len(loss) == 3 and all(np.isfinite(loss))
    assert loss[-1] < 0.97 * loss[0], loss
