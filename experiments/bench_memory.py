"""Memory options of training, measured: peak temporary memory of the compiled train step
(XLA's `compiled.memory_analysis()`) for the reference-size DDPM++ at batch 128, and train
step throughput on a smaller DDPM++ (nf = 32, batch 16), for

  plain float32 | gradient checkpointing (model.remat) | 4 micro-batches (training.micro_batches)
  | bfloat16 compute (model.compute_dtype) | all three | 5 steps per call (training.n_jitted_steps)

    python experiments/bench_memory.py            # ~12 minutes on 2 CPU cores
    python experiments/bench_memory.py --tiny     # smoke test
    python experiments/bench_memory.py --lax-gradient --variants micro_batches=4,n_jitted_steps=5

Micro-batches and several steps per call run the gradient inside a `lax.scan`. `--lax-gradient`
measures them with JAX's own convolution gradient instead of `models.convolution.conv_general_dilated`
(the state before it; see its docstring) and writes bench_memory_lax_gradient.{json,md}.

Writes experiments/results/bench_memory.{json,md} (not with --tiny).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time

import jax
import jax.numpy as jnp

from scoresde import configs, experiment, losses, models, train
from scoresde.models import convolution

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_train_vs_reference import cpu_model  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
VARIANTS = {
    "plain": {},
    "remat": {"remat": True},
    "micro_batches=4": {"micro_batches": 4},
    "bfloat16": {"compute_dtype": "bfloat16"},
    "all three": {"remat": True, "micro_batches": 4, "compute_dtype": "bfloat16"},
    "n_jitted_steps=5": {"n_jitted_steps": 5},
}


def reference_config(nf: int, image_size: int, remat=False, compute_dtype="float32"):
    """`vp/cifar10_ddpmpp_continuous` with nf and the image size overridden (a small U-Net below 32x32)."""
    config = configs.get_config("vp/cifar10_ddpmpp_continuous", lock=False)
    config.model.nf, config.data.image_size = nf, image_size
    if image_size < 32:  # --tiny: a small U-Net
        config.model.ch_mult, config.model.num_res_blocks, config.model.attn_resolutions = (1, 2), 1, (4,)
    config.model.remat, config.model.compute_dtype = remat, compute_dtype
    return config


def train_step(nf: int, image_size: int, batch: int, remat=False, compute_dtype="float32", micro_batches=1):
    """The train step of `reference_config(...)` (not yet jitted), its abstract state and batch, and the network."""
    config = reference_config(nf, image_size, remat, compute_dtype)
    sde, net = experiment.sde_from_config(config), experiment.model_from_config(config)
    shape = (batch, image_size, image_size, 3)
    optimizer = train.get_optimizer()
    loss_fn = losses.get_loss_fn(sde, net, train=True, reduce_mean=config.training.reduce_mean, continuous=True)
    step = train.make_train_step(loss_fn, optimizer, config.model.ema_rate, micro_batches)
    state = jax.eval_shape(
        lambda key: train.init_train_state(net, sde, key, shape[1:], optimizer), jax.random.PRNGKey(0)
    )
    return step, state, jax.ShapeDtypeStruct(shape, jnp.float32), net


def stacked(x, n_jitted_steps):
    """The batch of one call: n_jitted_steps batches stacked (`train.compile_step`)."""
    return x if n_jitted_steps == 1 else jax.ShapeDtypeStruct((n_jitted_steps, *x.shape), x.dtype)


def memory(nf, image_size, batch, n_jitted_steps=1, **options) -> dict:
    step, state, x, net = train_step(nf, image_size, batch, **options)
    start = time.perf_counter()
    compiled = train.compile_step(step, n_jitted_steps).lower(state, stacked(x, n_jitted_steps)).compile()
    analysis = compiled.memory_analysis()
    return {
        "params": models.count_params(state.params),
        "temp_gb": analysis.temp_size_in_bytes / 2**30,
        "argument_gb": analysis.argument_size_in_bytes / 2**30,
        "compile_s": time.perf_counter() - start,
    }


def remat_probe() -> dict:
    """The smallest case of gradient checkpointing: 16 blocks of 4 tanh layers (x @ w, 4096 x 512),
    each block under `jax.checkpoint`. Counts the tanh in the lowered and the compiled gradient
    (64 forward + 64 recomputed when the recomputation survives) and the temporary memory with
    and without checkpointing."""

    def loss(ws, x, remat):
        def block(w, x):
            for _ in range(4):
                x = jnp.tanh(x @ w)
            return x

        for w in ws:
            x = (jax.checkpoint(block) if remat else block)(w, x)
        return jnp.sum(x**2)

    ws, x = [jax.ShapeDtypeStruct((512, 512), jnp.float32)] * 16, jax.ShapeDtypeStruct((4096, 512), jnp.float32)
    row = {}
    for remat in (False, True):
        lowered = jax.jit(jax.grad(functools.partial(loss, remat=remat))).lower(ws, x)
        compiled = lowered.compile()
        name = "remat" if remat else "plain"
        row[f"{name}_temp_mib"] = compiled.memory_analysis().temp_size_in_bytes / 2**20
        row[f"{name}_tanh_lowered"] = lowered.as_text().count("tanh")
        row[f"{name}_tanh_compiled"] = compiled.as_text().count(" tanh(")
    return row


def throughput(nf, image_size, batch, repeats, n_jitted_steps=1, **options) -> float:
    step, abstract, x, net = train_step(nf, image_size, batch, **options)
    config_opt = train.get_optimizer()
    state = train.init_train_state(net, experiment.sde_from_config(configs.get_config("vp/cifar10_ddpmpp_continuous")),
                                   jax.random.PRNGKey(0), x.shape[1:], config_opt)
    data = jax.random.uniform(jax.random.PRNGKey(1), stacked(x, n_jitted_steps).shape) * 2 - 1
    fn = train.compile_step(step, n_jitted_steps)
    state, _ = fn(state, data)
    jax.block_until_ready(state)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        state, metrics = fn(state, data)
        jax.block_until_ready(metrics)
        best = min(best, time.perf_counter() - start)
    return batch * n_jitted_steps / best


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="small networks; results not written")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, of: " + ", ".join(VARIANTS))
    parser.add_argument("--lax-gradient", action="store_true",
                        help="JAX's own convolution gradient instead of convolution.conv_general_dilated's")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or variants[0] != "plain" and not args.lax_gradient:
        parser.error(f"--variants: unknown {unknown}" if unknown else "--variants: the first must be plain (the baseline)")
    if args.lax_gradient:
        convolution.conv_general_dilated = jax.lax.conv_general_dilated  # what the networks call
    mem_setting = (16, 8, 8) if args.tiny else (128, 32, 128)  # nf, image size, batch
    speed_setting = (16, 8, 8) if args.tiny else (32, 32, 16)
    rows = []
    for name in variants:
        options = VARIANTS[name]
        row = {"variant": name, **memory(*mem_setting, **options)}
        row["images_per_s"] = throughput(*speed_setting, args.repeats, **options)
        rows.append(row)
        print(json.dumps(row), flush=True)
    machine = f"{cpu_model()}, {os.cpu_count()} cores, jax {jax.__version__} " \
              f"({jax.default_backend()})"
    probe = remat_probe()
    plain = rows[0]
    command = " ".join(["python experiments/bench_memory.py"] + sys.argv[1:])
    gradient = ("JAX's own convolution gradient (`--lax-gradient`)" if args.lax_gradient else
                "the convolution gradient of `models.convolution.conv_general_dilated`")
    lines = [
        "# Memory options of the train step", "",
        f"Machine: {machine}. Command: `{command}`. Gradients: {gradient}.", "",
        f"Memory: XLA's `memory_analysis()` of the compiled train step (loss, gradients, clipping, Adam, EMA) of "
        f"DDPM++ (`vp/cifar10_ddpmpp_continuous`, nf = {mem_setting[0]}, {rows[0]['params']:,} parameters) at "
        f"batch {mem_setting[2]}, {mem_setting[1]}x{mem_setting[1]}x3. Throughput: the same step with nf = "
        f"{speed_setting[0]} at batch {speed_setting[2]}, best of {args.repeats}. Ratios are to the first row.", "",
        "| variant | temporary memory (GiB) | vs plain | arguments (GiB) | images/s (small net) | vs plain |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['temp_gb']:.2f} | {r['temp_gb'] / plain['temp_gb']:.2f}x | {r['argument_gb']:.2f} | "
            f"{r['images_per_s']:.1f} | {r['images_per_s'] / plain['images_per_s']:.2f}x |"
        )
    lines += [
        "", f"Gradient checkpointing on this backend ({jax.default_backend()}), its smallest case (`remat_probe`: 16 "
        "blocks of 4 tanh layers, 4096 x 512, each block under `jax.checkpoint`): the lowered gradient holds "
        f"{probe['remat_tanh_lowered']} tanh (64 forward, 64 recomputed) against {probe['plain_tanh_lowered']} "
        f"without checkpointing, the compiled one {probe['remat_tanh_compiled']}; temporary memory "
        f"{probe['remat_temp_mib']:.0f} MiB with checkpointing, {probe['plain_temp_mib']:.0f} MiB without.",
    ]
    report = "\n".join(lines) + "\n"
    print(report)
    if not args.tiny:
        os.makedirs(RESULTS, exist_ok=True)
        name = "bench_memory_lax_gradient" if args.lax_gradient else "bench_memory"
        with open(os.path.join(RESULTS, name + ".json"), "w") as f:
            json.dump({"machine": machine, "command": command, "rows": rows, "remat_probe": probe}, f, indent=1)
        with open(os.path.join(RESULTS, name + ".md"), "w") as f:
            f.write(report)


if __name__ == "__main__":
    main()
