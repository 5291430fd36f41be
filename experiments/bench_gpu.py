"""One-command GPU benchmark: training, sampling and likelihood throughput, against the
reference PyTorch train step on the same GPU.

At the reference CIFAR-10 DDPM++ cont. config (`vp/cifar10_ddpmpp_continuous`,
61.8 M parameters, 32x32x3), batch 128:

- train step images/s: ours with n_jitted_steps 1 and 5, float32 and bfloat16
  (`model.compute_dtype`), and the reference's PyTorch step (yang-song/score_sde_pytorch,
  built by `experiments/reference_torch.py` from its own code), interleaved rounds;
- sampling: reverse-diffusion predictor steps per second, DPM-Solver++ (20 steps) images/s;
- likelihood: probability-flow ODE evaluations per second with the Hutchinson divergence.

Run it on a GPU machine (its image has torch, jax with CUDA, flax, optax, orbax,
diffrax). The reference's code must be at `.reference/score_sde_pytorch` (see
`experiments/bench_train_vs_reference.py` for how to export it); without it, or without
torch, the reference row is skipped with a note. About 5 minutes on an H100:

    python experiments/bench_gpu.py
    python experiments/bench_gpu.py --tiny     # CPU smoke test: small network, batch 4

Writes experiments/results/bench_gpu.{json,md} (not with --tiny), with the device named.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from scoresde import configs, experiment, likelihood, models, samplers, train  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def config_for(tiny: bool, compute_dtype: str = "float32"):
    config = configs.get_config("vp/cifar10_ddpmpp_continuous", lock=False)
    if tiny:
        config.model.nf, config.model.ch_mult, config.model.num_res_blocks = 16, (1, 2), 1
        config.data.image_size = 8
    config.model.compute_dtype = compute_dtype
    return config


def timed(fn, repeats: int) -> float:
    """Best seconds of one call of fn (blocked), after a warm-up call that compiles."""
    jax.block_until_ready(fn())
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - start)
    return best


def train_rows(tiny: bool, batch: int, repeats: int) -> list[dict]:
    rows = []
    for dtype in ("float32", "bfloat16"):
        config = config_for(tiny, dtype)
        sde, net = experiment.sde_from_config(config), experiment.model_from_config(config)
        shape = experiment.data_shape(config)
        optimizer = train.get_optimizer()
        loss_fn = train.objective_loss_fn(sde, net, "score", True, continuous=True,
                                          reduce_mean=config.training.reduce_mean)
        for n in (1, 5):
            state = train.init_train_state(net, sde, jax.random.PRNGKey(0), shape, optimizer)
            step = train.compile_step(train.make_train_step(loss_fn, optimizer, 0.9999), n)
            data = np.random.default_rng(0).uniform(-1, 1, ((n,) if n > 1 else ()) + (batch, *shape))
            x = train.put_batch(data.astype(np.float32), stacked=n > 1)
            holder = [state]

            def run():
                holder[0], metrics = step(holder[0], x)
                return metrics["loss"]

            seconds = timed(run, repeats)
            rows.append({"what": f"train step, ours, {dtype}, n_jitted_steps={n}",
                         "params": models.count_params(state.params), "images_per_s": n * batch / seconds})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def reference_row(tiny: bool, batch: int, repeats: int) -> dict:
    try:
        import torch

        import reference_torch
    except ImportError as err:
        return {"what": "train step, reference (PyTorch)", "skipped": f"torch not importable: {err}"}
    if not os.path.isdir(reference_torch.DEFAULT_REFERENCE_DIR):
        return {"what": "train step, reference (PyTorch)", "skipped": ".reference/score_sde_pytorch is missing"}
    device = "cuda" if torch.cuda.is_available() else "cpu"
    step, info = reference_torch.build(nf=16 if tiny else 128, batch=batch, device=device)
    seconds = min(reference_torch.time_steps(step, 1)[0] for _ in range(repeats + 1))
    return {"what": f"train step, reference (PyTorch {info['torch']}, {device})", "params": info["params"],
            "images_per_s": batch / seconds}


def sampling_rows(tiny: bool, batch: int, repeats: int) -> list[dict]:
    config = config_for(tiny)
    sde, net = experiment.sde_from_config(config), experiment.model_from_config(config)
    shape = (batch, *experiment.data_shape(config))
    params = jax.jit(lambda k: net.init({"params": k, "dropout": k}, jnp.zeros(shape), jnp.ones(batch))["params"])(
        jax.random.PRNGKey(0)
    )
    score = models.get_score_fn(sde, net, params)
    key = jax.random.PRNGKey(1)
    steps = 10
    rd = timed(lambda: samplers.sample(key, sde, score, shape, "reverse_diffusion", num_steps=1000)[0], repeats)
    dpm = timed(lambda: samplers.sample(key, sde, score, shape, "dpm_solver++", num_steps=20)[0], repeats)
    x = jax.random.uniform(key, shape) * 2 - 1
    ll = likelihood.log_likelihood(key, sde, score, x, method="euler", num_steps=steps)  # fixed NFE
    ode_s = timed(lambda: likelihood.log_likelihood(key, sde, score, x, method="euler", num_steps=steps)[0], repeats)
    return [
        {"what": "reverse diffusion, 1000 steps", "steps_per_s": 1000 / rd, "images_per_s": batch / rd},
        {"what": "DPM-Solver++(2M), 20 steps", "images_per_s": batch / dpm},
        {"what": f"PF-ODE likelihood, Hutchinson (1 Rademacher probe), {ll[2]} evaluations",
         "evaluations_per_s": ll[2] / ode_s, "images_per_s": batch / ode_s},
    ]


def device_name() -> str:
    device = jax.devices()[0]
    return f"{getattr(device, 'device_kind', device.platform)} ({jax.default_backend()}), jax {jax.__version__}, " \
           f"{platform.python_version()}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="CPU smoke test: small network, batch 4, not recorded")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    batch = 4 if args.tiny else 128
    rows = train_rows(args.tiny, batch, args.repeats)
    rows.append(reference_row(args.tiny, batch, args.repeats))
    reference = rows[-1].get("images_per_s")
    print(json.dumps(rows[-1]), flush=True)
    rows += sampling_rows(args.tiny, batch, args.repeats)
    command = "python experiments/bench_gpu.py" + (" --tiny" if args.tiny else "")
    lines = [f"# GPU benchmark: {device_name()}", "", f"Command: `{command}`; batch {batch}, best of "
             f"{args.repeats}. Network: DDPM++ of `vp/cifar10_ddpmpp_continuous`{' (tiny)' if args.tiny else ''}.",
             "", "| what | images/s | other | vs reference train step |", "|---|---|---|---|"]
    for r in rows:
        other = ", ".join(f"{k} {v:.1f}" for k, v in r.items() if k.endswith("_per_s") and k != "images_per_s")
        ratio = f"{r['images_per_s'] / reference:.2f}x" if reference and r["what"].startswith("train") and \
            "images_per_s" in r else ""
        lines.append(f"| {r['what']} | {r.get('images_per_s', 0):.1f} | {other or r.get('skipped', '')} | {ratio} |")
    report = "\n".join(lines) + "\n"
    print(report)
    if not args.tiny:
        os.makedirs(RESULTS, exist_ok=True)
        with open(os.path.join(RESULTS, "bench_gpu.json"), "w") as f:
            json.dump({"device": device_name(), "command": command, "rows": rows}, f, indent=1)
        with open(os.path.join(RESULTS, "bench_gpu.md"), "w") as f:
            f.write(report)


if __name__ == "__main__":
    main()
