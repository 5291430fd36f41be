"""Training: optimizer, train state, the compiled data-parallel step, and the loop.

    state = init_train_state(model, sde, key, example_shape, optimizer)
    step_fn = make_train_step(loss_fn, optimizer, ema_rate)
    p_step = compile_step(step_fn, n_jitted_steps)      # jit, donate state, shard batch
    state, metrics = p_step(state, put_batch(images))

or all of it, with checkpoints, metrics and resumption:

    train(model, sde, data, workdir, optimizer=get_optimizer(lr=2e-4, warmup=5000),
          schedule=Schedule(n_iters=1300001, n_jitted_steps=5), loss_kwargs=dict(reduce_mean=True))

The loop's pieces are small units of their own: `Schedule` (steps and frequencies),
`CheckpointPolicy` (which checkpoints are written and kept) and `NonFiniteGuard` (the
stop at a NaN or infinite loss).

Optimization follows the reference `optimization_manager` (`get_optimizer`): gradients
are clipped to global norm `grad_clip` (negative: off), then Adam (b1=`beta1`, b2=0.999,
eps=`optim_eps`) with the learning rate lr * min(step / warmup, 1), where step counts
the updates already made (so the very first update has learning rate 0, as in the
reference). The EMA is ema <- rate * ema + (1 - rate) * params after each update.

Parallelism: one mesh over all devices of all processes with the axis 'data'
(`scoresde.parallel`). The batch is split along it, the state is replicated, and
`jax.jit` inserts the gradient all-reduce. Each process feeds only its own slice of
the global batch (`put_batch` assembles the global array with
`jax.make_array_from_process_local_data`). Multi-host: call
`jax.distributed.initialize(...)` before anything else touches JAX.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import os
import signal
import sys
import threading
import time
from typing import Any, Callable, Iterator

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from scoresde import losses as losses_lib
from scoresde import parallel, sde_lib
from scoresde.checkpoints import CheckpointManager
from scoresde.models import convolution
from scoresde.score import noise_labels

log = logging.getLogger(__name__)


@flax.struct.dataclass
class TrainState:
    """Everything a training run carries from step to step (a pytree)."""

    step: jax.Array  # int32 scalar: optimizer updates made so far
    params: Any
    ema_params: Any
    opt_state: Any
    rng: jax.Array  # PRNG key, split once per step


class NonFiniteLossError(FloatingPointError):
    """The loss or the gradient became NaN or infinite; training stopped."""


# ----------------------------------------------------------------------------- optimizer


def learning_rate_schedule(lr: float = 2e-4, warmup: int = 5000) -> Callable[[jax.Array], jax.Array]:
    """lr * min(count / warmup, 1), with count the number of updates already made.

    Not `optax.linear_schedule(0, lr, warmup)`: it computes lr - lr * (1 - count / warmup),
    which rounds differently in float32 (another learning rate at about 45% of the warmup
    steps), so training would no longer reproduce the runs made so far bit for bit.
    """
    if warmup <= 0:
        return lambda count: jnp.asarray(lr, jnp.float32)
    return lambda count: lr * jnp.minimum(jnp.asarray(count, jnp.float32) / warmup, 1.0)


def get_optimizer(
    lr: float = 2e-4,
    warmup: int = 5000,
    grad_clip: float = 1.0,
    beta1: float = 0.9,
    optim_eps: float = 1e-8,
    beta2: float = 0.999,
    weight_decay: float = 0.0,
) -> optax.GradientTransformation:
    """The reference's optimizer: clip by global norm (if grad_clip >= 0), Adam, decoupled
    weight decay (if weight_decay), then the learning rate `learning_rate_schedule(lr, warmup)`.

    One flat `optax.chain` of optax's transformations, not `optax.adam` / `optax.adamw`,
    which nest a chain of their own: the optimizer state's tree, and so the layout of the
    checkpoints that runs already wrote, stays the same.
    """
    parts = []
    if grad_clip >= 0:
        parts.append(optax.clip_by_global_norm(grad_clip))
    parts.append(optax.scale_by_adam(b1=beta1, b2=beta2, eps=optim_eps))
    if weight_decay:
        parts.append(optax.add_decayed_weights(weight_decay))
    parts.append(optax.scale_by_learning_rate(learning_rate_schedule(lr, warmup)))
    return optax.chain(*parts)


def default_ema_rate(sde: sde_lib.SDE) -> float:
    """The reference configs' EMA rates: 0.999 for VE, 0.9999 for VP-type SDEs."""
    return 0.999 if isinstance(sde, sde_lib.VESDE) else 0.9999


# ----------------------------------------------------------------------------- state


def init_params(model: nn.Module, sde: sde_lib.SDE | None, key, example_shape, continuous: bool = True):
    """Initialize the network's parameters on a batch of one zero example `example_shape`
    (and its noise labels at t = T/2; sde None: a network without them, the autoencoder)."""
    x = jnp.zeros((1,) + tuple(example_shape), jnp.float32)
    args = (x,) if sde is None else (x, noise_labels(sde, jnp.full((1,), 0.5 * sde.T, jnp.float32), continuous))
    k_params, k_dropout = jax.random.split(key)
    variables = model.init({"params": k_params, "dropout": k_dropout}, *args, train=False)
    return variables["params"]


def init_train_state(
    model: nn.Module,
    sde: sde_lib.SDE | None,
    key: jax.Array,
    example_shape,
    optimizer: optax.GradientTransformation,
    continuous: bool = True,
    params=None,
) -> TrainState:
    """A fresh state, replicated over the data mesh (the same on every process).

    As the reference: `key` is split into the initialization key and the state's key.
    """

    def init(key, p):
        rng, k_init = jax.random.split(key)
        if p is None:
            p = init_params(model, sde, k_init, example_shape, continuous)
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=p,
            ema_params=jax.tree.map(jnp.copy, p),
            opt_state=optimizer.init(p),
            rng=rng,
        )

    # Given parameters are an argument (not a closure constant baked into the program).
    return jax.jit(init, out_shardings=parallel.replicated())(key, params)


# ----------------------------------------------------------------------------- steps


def accumulated_value_and_grad(loss_fn: losses_lib.SplitLoss, micro_batches: int):
    """`(params, key, batch) -> (loss, grads)` of the whole batch, computed over
    `micro_batches` equal slices in a `lax.scan`: activations of one slice at a time.

    The batch's randomness is drawn once for the whole batch and sliced with it, so the
    loss and gradient are those of the plain step up to float summation order (with
    dropout, each slice draws its own dropout mask)."""

    def value_and_grad(params, key, batch):
        noise, k_dropout = loss_fn.draw(key, batch)
        size = losses_lib.batch_images(batch).shape[0]
        # Slice i takes every micro_batches-th example from i on, so a batch sharded over
        # devices stays sharded in every slice.
        split = functools.partial(
            jax.tree.map, lambda a: a.reshape(size // micro_batches, micro_batches, *a.shape[1:]).swapaxes(0, 1)
        )

        def micro_sum(params, micro, i):
            return jnp.sum(loss_fn.per_example(params, *micro, jax.random.fold_in(k_dropout, i)))

        def body(carry, xs):
            i, micro = xs
            loss, grads = jax.value_and_grad(micro_sum)(params, micro, i)
            return jax.tree.map(jnp.add, carry, (loss, grads)), None

        zeros = (jnp.zeros(()), jax.tree.map(jnp.zeros_like, params))
        (total, grads), _ = jax.lax.scan(body, zeros, (jnp.arange(micro_batches), split((batch, noise))))
        return total / size, jax.tree.map(lambda g: g / size, grads)

    return value_and_grad


def make_train_step(loss_fn, optimizer: optax.GradientTransformation, ema_rate: float, micro_batches: int = 1):
    """One optimization step `(state, batch) -> (state, {"loss", "grad_norm"})`.

    `loss_fn(params, key, batch)` is a `losses` function. The loss reported is that
    of the parameters before the update, as the reference. `micro_batches` > 1
    accumulates the gradient over that many slices of the batch
    (`accumulated_value_and_grad`; the loss must be a `losses.SplitLoss`).
    """
    if not (isinstance(micro_batches, int) and micro_batches >= 1):
        raise ValueError(f"micro_batches must be an integer >= 1, got {micro_batches!r}.")
    if micro_batches == 1:
        value_and_grad = jax.value_and_grad(loss_fn)
    elif isinstance(loss_fn, losses_lib.SplitLoss):
        value_and_grad = accumulated_value_and_grad(loss_fn, micro_batches)
    else:
        raise ValueError("Gradient accumulation (micro_batches > 1) needs the continuous SDE loss "
                         "(training.continuous=True, objective 'score').")

    def step_fn(state: TrainState, batch):
        rng, step_rng = jax.random.split(state.rng)
        with convolution.canonical_gradients():  # fast on CPU inside scans (micro-batches, n_jitted_steps)
            loss, grads = value_and_grad(state.params, step_rng, batch)
        grad_norm = optax.global_norm(grads)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        # Not optax.incremental_update(params, ema, 1 - ema_rate): the same formula, but XLA
        # fuses the other product into a multiply-add, and about 1 in 4 entries change in
        # their last bits; this order reproduces the runs made so far.
        ema = jax.tree.map(lambda e, p: e * ema_rate + p * (1.0 - ema_rate), state.ema_params, params)
        new_state = state.replace(step=state.step + 1, params=params, ema_params=ema, opt_state=opt_state, rng=rng)
        return new_state, {"loss": loss, "grad_norm": grad_norm}

    return step_fn


def make_eval_step(loss_fn):
    """`(state, batch) -> loss` of the EMA parameters (state unchanged; a key derived from it)."""

    def eval_step(state: TrainState, batch):
        return loss_fn(state.ema_params, jax.random.fold_in(state.rng, 0x5EED), batch)

    return eval_step


def batch_sharding(ndim: int, stacked: bool = False) -> NamedSharding:
    """Batch split on 'data' along axis 0 (or axis 1 for a stack of n batches)."""
    spec = (None, parallel.DATA_AXIS) if stacked else (parallel.DATA_AXIS,)
    return NamedSharding(parallel.data_mesh(), P(*spec, *([None] * (ndim - len(spec)))))


def put_batch(local_batch, stacked: bool = False):
    """This process's slice of the global batch -> the global, sharded jax.Array(s).

    `local_batch` is `(B_local, ...)`, or `(n, B_local, ...)` with `stacked=True`, or a
    dict of such arrays;
    the global batch is the concatenation of all processes' slices in process order.
    """
    def put(local):
        local = np.asarray(local)
        return jax.make_array_from_process_local_data(batch_sharding(local.ndim, stacked), local)

    return jax.tree.map(put, local_batch)


def compile_step(step_fn, n_jitted_steps: int = 1, donate: bool = True):
    """jit `step_fn` over the data mesh: state replicated (and donated), batch sharded.

    With `n_jitted_steps > 1` the compiled function runs that many steps in one call
    (`lax.scan`) on a stacked batch `(n, B, ...)` and returns stacked metrics `(n,)`.
    """
    if n_jitted_steps < 1:
        raise ValueError(f"n_jitted_steps must be >= 1, got {n_jitted_steps}.")
    replicated = parallel.replicated()
    stacked = n_jitted_steps > 1
    fn = (lambda state, batch: jax.lax.scan(step_fn, state, batch)) if stacked else step_fn

    def constrained(state, batch):
        batch = jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, batch_sharding(x.ndim, stacked)), batch)
        return fn(state, batch)

    return jax.jit(
        constrained,
        in_shardings=(replicated, None),
        out_shardings=(replicated, replicated),
        donate_argnums=(0,) if donate else (),
    )


def compile_eval_step(eval_step):
    def constrained(state, batch):
        batch = jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, batch_sharding(x.ndim)), batch)
        return eval_step(state, batch)

    return jax.jit(constrained, out_shardings=parallel.replicated())


# ----------------------------------------------------------------------------- loop units


@dataclasses.dataclass(frozen=True)
class Schedule:
    """When the loop of `train` does what, counted in optimizer steps (the reference's
    training.* names).

    n_iters: the optimizer steps in all. As the reference, the last group of
      n_jitted_steps may run past it (`last_step`; its configs use n_iters = 1 + a
      multiple of n_jitted_steps).
    n_jitted_steps: steps per compiled call (`compile_step`).
    log_freq: metrics (metrics.jsonl, `on_log`) every log_freq steps and at the last step.
    eval_freq: the EMA parameters' loss on an evaluation batch every eval_freq steps.
    snapshot_freq, snapshot_freq_for_preemption: checkpoints (`CheckpointPolicy`).

    Raises ValueError unless n_iters > 0, n_jitted_steps is an integer >= 1 and every
    frequency is a positive multiple of it (steps run in groups of n_jitted_steps).
    """

    n_iters: int
    n_jitted_steps: int = 1
    log_freq: int = 50
    eval_freq: int = 100
    snapshot_freq: int = 50000
    snapshot_freq_for_preemption: int = 10000

    def __post_init__(self):
        k = self.n_jitted_steps
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"training.n_jitted_steps must be >= 1 (an integer), got {k!r}.")
        for name in ("log_freq", "eval_freq", "snapshot_freq", "snapshot_freq_for_preemption"):
            freq = getattr(self, name)
            if freq <= 0 or freq % k:
                raise ValueError(
                    f"training.{name}={freq} must be a positive multiple of n_jitted_steps={k} "
                    "(steps run in groups of n_jitted_steps)."
                )
        if self.n_iters <= 0:
            raise ValueError(f"training.n_iters must be positive, got {self.n_iters}.")

    @property
    def last_step(self) -> int:
        """The step training ends at: n_iters rounded up to a multiple of n_jitted_steps."""
        return -(-self.n_iters // self.n_jitted_steps) * self.n_jitted_steps

    def is_log_step(self, step: int) -> bool:
        return step % self.log_freq == 0 or step == self.last_step


class CheckpointPolicy:
    """Which checkpoints `train` writes to `workdir` and keeps (`checkpoints.CheckpointManager`).

    A periodic checkpoint every `snapshot_freq` steps and at the last step, the newest
    `max_to_keep` of them kept (None: all, as the reference). A preemption ("meta")
    checkpoint at the other multiples of `snapshot_freq_for_preemption` and when training
    stops early, only the newest kept. At most one checkpoint per step. Each holds the
    train state and the data iterator's position.
    """

    def __init__(self, workdir: str, schedule: Schedule, max_to_keep: int | None = None, async_save: bool = True):
        self.workdir, self.schedule = workdir, schedule
        os.makedirs(workdir, exist_ok=True)
        self.manager = CheckpointManager(workdir, max_to_keep=max_to_keep, async_save=async_save)

    def kind(self, step: int) -> str | None:
        """"periodic", "meta" or None: the checkpoint due after `step`."""
        s = self.schedule
        if step % s.snapshot_freq == 0 or step == s.last_step:
            return "periodic"
        return "meta" if step % s.snapshot_freq_for_preemption == 0 else None

    def restore(self, state: TrainState, data) -> TrainState:
        """The newest checkpoint that restores (onto `state`'s structure), or `state` if there
        is none; the data iterator goes back to its saved position.

        Newer checkpoints that fail to restore are moved (not deleted) to
        `checkpoints-unreadable/`, with one line each, so that training can save those steps
        again; if none restores, `checkpoints.UnreadableCheckpoints` is raised.
        """
        unreadable = []

        def note(step, kind, err):
            unreadable.append((step, kind))
            if jax.process_index() == 0:
                print(f"Checkpoint {step} ({kind}) in {self.workdir} does not restore ({type(err).__name__}); "
                      "trying the one before.", file=sys.stderr, flush=True)

        restored = self.manager.restore_newest(state, on_unreadable=note)
        if unreadable and jax.process_index() == 0:
            aside = os.path.join(self.workdir, "checkpoints-unreadable")
            os.makedirs(aside, exist_ok=True)
            for step, kind in unreadable:
                target = os.path.join(aside, f"{kind}-{step}")
                while os.path.exists(target):
                    target += "-again"
                os.replace(self.manager.step_path(step, kind), target)
                print(f"Moved it to {target}.", file=sys.stderr, flush=True)
        if unreadable:
            self.manager.reload()
        if restored is None:
            return state
        state, data_state, step, kind = restored
        if unreadable and jax.process_index() == 0:
            print(f"Resuming from checkpoint {step} ({kind}).", file=sys.stderr, flush=True)
        if data_state and hasattr(data, "set_state"):
            data.set_state(data_state)
        return state

    def save(self, step: int, state: TrainState, data, kind: str) -> None:
        """Save unless a checkpoint of `step` (or a later one) exists already."""
        latest = self.manager.latest()
        if latest is not None and latest[0] >= step:
            return
        data_state = data.get_state() if hasattr(data, "get_state") else {}
        if self.manager.save(step, state, data_state, kind=kind) and jax.process_index() == 0:
            log.info("Saved %s checkpoint at step %d", kind, step)

    def last_saved(self) -> str:
        """Where training can go on from (after the saves in flight finish), in words."""
        self.manager.wait_until_finished()
        saved = self.manager.latest()
        return f"the last good checkpoint is step {saved[0]} in {self.workdir}" if saved else "no checkpoint was saved"

    def wait_until_finished(self):
        self.manager.wait_until_finished()

    def close(self):
        self.manager.close()


class NonFiniteGuard:
    """Stops training at the first step whose loss or gradient norm is NaN or infinite.

    The steps' metrics stay on the device (`add`) until `check` fetches them: `train`
    checks at each log and before each checkpoint, so that no checkpoint is written after
    a non-finite step. `last_saved()` says, for the error message, where to go on from.
    """

    def __init__(self, step: int, last_saved: Callable[[], str] = lambda: "no checkpoint was saved"):
        self.checked = step  # every loss up to this step is finite
        self.last_saved = last_saved
        self._pending: list[dict] = []

    def add(self, metrics: dict) -> None:
        """The metrics {"loss", "grad_norm"} of the next step (or a stack of the next steps)."""
        self._pending.append(metrics)

    def check(self) -> dict | None:
        """Fetch the pending metrics (waiting for their steps) and check them. Returns their
        summary {"loss": mean, "last_loss", "grad_norm": last} (None: nothing pending);
        raises `NonFiniteLossError` at the first non-finite step."""
        if not self._pending:
            return None
        fetched, self._pending = jax.device_get(self._pending), []
        loss = np.concatenate([np.atleast_1d(m["loss"]) for m in fetched])
        gnorm = np.concatenate([np.atleast_1d(m["grad_norm"]) for m in fetched])
        bad = ~(np.isfinite(loss) & np.isfinite(gnorm))
        if bad.any():
            i = int(np.argmax(bad))
            raise NonFiniteLossError(
                f"Non-finite training loss or gradient at step {self.checked + 1 + i} (loss={loss[i]}, "
                f"grad_norm={gnorm[i]}); training stopped and no later checkpoint was written; "
                f"{self.last_saved()}. Lower optim.lr, raise optim.warmup or check the data."
            )
        self.checked += len(loss)
        return {"loss": float(loss.mean()), "last_loss": float(loss[-1]), "grad_norm": float(gnorm[-1])}


# ----------------------------------------------------------------------------- loop helpers


class _StopFlag:
    """SIGTERM / SIGINT set a flag instead of killing the process (main thread only)."""

    def __init__(self, enabled: bool):
        self.signum = None
        self._previous = {}
        if enabled and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C aborts at once
        self.signum = signum

    def restore(self):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def requested(self, sync: bool) -> bool:
        """Whether any process was asked to stop. Several processes agree (a collective)
        only where `sync` (at the same steps on all of them); elsewhere they go on."""
        if jax.process_count() == 1:
            return self.signum is not None
        if not sync:
            return False
        from jax.experimental import multihost_utils

        return bool(np.any(multihost_utils.process_allgather(np.asarray(self.signum is not None, np.int32))))

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else "a signal on another process"


def truncate_metrics(path: str, step: int) -> int:
    """Drop the rows of a metrics.jsonl past `step` (written after the checkpoint a run
    resumes from, by a process that was killed) and any torn line; the number dropped.
    The file is replaced atomically."""
    try:
        with open(path) as f:
            lines = f.readlines()
    except FileNotFoundError:
        return 0

    def keep(line):
        try:
            return json.loads(line).get("step", 0) <= step
        except ValueError:
            return False

    kept = [line for line in lines if keep(line)]
    if len(kept) < len(lines):
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.writelines(kept)
        os.replace(tmp, path)
    return len(lines) - len(kept)


class _Reports:
    """metrics.jsonl and the progress bar (process 0), and the training speed: steps per
    second between two logs, less the time spent in evaluation and hooks (`paused`)."""

    def __init__(self, workdir: str, step: int, last_step: int, examples_per_step: int, progress: bool):
        is_main = jax.process_index() == 0
        dropped = truncate_metrics(os.path.join(workdir, "metrics.jsonl"), step) if is_main else 0
        self.file = open(os.path.join(workdir, "metrics.jsonl"), "a") if is_main else None
        self.bar = None
        if progress and is_main:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=last_step, initial=step, unit="step", dynamic_ncols=True, desc="train")
        self.examples_per_step = examples_per_step
        self.postfix: dict = {}
        self._time, self._step, self._paused = time.perf_counter(), step, 0.0
        if dropped:
            self.message(f"metrics.jsonl: dropped {dropped} rows logged after step {step}, where training resumes.")

    @contextlib.contextmanager
    def paused(self):
        start = time.perf_counter()
        try:
            yield
        finally:
            self._paused += time.perf_counter() - start

    def advance(self, steps: int):
        if self.bar is not None:
            self.bar.update(steps)

    def train(self, step: int, summary: dict, lr: float | None) -> dict:
        """Log the training metrics of the steps since the last log; the record written."""
        now = time.perf_counter()
        rate = (step - self._step) / max(now - self._time - self._paused, 1e-9)
        self._time, self._step, self._paused = now, step, 0.0
        record = {"step": step, **summary, **({} if lr is None else {"lr": lr}), "steps_per_sec": rate,
                  "examples_per_sec": rate * self.examples_per_step, "time": time.time()}
        self._write(record, loss=f"{summary['loss']:.4g}", img_s=f"{rate * self.examples_per_step:.1f}")
        return record

    def eval(self, step: int, eval_loss: float):
        self._write({"step": step, "eval_loss": eval_loss}, eval_loss=f"{eval_loss:.4g}")

    def _write(self, record: dict, **postfix):
        if self.file is not None:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()
        if self.bar is not None:
            self.postfix.update(postfix)
            self.bar.set_postfix(self.postfix)

    def message(self, msg: str):
        if jax.process_index() == 0:
            log.warning(msg)
            if self.bar is not None:
                self.bar.write(msg)

    def close(self):
        if self.bar is not None:
            self.bar.close()
        if self.file is not None:
            self.file.close()


def _select(batch, with_labels: bool):
    """The images of a batch, or the whole batch dict ("image", "label" and any extras, such
    as "text_embedding") when the objective reads labels or a condition."""
    if not with_labels:
        return losses_lib.batch_images(batch)
    if not (isinstance(batch, dict) and "label" in batch):
        raise ValueError("This objective needs labelled batches (dicts with 'image' and 'label').")
    return dict(batch)


def _next_batch(data: Iterator, n: int, with_labels: bool = False):
    """n local batches from the iterator: `(B, ...)` or stacked `(n, B, ...)` (or dicts of them)."""
    batches = [_select(next(data), with_labels) for _ in range(n)]
    return batches[0] if n == 1 else jax.tree.map(lambda *b: np.stack(b), *batches)


def _next_eval(data):
    """The next evaluation batch; a finished evaluation iterator starts over."""
    try:
        return next(data)
    except StopIteration:
        if not hasattr(data, "set_state"):
            raise
        data.set_state({"epoch": 0, "index": 0})
        return next(data)


# ----------------------------------------------------------------------------- train

OBJECTIVES = {
    "score": losses_lib.get_loss_fn,
    "classifier": losses_lib.get_classifier_loss_fn,
    "autoencoder": lambda sde, model, train, **kwargs: losses_lib.get_autoencoder_loss_fn(model, train, **kwargs),
}


def objective_loss_fn(sde: sde_lib.SDE | None, model: nn.Module, objective: str, train: bool, **loss_kwargs):
    """The loss of a training objective: "score" (a score model, `losses.get_loss_fn`: denoising
    score matching or the objective its `loss` names), "classifier" (a noise-conditional classifier for guidance,
    `losses.get_classifier_loss_fn`) or "autoencoder" (latent diffusion's autoencoder, no SDE:
    `losses.get_autoencoder_loss_fn`); `loss_kwargs` are that function's."""
    if objective not in OBJECTIVES:
        raise ValueError(f"Unknown training objective {objective!r}; valid: {', '.join(OBJECTIVES)}.")
    return OBJECTIVES[objective](sde, model, train=train, **loss_kwargs)


def train(
    model: nn.Module,
    sde: sde_lib.SDE | None,
    train_iter: Iterator,
    workdir: str,
    *,
    optimizer: optax.GradientTransformation,
    schedule: Schedule,
    objective: str = "score",
    loss_kwargs: dict | None = None,
    ema_rate: float | None = None,
    micro_batches: int = 1,
    lr_schedule: Callable[[int], Any] | None = None,
    seed: int = 0,
    eval_iter: Iterator | None = None,
    example_shape=None,
    init_params=None,
    on_start: Callable[[int], None] | None = None,
    on_log: Callable[[int, dict], None] | None = None,
    on_snapshot: Callable[[TrainState, int], None] | None = None,
    checkpoint_kwargs: dict | None = None,
    progress: bool = True,
    handle_signals: bool = True,
) -> TrainState:
    """Train a score model (or a classifier, or an autoencoder); resume from `workdir` if it holds checkpoints.

    Args:
      model, sde: the network (Flax linen) and the forward SDE (None for the autoencoder).
      train_iter: this process's batches (`data.get_dataset`): arrays `(B_local, ...)` or
        dicts with "image" (and "label", and what the loss's condition reads, such as
        "text_embedding"); with `get_state`/`set_state` its position is checkpointed and
        restored too.
      workdir: checkpoints (`checkpoints/`, `checkpoints-meta/`) and `metrics.jsonl`.
      optimizer: an optax transformation (`get_optimizer`: the reference's).
      schedule: the steps and the log, evaluation and checkpoint frequencies (`Schedule`).
      objective, loss_kwargs: the loss, `objective_loss_fn(sde, model, objective, train,
        **loss_kwargs)`; loss_kwargs["continuous"] (default True) also picks the noise
        labels the network is initialized with. A "condition" in it (or the classifier
        objective) makes the batches need labels.
      ema_rate: the parameters' EMA rate (None: 0.999 for VE, 0.9999 otherwise).
      micro_batches: gradient accumulation over this many slices of each batch (less memory,
        the same step; see `make_train_step`).
      lr_schedule: the optimizer's learning rate per update count, logged as "lr" (None:
        not logged).
      seed: the initialization's and the steps' PRNG seed.
      eval_iter: optional batches; the EMA parameters' loss on the next one is logged every
        `schedule.eval_freq` steps (one from `get_dataset` starts over when it ends).
      example_shape: shape of one example (default: the iterator's `element_shape`).
      init_params: start from these parameters instead of a fresh initialization.
      on_start: `on_start(step)` once the state is restored, before the first step.
      on_log: `on_log(step, record)`, on every process at each log.
      on_snapshot: `on_snapshot(state, step)`, on every process after each periodic
        checkpoint (e.g. for sample grids). The next step donates `state`'s buffers: use
        it inside the hook, do not keep it.
      checkpoint_kwargs: `CheckpointPolicy`'s max_to_keep and async_save.
      progress: show a tqdm bar (process 0).
      handle_signals: SIGTERM / SIGINT save a preemption checkpoint and return.

    Returns the final state. Raises `NonFiniteLossError` when the loss or gradient becomes
    NaN or infinite (`NonFiniteGuard`); the checkpoints written before it stay.
    """
    loss_kwargs = loss_kwargs or {}
    ema_rate = default_ema_rate(sde) if ema_rate is None else float(ema_rate)
    if example_shape is None:
        example_shape = getattr(train_iter, "element_shape", None)
        if example_shape is None:
            raise ValueError("Pass example_shape: the data iterator has no element_shape.")
    local_batch = getattr(train_iter, "local_batch_size", None)
    if local_batch is not None:
        parallel.check_divisible(local_batch * jax.process_count())
        if (local_batch * jax.process_count()) % micro_batches:
            raise ValueError(f"The batch size {local_batch * jax.process_count()} must be a multiple of "
                             f"micro_batches={micro_batches}.")
    with_labels = objective == "classifier" or loss_kwargs.get("condition") is not None
    n = schedule.n_jitted_steps
    loss_fn = objective_loss_fn(sde, model, objective, True, **loss_kwargs)
    p_step = compile_step(make_train_step(loss_fn, optimizer, ema_rate, micro_batches), n)
    p_eval = None
    if eval_iter is not None:
        p_eval = compile_eval_step(make_eval_step(objective_loss_fn(sde, model, objective, False, **loss_kwargs)))

    state = init_train_state(model, sde, jax.random.PRNGKey(seed), example_shape, optimizer,
                             loss_kwargs.get("continuous", True), init_params)
    checkpoints = CheckpointPolicy(workdir, schedule, **(checkpoint_kwargs or {}))
    state = checkpoints.restore(state, train_iter)
    step = int(state.step)
    if jax.process_index() == 0:
        log.info("Training from step %d to %d in %s", step, schedule.last_step, workdir)
    if on_start is not None:
        on_start(step)
    guard = NonFiniteGuard(step, checkpoints.last_saved)
    reports = _Reports(workdir, step, schedule.last_step, (local_batch or 0) * jax.process_count(), progress)
    stop = _StopFlag(handle_signals)
    try:
        while step < schedule.last_step:
            batch = put_batch(_next_batch(train_iter, n, with_labels), stacked=n > 1)
            state, metrics = p_step(state, batch)
            guard.add(metrics)
            step += n
            reports.advance(n)

            if schedule.is_log_step(step):
                lr = None if lr_schedule is None else float(lr_schedule(step - 1))
                record = reports.train(step, guard.check(), lr)
                if on_log is not None:
                    with reports.paused():
                        on_log(step, record)

            if p_eval is not None and step % schedule.eval_freq == 0:
                jax.block_until_ready(state.step)  # so that the pause excludes training work
                with reports.paused():
                    eval_loss = float(p_eval(state, put_batch(_select(_next_eval(eval_iter), with_labels))))
                reports.eval(step, eval_loss)

            kind = checkpoints.kind(step)
            if kind is not None:
                guard.check()  # no checkpoint after a non-finite step
                checkpoints.save(step, state, train_iter, kind)
                if kind == "periodic" and on_snapshot is not None:
                    jax.block_until_ready(state.step)
                    with reports.paused():
                        on_snapshot(state, step)

            # Several processes agree on stopping at log steps (a collective).
            if stop.requested(sync=step % schedule.log_freq == 0):
                guard.check()
                checkpoints.save(step, state, train_iter, "meta")
                checkpoints.wait_until_finished()
                reports.message(f"Stopped by {stop.name} at step {step}; checkpoint saved in {workdir}.")
                break
        guard.check()
        checkpoints.wait_until_finished()
    finally:
        stop.restore()
        checkpoints.close()
        reports.close()
    return state
