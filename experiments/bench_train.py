"""Training throughput and the overhead of the full train step over bare forward+backward.

    python experiments/bench_train.py [--quick] [--configs cifar digits]

For each config it times, in interleaved rounds (best round kept, as the 2-core
machine is shared):

  bare   jit(grad(loss)): the model's forward + backward through the training loss
  step   the compiled train step (`scoresde.train.compile_step`): loss, gradients,
         clipping, Adam, warmup, EMA, RNG split, with the state donated
  loop   `scoresde.train.train` end to end (data iterator, flips, host-to-device
         copies, metrics; no checkpoint inside the timed window), from its metrics

and reports images/s and the ratios step/bare and loop/bare (target: < 1.10).

Configs (CPU-sized; the reference CIFAR-10 DDPM++ has nf=128):
  cifar   DDPM++ (vp/cifar10_ddpmpp_continuous) at 32x32x3 with nf=32, batch 16
  digits  NCSN++-style U-Net for 8x8x1 digits (nf=32, ch_mult (1, 2), 2 res blocks,
          attention at 4x4), batch 128, on the bundled scikit-learn digits
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from scoresde import losses, sde_lib, train
from scoresde.data import ArraySource, DataIterator, get_dataset
from scoresde.models import count_params, get_model, model_kwargs
from scoresde.models.presets import DDPMPP_CONTINUOUS


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def configs(quick: bool):
    cifar = model_kwargs("ncsnpp", {**DDPMPP_CONTINUOUS, "nf": 32})
    digits = dict(
        nf=32, ch_mult=(1, 2), num_res_blocks=2, attn_resolutions=(4,), dropout=0.1, fir=False,
        progressive_input="none", embedding_type="positional", scale_by_sigma=False, centered=True,
    )
    return {
        "cifar": dict(model=get_model("ncsnpp", **cifar), shape=(32, 32, 3), batch=16, k=2 if quick else 3,
                      rounds=2 if quick else 5, label="DDPM++ nf=32, 32x32x3 (CIFAR-10-sized), VP SDE"),
        "digits": dict(model=get_model("ncsnpp", **digits), shape=(8, 8, 1), batch=128, k=3 if quick else 5,
                       rounds=2 if quick else 8, label="U-Net nf=32 ch_mult (1,2), 8x8x1 digits, VP SDE"),
    }


def timed(fn, k):
    """Seconds for k back-to-back calls of fn (dispatched asynchronously), blocked at the end."""
    t = time.perf_counter()
    out = [fn() for _ in range(k)]
    jax.block_until_ready(out)
    return time.perf_counter() - t


def bench(name, cfg):
    """Interleaved rounds: k loop steps inside `train`, then (from its on_log hook) k bare
    forward+backward calls and k compiled train steps; the best round of each is kept."""
    model, shape, B, k, rounds = cfg["model"], cfg["shape"], cfg["batch"], cfg["k"], cfg["rounds"]
    sde = sde_lib.VPSDE()
    opt = train.get_optimizer(lr=2e-4, warmup=5000, grad_clip=1.0)
    state = train.init_train_state(model, sde, jax.random.PRNGKey(0), shape, opt)
    n_params = count_params(state.params)
    x = train.put_batch(np.random.default_rng(0).uniform(-1, 1, (B,) + shape).astype(np.float32))
    loss_fn = losses.get_loss_fn(sde, model, train=True)
    key = jax.random.PRNGKey(1)

    bare_fn = jax.jit(jax.grad(loss_fn))
    params = jax.tree.map(jnp.copy, state.params)  # the train step donates state.params
    step = train.compile_step(train.make_train_step(loss_fn, opt, 0.9999), 1)
    holder = [state]

    def run_step():
        holder[0], metrics = step(holder[0], x)
        return metrics["loss"]

    t0 = time.perf_counter()
    timed(lambda: bare_fn(params, key, x), 1)
    timed(run_step, 1)
    compile_s = time.perf_counter() - t0

    bare, steps, loop = [], [], []

    def on_log(step_no, record):
        if step_no > k:  # the first interval holds compilation
            loop.append(1.0 / record["steps_per_sec"])
        bare.append(timed(lambda: bare_fn(params, key, x), k) / k)
        steps.append(timed(run_step, k) / k)

    if name == "digits":
        data = get_dataset("digits", "train", batch_size=B, centered=True, random_flip=True)
    else:
        images = np.random.default_rng(0).random((4 * B,) + shape).astype(np.float32)
        data = DataIterator(ArraySource(images), B, random_flip=True, centered=True)
    with tempfile.TemporaryDirectory() as workdir:
        schedule = train.Schedule(n_iters=k * (rounds + 1), log_freq=k, snapshot_freq=10**9,
                                  snapshot_freq_for_preemption=10**9)
        train.train(model, sde, data, workdir, optimizer=opt, schedule=schedule, progress=False, on_log=on_log)
    t_bare, t_step, t_loop = min(bare), min(steps), min(loop)
    return {
        "config": name,
        "model": cfg["label"],
        "params": n_params,
        "batch": B,
        "rounds": rounds,
        "steps_per_round": k,
        "compile_bare_and_step_s": compile_s,
        "bare_fwd_bwd_s": t_bare,
        "train_step_s": t_step,
        "loop_step_s": t_loop,
        "median_bare_s": float(np.median(bare)),
        "median_step_s": float(np.median(steps)),
        "median_loop_s": float(np.median(loop)),
        "bare_img_s": B / t_bare,
        "step_img_s": B / t_step,
        "loop_img_s": B / t_loop,
        "step_over_bare": t_step / t_bare,
        "loop_over_bare": t_loop / t_bare,
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="+", default=["digits", "cifar"])
    p.add_argument("--quick", action="store_true", help="fewer repetitions (a smoke test)")
    p.add_argument("--rounds", type=int, default=None, help="override the number of rounds")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args()
    cfgs = configs(args.quick)
    if args.rounds:
        for cfg in cfgs.values():
            cfg["rounds"] = args.rounds
    print(f"machine: {cpu_name()}, {os.cpu_count()} cores; jax {jax.__version__}, backend {jax.default_backend()}, "
          f"{jax.device_count()} device(s); load average {os.getloadavg()[0]:.1f}", flush=True)
    results = []
    for name in args.configs:
        r = bench(name, cfgs[name])
        results.append(r)
        print(
            f"{name:7s} {r['model']}: {r['params'] / 1e6:.2f} M params, batch {r['batch']}; best of "
            f"{r['rounds']} interleaved rounds of {r['steps_per_round']} steps (medians in the JSON)\n"
            f"        bare fwd+bwd {r['bare_fwd_bwd_s'] * 1e3:8.1f} ms ({r['bare_img_s']:7.1f} img/s)\n"
            f"        train step   {r['train_step_s'] * 1e3:8.1f} ms ({r['step_img_s']:7.1f} img/s)"
            f"  step/bare = {r['step_over_bare']:.3f}\n"
            f"        train loop   {r['loop_step_s'] * 1e3:8.1f} ms ({r['loop_img_s']:7.1f} img/s)"
            f"  loop/bare = {r['loop_over_bare']:.3f}",
            flush=True,
        )
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    jnp.zeros(())  # initialize the backend before timing
    main()
