"""Training: optimizer, train state, the compiled data-parallel step, and the loop.

    state = init_train_state(model, sde, key, example_shape, optimizer)
    step_fn = make_train_step(loss_fn, optimizer, ema_rate)
    p_step = compile_step(step_fn, n_jitted_steps)      # jit, donate state, shard batch
    state, metrics = p_step(state, put_batch(images))

or all of it, with checkpoints, metrics and resumption, `train(model, sde, data, workdir, ...)`.

Optimization follows the reference `optimization_manager`: gradients are clipped to
global norm `grad_clip` (negative: off), then Adam (b1=`beta1`, b2=0.999,
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

import functools
import json
import logging
import os
import signal
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
from scoresde.models.utils import noise_labels

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
    """lr * min(count / warmup, 1), with count the number of updates already made."""
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
    """Clip by global norm (if grad_clip >= 0), Adam, linear warmup: the reference's optimizer."""
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


def init_params(model: nn.Module, sde: sde_lib.SDE, key, example_shape, continuous: bool = True):
    """Initialize the network's parameters on a batch of one zero example `example_shape`."""
    x = jnp.zeros((1,) + tuple(example_shape), jnp.float32)
    labels = noise_labels(sde, jnp.full((1,), 0.5 * sde.T, jnp.float32), continuous)
    k_params, k_dropout = jax.random.split(key)
    variables = model.init({"params": k_params, "dropout": k_dropout}, x, labels, train=False)
    return variables["params"]


def init_train_state(
    model: nn.Module,
    sde: sde_lib.SDE,
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


def make_train_step(loss_fn, optimizer: optax.GradientTransformation, ema_rate: float):
    """One optimization step `(state, batch) -> (state, {"loss", "grad_norm"})`.

    `loss_fn(params, key, batch)` is a `losses` function. The loss reported is that
    of the parameters before the update, as the reference.
    """

    def step_fn(state: TrainState, batch):
        rng, step_rng = jax.random.split(state.rng)
        loss, grads = jax.value_and_grad(loss_fn)(state.params, step_rng, batch)
        grad_norm = optax.global_norm(grads)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
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
        """Whether any process was asked to stop (`sync`: agree across processes)."""
        flag = self.signum is not None
        if sync and jax.process_count() > 1:
            from jax.experimental import multihost_utils

            flag = bool(np.any(multihost_utils.process_allgather(np.asarray(flag, np.int32))))
        return flag


def _select(batch, with_labels: bool):
    """The images of a batch, or {"image", "label"} when the objective needs labels."""
    if not with_labels:
        return losses_lib.batch_images(batch)
    if not (isinstance(batch, dict) and "label" in batch):
        raise ValueError("This objective needs labelled batches (dicts with 'image' and 'label').")
    return {"image": batch["image"], "label": batch["label"]}


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


def _data_state(data) -> dict:
    return data.get_state() if hasattr(data, "get_state") else {}


# ----------------------------------------------------------------------------- train


def check_schedule(n_iters: int, n_jitted_steps: int, **freqs: int) -> None:
    """Raise ValueError unless n_iters > 0, n_jitted_steps >= 1 and every frequency
    (log_freq, eval_freq, snapshot_freq, ...) is a positive multiple of n_jitted_steps."""
    if not isinstance(n_jitted_steps, int) or n_jitted_steps < 1:
        raise ValueError(f"training.n_jitted_steps must be >= 1 (an integer), got {n_jitted_steps!r}.")
    for name, freq in freqs.items():
        if freq <= 0 or freq % n_jitted_steps:
            raise ValueError(
                f"training.{name}={freq} must be a positive multiple of n_jitted_steps={n_jitted_steps} "
                "(steps run in groups of n_jitted_steps)."
            )
    if n_iters <= 0:
        raise ValueError(f"training.n_iters must be positive, got {n_iters}.")


def train(
    model: nn.Module,
    sde: sde_lib.SDE,
    train_iter: Iterator,
    workdir: str,
    *,
    n_iters: int,
    # training.*
    continuous: bool = True,
    reduce_mean: bool = False,
    likelihood_weighting: bool = False,
    loss_eps: float = 1e-5,
    parameterization: str | None = None,
    objective: str = "score",
    condition: Callable | None = None,
    p_uncond: float = 0.0,
    log_freq: int = 50,
    eval_freq: int = 100,
    snapshot_freq: int = 50000,
    snapshot_freq_for_preemption: int = 10000,
    n_jitted_steps: int = 1,
    # optim.*
    lr: float = 2e-4,
    warmup: int = 5000,
    grad_clip: float = 1.0,
    beta1: float = 0.9,
    optim_eps: float = 1e-8,
    weight_decay: float = 0.0,
    # model.ema_rate
    ema_rate: float | None = None,
    seed: int = 0,
    eval_iter: Iterator | None = None,
    example_shape=None,
    init_params=None,
    on_snapshot: Callable[[TrainState, int], None] | None = None,
    on_log: Callable[[int, dict], None] | None = None,
    progress: bool = True,
    handle_signals: bool = True,
    async_checkpointing: bool = True,
    max_to_keep: int | None = None,
) -> TrainState:
    """Train a score model; resume from `workdir` if it holds checkpoints.

    Argument names follow the reference config: training.{n_iters, continuous,
    reduce_mean, likelihood_weighting, log_freq, eval_freq, snapshot_freq,
    snapshot_freq_for_preemption, n_jitted_steps}, optim.{lr, warmup, grad_clip,
    beta1, eps -> optim_eps, weight_decay}, model.ema_rate (None: 0.999 for VE, 0.9999
    otherwise), seed. `loss_eps` is the smallest time of the continuous loss (1e-5,
    the reference's).

    `objective`: "score" (denoising score matching, `losses.get_loss_fn`) or
    "classifier" (a noise-conditional classifier for guidance,
    `losses.get_classifier_loss_fn`; batches need labels). `condition(batch) -> y` and
    `p_uncond` train a conditional score network with condition dropout.

    Args:
      model: the score network (Flax linen).
      sde: the forward SDE.
      train_iter: an iterator of this process's batches (`get_dataset`), arrays
        `(B_local, ...)` or dicts with "image"; with `get_state`/`set_state` the data
        position is checkpointed and restored too.
      workdir: checkpoints (`checkpoints/`, `checkpoints-meta/`) and `metrics.jsonl`.
      n_iters: total number of optimizer steps.
      eval_iter: optional iterator (one from `get_dataset` starts over when it ends);
        the EMA parameters' loss on its next batch is logged every `eval_freq` steps.
      example_shape: shape of one example (default: the iterator's `element_shape`).
      init_params: start from these parameters instead of a fresh initialization.
      on_snapshot: `on_snapshot(state, step)`, called on every process after each
        periodic checkpoint (e.g. for sample grids). The next step donates `state`'s
        buffers: use it inside the hook, do not keep it.
      on_log: `on_log(step, metrics)`, called on every process at each log.
      progress: show a tqdm bar (process 0).
      handle_signals: SIGTERM / SIGINT save a preemption checkpoint and return.

    Returns the final state. Raises `NonFiniteLossError` when the loss or gradient
    becomes NaN/inf; the checkpoints written before stay (none is written after).
    Checkpoints are only written after all losses up to that step were checked finite.
    """
    check_schedule(n_iters, n_jitted_steps, log_freq=log_freq, eval_freq=eval_freq, snapshot_freq=snapshot_freq,
                   snapshot_freq_for_preemption=snapshot_freq_for_preemption)
    # As the reference, the last group of n_jitted_steps may run past n_iters (its configs
    # use n_iters = 1 + a multiple of n_jitted_steps).
    n_iters = -(-n_iters // n_jitted_steps) * n_jitted_steps
    ema_rate = default_ema_rate(sde) if ema_rate is None else float(ema_rate)
    if example_shape is None:
        example_shape = getattr(train_iter, "element_shape", None)
        if example_shape is None:
            raise ValueError("Pass example_shape: the data iterator has no element_shape.")
    local_batch = getattr(train_iter, "local_batch_size", None)
    if local_batch is not None:
        parallel.check_divisible(local_batch * jax.process_count())

    optimizer = get_optimizer(lr, warmup, grad_clip, beta1, optim_eps, weight_decay=weight_decay)
    loss_kw = dict(
        reduce_mean=reduce_mean,
        continuous=continuous,
        likelihood_weighting=likelihood_weighting,
        eps=loss_eps,
        parameterization=parameterization,
    )
    if objective == "score":
        loss_kw.update(condition=condition, p_uncond=p_uncond)
        get_loss = functools.partial(losses_lib.get_loss_fn, sde, model, **loss_kw)
    elif objective == "classifier":
        get_loss = functools.partial(losses_lib.get_classifier_loss_fn, sde, model, continuous=continuous, eps=loss_eps)
    else:
        raise ValueError(f"Unknown training objective {objective!r}; valid: score, classifier.")
    with_labels = objective == "classifier" or condition is not None
    p_step = compile_step(make_train_step(get_loss(train=True), optimizer, ema_rate), n_jitted_steps)
    p_eval = None
    if eval_iter is not None:
        p_eval = compile_eval_step(make_eval_step(get_loss(train=False)))

    state = init_train_state(
        model, sde, jax.random.PRNGKey(seed), example_shape, optimizer, continuous=continuous, params=init_params
    )
    os.makedirs(workdir, exist_ok=True)
    ckpt = CheckpointManager(workdir, max_to_keep=max_to_keep, async_save=async_checkpointing)
    restored = ckpt.restore_latest(state)
    if restored is not None:
        state, data_state = restored
        if data_state and hasattr(train_iter, "set_state"):
            train_iter.set_state(data_state)
    step = int(state.step)
    is_main = jax.process_index() == 0
    if is_main:
        log.info("Training from step %d to %d in %s", step, n_iters, workdir)

    metrics_path = os.path.join(workdir, "metrics.jsonl")
    metrics_file = open(metrics_path, "a") if is_main else None
    bar = None
    if progress and is_main:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_iters, initial=step, unit="step", dynamic_ncols=True, desc="train")
    stop = _StopFlag(handle_signals)
    schedule = learning_rate_schedule(lr, warmup)
    examples_per_step = (local_batch or 0) * jax.process_count()

    postfix: dict = {}
    pending: list[dict] = []  # device metrics not yet checked
    last_good = step  # all losses up to here are known finite
    t_log, step_log = time.perf_counter(), step
    paused = 0.0  # seconds spent in evaluation and hooks since the last log (not training)

    def write(record):
        if metrics_file is not None:
            metrics_file.write(json.dumps(record) + "\n")
            metrics_file.flush()

    def check_pending() -> dict | None:
        """Fetch pending metrics; raise on a non-finite value. Returns their summary."""
        nonlocal pending, last_good
        if not pending:
            return None
        fetched = jax.device_get(pending)
        loss = np.concatenate([np.atleast_1d(m["loss"]) for m in fetched])
        gnorm = np.concatenate([np.atleast_1d(m["grad_norm"]) for m in fetched])
        first = last_good + 1
        pending = []
        bad = ~(np.isfinite(loss) & np.isfinite(gnorm))
        if bad.any():
            at = first + int(np.argmax(bad))
            ckpt.wait_until_finished()
            saved = ckpt.latest()
            where = f"the last good checkpoint is step {saved[0]} in {workdir}" if saved else "no checkpoint was saved"
            raise NonFiniteLossError(
                f"Non-finite training loss or gradient at step {at} (loss={loss[np.argmax(bad)]}, "
                f"grad_norm={gnorm[np.argmax(bad)]}); training stopped and no later checkpoint was written; "
                f"{where}. Lower optim.lr, raise optim.warmup or check the data."
            )
        last_good = first + len(loss) - 1
        return {"loss": float(loss.mean()), "last_loss": float(loss[-1]), "grad_norm": float(gnorm[-1])}

    def save(kind):
        check_pending()
        latest = ckpt.latest()
        if latest is not None and latest[0] >= step:
            return
        if ckpt.save(step, state, _data_state(train_iter), kind=kind) and is_main:
            log.info("Saved %s checkpoint at step %d", kind, step)

    try:
        while step < n_iters:
            batch = put_batch(_next_batch(train_iter, n_jitted_steps, with_labels), stacked=n_jitted_steps > 1)
            state, metrics = p_step(state, batch)
            pending.append(metrics)
            step += n_jitted_steps
            if bar is not None:
                bar.update(n_jitted_steps)

            if step % log_freq == 0 or step == n_iters:
                summary = check_pending()
                now = time.perf_counter()
                rate = (step - step_log) / max(now - t_log - paused, 1e-9)
                t_log, step_log, paused = now, step, 0.0
                record = {
                    "step": step,
                    **summary,
                    "lr": float(schedule(step - 1)),
                    "steps_per_sec": rate,
                    "examples_per_sec": rate * examples_per_step,
                    "time": time.time(),
                }
                write(record)
                if bar is not None:
                    postfix.update(loss=f"{summary['loss']:.4g}", img_s=f"{rate * examples_per_step:.1f}")
                    bar.set_postfix(postfix)
                if on_log is not None:
                    t_hook = time.perf_counter()
                    on_log(step, record)
                    paused += time.perf_counter() - t_hook

            if p_eval is not None and step % eval_freq == 0:
                jax.block_until_ready(state.step)  # so that the pause excludes training work
                t_hook = time.perf_counter()
                eval_batch = put_batch(_select(_next_eval(eval_iter), with_labels))
                eval_loss = float(p_eval(state, eval_batch))
                paused += time.perf_counter() - t_hook
                write({"step": step, "eval_loss": eval_loss})
                if bar is not None:
                    postfix.update(eval_loss=f"{eval_loss:.4g}")
                    bar.set_postfix(postfix)

            if step % snapshot_freq == 0 or step == n_iters:
                save("periodic")
                if on_snapshot is not None:
                    jax.block_until_ready(state.step)
                    t_hook = time.perf_counter()
                    on_snapshot(state, step)
                    paused += time.perf_counter() - t_hook
            elif step % snapshot_freq_for_preemption == 0:
                save("meta")

            # Multi-process runs agree on stopping at log steps (a collective).
            if stop.requested(sync=False) if jax.process_count() == 1 else (
                step % log_freq == 0 and stop.requested(sync=True)
            ):
                name = signal.Signals(stop.signum).name if stop.signum else "a signal on another process"
                save("meta")
                ckpt.wait_until_finished()
                if is_main:
                    msg = f"Stopped by {name} at step {step}; checkpoint saved in {workdir}."
                    log.warning(msg)
                    if bar is not None:
                        bar.write(msg)
                break
        check_pending()
        ckpt.wait_until_finished()
    finally:
        stop.restore()
        ckpt.close()
        if bar is not None:
            bar.close()
        if metrics_file is not None:
            metrics_file.close()
    return state

