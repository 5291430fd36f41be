"""One-command GPU benchmark: training, sampling and likelihood throughput, against the
reference PyTorch train step on the same GPU.

At the reference CIFAR-10 DDPM++ cont. config (`vp/cifar10_ddpmpp_continuous`,
61.8 M parameters, 32x32x3), batch 128:

- train step (loss, backward, clipping, Adam, EMA) images/s, interleaved rounds over:
  the reference's PyTorch step (yang-song/score_sde_pytorch, built by
  `experiments/reference_torch.py` from its own code) and ours with n_jitted_steps 1 and 5,
  float32 and bfloat16 compute (`model.compute_dtype`), gradient checkpointing
  (`model.remat`) and 4 micro-batches (`training.micro_batches`); with each variant's peak
  memory (XLA's `memory_analysis()`; torch's `max_memory_allocated` for the reference) and
  compile time;
- sampling: reverse-diffusion predictor steps per second, DPM-Solver++(2M) 20-step images/s;
- likelihood: probability-flow ODE evaluations per second with the Hutchinson divergence.

Run it on a GPU machine (its image has torch, jax with CUDA, flax, optax, orbax, diffrax;
carry ml-collections as a wheel). The reference's code must be at
`.reference/score_sde_pytorch` (see `experiments/bench_train_vs_reference.py` for how to
export it); without it, or without torch, the reference row says why it was skipped.

    python experiments/bench_gpu.py --out DIR     # about 5 minutes on an H200
    python experiments/bench_gpu.py --tiny        # CPU smoke test: small network, batch 4

Parts that would start after `--budget-s` seconds are skipped and marked so. Results are
written, after each part, to DIR/bench_gpu.{json,md} (default experiments/results; with
--tiny only if --out is given), with the device named.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

# The reference's torch step shares the GPU: JAX must not take 75% of it up front.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_memory  # noqa: E402
from scoresde import experiment, likelihood, models, samplers, train  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
TRAIN_VARIANTS = [  # (name, n_jitted_steps, memory options)
    ("float32", 1, {}),
    ("bfloat16", 1, {"compute_dtype": "bfloat16"}),
    ("float32", 5, {}),
    ("bfloat16", 5, {"compute_dtype": "bfloat16"}),
    ("float32, remat", 1, {"remat": True}),
    ("float32, 4 micro-batches", 1, {"micro_batches": 4}),
]


class Budget:
    """Wall-clock budget: `allows(cost)` is False once starting a part of that cost would overrun."""

    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def allows(self, cost: float) -> bool:
        return time.monotonic() + cost < self.end


def ours(setting, n: int, options: dict):
    """Our compiled train step: (row, run(k) -> seconds for k calls of n steps each)."""
    nf, size, batch = setting
    micro_batches = options.get("micro_batches", 1)
    model_options = {k: v for k, v in options.items() if k != "micro_batches"}
    step, _, x_spec, net = bench_memory.train_step(nf, size, batch, micro_batches=micro_batches, **model_options)
    config = bench_memory.reference_config(nf, size, **model_options)
    state = train.init_train_state(net, experiment.sde_from_config(config), jax.random.PRNGKey(0),
                                   x_spec.shape[1:], train.get_optimizer())
    data = np.random.default_rng(0).uniform(-1, 1, ((n,) if n > 1 else ()) + x_spec.shape).astype(np.float32)
    x = train.put_batch(data, stacked=n > 1)
    start = time.perf_counter()
    compiled = train.compile_step(step, n).lower(state, x).compile()
    compile_s = time.perf_counter() - start
    memory = compiled.memory_analysis()
    holder = [state]

    def run(k: int) -> float:
        start = time.perf_counter()
        for _ in range(k):
            holder[0], metrics = compiled(holder[0], x)
        loss = float(np.asarray(metrics["loss"]).ravel()[-1])
        if not np.isfinite(loss):
            raise FloatingPointError(f"non-finite loss {loss}")
        return time.perf_counter() - start

    run(1)  # warm-up
    row = {"params": models.count_params(state.params), "compile_s": compile_s,
           "temp_gb": memory.temp_size_in_bytes / 2**30 if memory else None,
           "argument_gb": memory.argument_size_in_bytes / 2**30 if memory else None}
    return row, run


def reference(setting):
    """The reference's torch step: (row, run(k) -> seconds for k steps), or (row with 'skipped', None)."""
    nf, _, batch = setting
    try:
        import torch

        import reference_torch
        device = "cuda" if torch.cuda.is_available() else "cpu"
        step, info = reference_torch.build(nf=nf, batch=batch, device=device)
    except Exception as err:  # missing torch, missing reference code, a build failure: say which
        return {"skipped": f"{type(err).__name__}: {err}"}, None
    reference_torch.time_steps(step, 2)  # warm-up
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
    row = {"params": info["params"], "torch": info["torch"], "device": device, "peak_allocated_gb": peak}
    return row, lambda k: reference_torch.time_steps(step, k)[0]


def train_rows(setting, budget: Budget, rounds: int, steps_per_round: int, write) -> list[dict]:
    """Build every contender, then time them in interleaved rounds; images/s from the best round."""
    batch = setting[2]
    rows, runs = [], []
    row, run = reference(setting)
    rows.append({"what": "train step, reference (PyTorch)", "n_jitted_steps": 1, **row})
    runs.append((rows[-1], run, 1))
    write(rows)
    compile_cost = 0.0
    for name, n, options in TRAIN_VARIANTS:
        what = f"train step, ours, {name}, n_jitted_steps={n}"
        if not budget.allows(2 * compile_cost):
            rows.append({"what": what, "skipped": "time budget"})
            continue
        try:
            row, run = ours(setting, n, options)
        except Exception as err:
            rows.append({"what": what, "skipped": f"{type(err).__name__}: {err}"})
            continue
        compile_cost = max(compile_cost, row["compile_s"])
        rows.append({"what": what, "n_jitted_steps": n, **row})
        runs.append((rows[-1], run, n))
        print(json.dumps(rows[-1]), flush=True)
        write(rows)
    for _ in range(rounds):
        for row, run, n in runs:
            if run is None:
                continue
            calls = max(1, steps_per_round // n)
            seconds = run(calls) / (calls * n)
            row.setdefault("seconds_per_step", []).append(seconds)
            row["images_per_s"] = batch / min(row["seconds_per_step"])
    write(rows)
    return rows


def timed(fn, repeats: int) -> tuple[float, float]:
    """(seconds of the first call, which compiles; best seconds of `repeats` more)."""
    start = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - start
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - start)
    return first, best


def sampling_rows(setting, budget: Budget, repeats: int, rd_steps: int) -> list[dict]:
    nf, size, batch = setting
    config = bench_memory.reference_config(nf, size)
    sde, net = experiment.sde_from_config(config), experiment.model_from_config(config)
    shape = (batch, size, size, 3)
    params = jax.jit(lambda key: net.init({"params": key, "dropout": key}, jnp.zeros(shape), jnp.ones(batch))["params"])(
        jax.random.PRNGKey(0))
    score = models.get_score_fn(sde, net, params)
    key = jax.random.PRNGKey(1)
    x = jax.random.uniform(key, shape) * 2 - 1
    cases = [
        (f"reverse diffusion, {rd_steps} steps", rd_steps,
         lambda: samplers.sample(key, sde, score, shape, "reverse_diffusion", num_steps=rd_steps)[0]),
        ("DPM-Solver++(2M), 20 steps", 20,
         lambda: samplers.sample(key, sde, score, shape, "dpm_solver++", num_steps=20)[0]),
        ("PF-ODE likelihood, Hutchinson (1 Rademacher probe), Euler, 10 steps", 10,
         lambda: likelihood.log_likelihood(key, sde, score, x, method="euler", num_steps=10)[0]),
    ]
    rows = []
    for what, evaluations, fn in cases:
        if not budget.allows(60):
            rows.append({"what": what, "skipped": "time budget"})
            continue
        first, best = timed(fn, repeats)
        rows.append({"what": what, "images_per_s": batch / best, "evaluations_per_s": evaluations / best,
                     "first_call_s": first})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def device_name() -> str:
    device = jax.devices()[0]
    return f"{getattr(device, 'device_kind', device.platform)} ({jax.default_backend()}), jax {jax.__version__}, " \
           f"Python {platform.python_version()}"


def report(rows: list[dict], command: str, setting, rounds: int) -> str:
    nf, size, batch = setting
    reference_ips = rows[0].get("images_per_s") if rows and "reference" in rows[0]["what"] else None
    lines = [f"# GPU benchmark: {device_name()}", "",
             f"Command: `{command}`. Network: DDPM++ of `vp/cifar10_ddpmpp_continuous` (nf = {nf}, {size}x{size}x3), "
             f"batch {batch}. Train steps: interleaved rounds ({rounds}), best round; memory: XLA's "
             "`memory_analysis()` of the compiled step (temporaries + arguments), torch's `max_memory_allocated`.",
             "", "| what | images/s | vs reference | memory (GiB) | compile (s) | note |", "|---|---|---|---|---|---|"]
    for r in rows:
        ips = r.get("images_per_s")
        ratio = f"{ips / reference_ips:.2f}x" if ips and reference_ips and r["what"].startswith("train") else ""
        if r.get("temp_gb") is not None:
            memory = f"{r['temp_gb'] + r['argument_gb']:.1f}"
        else:
            memory = f"{r['peak_allocated_gb']:.1f}" if r.get("peak_allocated_gb") is not None else ""
        note = r.get("skipped") or (f"{r['evaluations_per_s']:.1f} evaluations/s" if "evaluations_per_s" in r else "")
        compile_s = r.get("compile_s", r.get("first_call_s"))
        lines.append(f"| {r['what']} | {f'{ips:.1f}' if ips else ''} | {ratio} | {memory} | "
                     f"{f'{compile_s:.1f}' if compile_s else ''} | {note} |")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="CPU smoke test: small network, batch 4")
    parser.add_argument("--out", default=None, help="folder for bench_gpu.{json,md} (default experiments/results)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds of the train steps")
    parser.add_argument("--steps-per-round", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2, help="timed calls of each sampler after the first")
    parser.add_argument("--rd-steps", type=int, default=200, help="reverse-diffusion steps per timed call")
    parser.add_argument("--budget-s", type=float, default=420.0, help="skip parts that would start after this")
    parser.add_argument("--parts", default="train,sampling",
                        help="comma-separated: train, sampling (a subset writes bench_gpu_<part>.{json,md})")
    args = parser.parse_args()
    for name in ("rounds", "steps_per_round", "repeats", "rd_steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if not args.budget_s > 0:
        parser.error("--budget-s must be > 0")
    parts = args.parts.split(",")
    if not parts or set(parts) - {"train", "sampling"}:
        parser.error(f"--parts: choose from train, sampling; got {args.parts!r}")
    name = "bench_gpu" if set(parts) == {"train", "sampling"} else "bench_gpu_" + "_".join(parts)
    budget = Budget(args.budget_s)
    setting = (16, 8, 4) if args.tiny else (128, 32, 128)  # nf, image size, batch
    out = args.out or (None if args.tiny else RESULTS)
    command = " ".join(["python experiments/bench_gpu.py", *sys.argv[1:]])
    print(f"device: {device_name()}", flush=True)

    def write(rows):
        text = report(rows, command, setting, args.rounds)
        if out:
            os.makedirs(out, exist_ok=True)
            with open(os.path.join(out, name + ".json"), "w") as f:
                json.dump({"device": device_name(), "command": command, "rows": rows}, f, indent=1)
            with open(os.path.join(out, name + ".md"), "w") as f:
                f.write(text)
        return text

    rows = train_rows(setting, budget, args.rounds, args.steps_per_round, write) if "train" in parts else []
    if "sampling" in parts:
        rows += sampling_rows(setting, budget, args.repeats, args.rd_steps)
    print(write(rows))


if __name__ == "__main__":
    main()
