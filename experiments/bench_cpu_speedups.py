"""What each CPU speed-up of the train step is worth: each switched off alone, in one interleaved run.

    python experiments/bench_cpu_speedups.py             # nf 32, batch 16, 7 rounds of 3 steps (about 7 minutes)
    python experiments/bench_cpu_speedups.py --tiny      # smoke test: nf 16, batch 4, 1 round; nothing recorded

Run it with the package's venv on a quiet machine. The network and step are those of
`bench_train_vs_reference.py` (the reference's `vp/cifar10_ddpmpp_continuous` DDPM++ with
`model.nf` and the batch overridden; the full compiled train step), built once per variant
in this one process, and timed in interleaved rounds (each variant in turn, k back-to-back
steps each, rotated every round). The variants:

  shipped               the code as it is
  no fusion barrier     `layers.fusion_barrier` as the identity: XLA:CPU then fuses each block's
                        input, and its cotangent, into every consumer
  flax GroupNorm        `group_norm` (in `layers` and `ncsnpp`) as flax's `nn.GroupNorm`
                        (statistics by reductions)
  none of them          both switched off: the code before them

and, to show that sampling loses nothing, the network's forward pass alone (eval mode, as
the samplers call it) under "shipped" and "none of them". Neither speed-up changes what is
computed: the barrier is the identity and the GroupNorm is flax's formula up to float32
summation order (both tested against ground truth in tests/test_models.py). Writes
experiments/results/bench_cpu_speedups.{json,md}.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results", "bench_cpu_speedups")
sys.path.insert(0, HERE)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import scoresde  # noqa: E402,F401  (sets its XLA:CPU flag first)
from bench_train import timed  # noqa: E402
from bench_train_vs_reference import CONFIG, Ours, cpu_model  # noqa: E402
from scoresde import configs, experiment  # noqa: E402
from scoresde.models import layers, ncsnpp  # noqa: E402


def flax_group_norm(x, num_groups=None):
    """The GroupNorm before `layers.GroupNorm`: flax's, statistics by reductions."""
    import flax.linen as nn

    groups = min(x.shape[-1] // 4, 32) if num_groups is None else num_groups
    return nn.GroupNorm(num_groups=groups, dtype=x.dtype)(x)


@contextlib.contextmanager
def switched_off(parts):
    """`layers` as before the speed-ups named in `parts`, while tracing."""
    saved = layers.fusion_barrier, layers.group_norm, ncsnpp.group_norm
    if "barrier" in parts:
        layers.fusion_barrier = lambda x: x
    if "groupnorm" in parts:
        layers.group_norm = ncsnpp.group_norm = flax_group_norm
    try:
        yield
    finally:
        layers.fusion_barrier, layers.group_norm, ncsnpp.group_norm = saved


VARIANTS = {
    "shipped": (),
    "no fusion barrier": ("barrier",),
    "flax GroupNorm": ("groupnorm",),
    "none of them": ("barrier", "groupnorm"),
}
FORWARD_VARIANTS = ("shipped", "none of them")


class Forward:
    """The network's forward pass in eval mode (as the samplers call it), compiled."""

    def __init__(self, nf: int, batch: int, seed: int):
        config = configs.get_config(CONFIG)
        configs.apply_overrides(config, [f"model.nf={nf}"])
        model = experiment.model_from_config(config)
        shape = experiment.data_shape(config)
        rng = np.random.default_rng(seed)
        x = jnp.asarray(rng.uniform(-1, 1, (batch,) + tuple(shape)), jnp.float32)
        t = jnp.asarray(rng.uniform(0, 1, batch), jnp.float32)
        params = model.init({"params": jax.random.key(seed)}, x, t, train=False)["params"]
        fn = jax.jit(lambda p, x, t: model.apply({"params": p}, x, t, train=False)).lower(params, x, t).compile()
        self.call = lambda: fn(params, x, t)

    def steps(self, n: int) -> tuple[float, None]:
        """Seconds for n calls (as `Ours.steps`, which also gives its last loss)."""
        return timed(self.call, n), None


def write_results(result: dict):
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS + ".json", "w") as f:
        json.dump(result, f, indent=1)
    m, t = result["machine"], result["timing"]
    base = t["step"]["shipped"]["median_s"]
    step_rows = "\n".join(
        f"| {name} | {', '.join(VARIANTS[name]) or '—'} | {v['median_s']:.4f} | {v['best_s']:.4f} | "
        f"{v['median_s'] / base:.3f} | {v['compile_s']:.0f} |"
        for name, v in t["step"].items())
    fbase = t["forward"]["shipped"]["median_s"]
    fwd_rows = "\n".join(f"| {name} | {v['median_s'] * 1e3:.1f} | {v['best_s'] * 1e3:.1f} | {v['median_s'] / fbase:.3f} |"
                         for name, v in t["forward"].items())
    text = f"""# The CPU speed-ups of the train step, each switched off alone

Command (from the repository root):

    {result["command"]}

Machine: {m["cpu"]}, {m["cores"]} cores, no accelerator; jax {result["jax"]} (cpu backend); load average
{m["load_before"]:.1f} before, {m["load_after"]:.1f} after (the machine is shared).

Network and step: the reference's `{CONFIG}` config with nf={result["nf"]}, batch {result["batch"]}, 32x32x3;
the full compiled train step (loss, backward, clipping, Adam, EMA), as `bench_train_vs_reference.py`.
{t["rounds"]} interleaved rounds (every variant in turn, rotated each round) of {t["steps_per_round"]} steps
after {t["warmup"]} warm-up steps. Seconds per step: median and best over rounds. "switched off": which
speed-ups the variant undoes (see the script's docstring); "compile s": building, compiling and
warming up the variant.

| variant | switched off | s/step (median) | s/step (best) | time / shipped | compile s |
|---|---|---|---|---|---|
{step_rows}

The network's forward pass alone, eval mode (what the samplers run), milliseconds per call:

| variant | ms (median) | ms (best) | time / shipped |
|---|---|---|---|
{fwd_rows}
"""
    with open(RESULTS + ".md", "w") as f:
        f.write(text)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nf", type=int, default=32)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--steps-per-round", type=int, default=3)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--pause", type=float, default=0.2, help="seconds of rest before each timed block")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tiny", action="store_true", help="smoke test: nf 16, batch 4, 1 round of 1 step; nothing recorded")
    args = p.parse_args()
    if args.tiny:
        args.nf, args.batch, args.rounds, args.steps_per_round, args.warmup = 16, 4, 1, 1, 1
    for name in ("nf", "batch", "rounds", "steps_per_round"):
        if getattr(args, name) < 1:
            sys.exit(f"bench_cpu_speedups: --{name.replace('_', '-')} must be >= 1")
    if args.warmup < 0 or not args.pause >= 0:  # not >= : NaN too
        sys.exit(f"bench_cpu_speedups: --warmup and --pause must be >= 0, got {args.warmup} and {args.pause}")
    if jax.default_backend() != "cpu":
        sys.exit(f"bench_cpu_speedups: measures the CPU backend; JAX's default here is {jax.default_backend()}")

    load_before = os.getloadavg()[0]
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores; load average {load_before:.1f}", flush=True)
    sides, compile_s = {}, {}
    for name, parts in VARIANTS.items():
        t0 = time.perf_counter()
        with switched_off(parts):
            ours = Ours(args.nf, args.batch, args.seed)
            ours.steps(1)  # traces and compiles under the variant
        ours.steps(args.warmup)
        compile_s[name] = time.perf_counter() - t0
        sides[("step", name)] = ours
        print(f"{name}: built, compiled and warmed up in {compile_s[name]:.0f} s", flush=True)
    for name in FORWARD_VARIANTS:
        with switched_off(VARIANTS[name]):
            forward = Forward(args.nf, args.batch, args.seed)
        forward.steps(args.warmup)
        sides[("forward", name)] = forward

    times = {key: [] for key in sides}
    keys = list(sides)
    for r in range(args.rounds):
        for key in keys[r % len(keys):] + keys[: r % len(keys)]:
            time.sleep(args.pause)
            n = args.steps_per_round if key[0] == "step" else 10 * args.steps_per_round
            times[key].append(sides[key].steps(n)[0] / n)
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(
            f"{k[0]} {k[1]} {times[k][-1]:.4f}" for k in keys), flush=True)

    def summary(key):
        return dict(median_s=float(np.median(times[key])), best_s=float(min(times[key])), rounds_s=times[key])

    step = {name: dict(summary(("step", name)), compile_s=compile_s[name]) for name in VARIANTS}
    forward = {name: summary(("forward", name)) for name in FORWARD_VARIANTS}
    for name, v in step.items():
        print(f"step  {name:18s} median {v['median_s']:.4f} s  x{v['median_s'] / step['shipped']['median_s']:.3f}")
    for name, v in forward.items():
        print(f"fwd   {name:18s} median {v['median_s'] * 1e3:.1f} ms  x{v['median_s'] / forward['shipped']['median_s']:.3f}")
    if args.tiny:
        print("(--tiny: smoke test, nothing recorded)")
        return
    write_results(dict(
        command="python " + shlex.join([os.path.relpath(os.path.abspath(sys.argv[0]), REPO_ROOT)] + sys.argv[1:]),
        machine=dict(cpu=cpu_model(), cores=os.cpu_count(), load_before=load_before, load_after=os.getloadavg()[0]),
        jax=jax.__version__, nf=args.nf, batch=args.batch,
        timing=dict(rounds=args.rounds, steps_per_round=args.steps_per_round, warmup=args.warmup, pause_s=args.pause,
                    step=step, forward=forward),
    ))
    print(f"wrote {os.path.relpath(RESULTS, REPO_ROOT)}.json and .md")


if __name__ == "__main__":
    main()
