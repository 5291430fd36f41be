"""Sampling many checkpoints of one network: compile time and memory, closure vs traced.

Before score models, `models.get_score_fn` returned a closure over the parameters, and
the samplers took it as a static argument: every parameter set compiled the sampler
again with the weights inside the program as constants. A score model passes them as
traced arguments. This runs both ways on the reference-size DDPM++ (the config
`vp/cifar10_ddpmpp_continuous`, 61.8 M parameters), sampling 10 "checkpoints" (10
parameter sets) with Euler-Maruyama at batch 1, and records per call the wall time
(compilation included) and the process's resident memory. Each way runs in its own
fresh process.

    python experiments/bench_score_model.py            # ~4 minutes on 2 CPU cores
    python experiments/bench_score_model.py --tiny     # smoke test, a small network

Writes experiments/results/bench_score_model.{json,md} (not with --tiny).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_mode(mode: str, tiny: bool, checkpoints: int, steps: int) -> dict:
    """In this process: sample `checkpoints` parameter sets, closure or traced."""
    import jax
    import jax.numpy as jnp

    from scoresde import configs, experiment, models, samplers

    config = configs.get_config("vp/cifar10_ddpmpp_continuous")
    if tiny:
        config.model.nf, config.model.ch_mult, config.model.num_res_blocks = 16, (1, 2), 1
        config.data.image_size = 8
    sde, net = experiment.sde_from_config(config), experiment.model_from_config(config)
    shape = (1, *experiment.data_shape(config))
    params = jax.jit(lambda key: net.init({"params": key, "dropout": key}, jnp.zeros(shape), jnp.ones(1))["params"])(
        jax.random.PRNGKey(0)
    )
    num_params = models.count_params(params)
    perturb = jax.jit(lambda p, i: jax.tree_util.tree_map(lambda a: a * (1.0 + 1e-3 * i), p))
    calls = []
    for i in range(checkpoints):
        ckpt = jax.block_until_ready(perturb(params, i))  # one checkpoint alive at a time
        score = models.get_score_fn(sde, net, ckpt)
        fn = (lambda x, t, s=score: s(x, t)) if mode == "closure" else score
        start = time.perf_counter()
        x, _ = samplers.sample(jax.random.PRNGKey(i), sde, fn, shape, "euler_maruyama", num_steps=steps)
        jax.block_until_ready(x)
        calls.append({"checkpoint": i, "wall_s": time.perf_counter() - start, "rss_mb": rss_mb()})
        del ckpt, score, fn, x
    return {"mode": mode, "num_params": num_params, "calls": calls}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a small network, results not written")
    parser.add_argument("--checkpoints", type=int, default=10)
    parser.add_argument("--steps", type=int, default=2, help="Euler-Maruyama steps per sample")
    parser.add_argument("--mode", choices=("closure", "traced"), help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    if args.checkpoints < 1 or args.steps < 1:
        parser.error("--checkpoints and --steps must be >= 1")
    if args.mode:
        print(json.dumps(run_mode(args.mode, args.tiny, args.checkpoints, args.steps)))
        return
    import jax

    from bench_train import cpu_name

    runs = {}
    for mode in ("closure", "traced"):
        cmd = [sys.executable, os.path.abspath(__file__), "--mode", mode, "--checkpoints", str(args.checkpoints),
               "--steps", str(args.steps)] + (["--tiny"] if args.tiny else [])
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        runs[mode] = json.loads(out.strip().splitlines()[-1])
    machine = f"{cpu_name()}, {os.cpu_count()} cores, jax {jax.__version__} ({jax.default_backend()})"
    command = "python experiments/bench_score_model.py" + (" --tiny" if args.tiny else "")
    report = write_report(runs, machine, command, args.steps, args.checkpoints, args.tiny)
    print(report)


def write_report(runs: dict, machine: str, command: str, steps: int, checkpoints: int, tiny: bool) -> str:
    """The markdown table (and, unless tiny, the json and md files) of the two runs."""
    rows = []
    for mode, run in runs.items():
        calls = run["calls"]
        later = calls[1:] or calls
        rows.append({
            "mode": mode,
            "first_call_s": calls[0]["wall_s"],
            "later_calls_mean_s": sum(c["wall_s"] for c in later) / len(later),
            "total_s": sum(c["wall_s"] for c in calls),
            "rss_after_first_mb": calls[0]["rss_mb"],
            "rss_after_second_mb": later[0]["rss_mb"],
            "rss_after_last_mb": calls[-1]["rss_mb"],
            # From the second call on: the first allocates the program and one parameter set.
            "rss_growth_per_checkpoint_mb": (calls[-1]["rss_mb"] - later[0]["rss_mb"]) / max(1, len(later) - 1),
        })
    lines = [
        "# Sampling many checkpoints: closure (parameters compiled in) vs traced score model", "",
        f"Machine: {machine}. Command: `{command}`.", "",
        f"Network: DDPM++ of `vp/cifar10_ddpmpp_continuous`{' (tiny)' if tiny else ''}, "
        f"{runs['traced']['num_params']:,} parameters; Euler-Maruyama, {steps} steps, batch 1; "
        f"{checkpoints} parameter sets, one process per mode. Wall times include compilation.", "",
        "| mode | first call (s) | later calls, mean (s) | all calls (s) | RSS after 1st / 2nd / last call (MB) "
        "| RSS growth per checkpoint after the 2nd (MB) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['mode']} | {r['first_call_s']:.2f} | {r['later_calls_mean_s']:.2f} | {r['total_s']:.1f} | "
            f"{r['rss_after_first_mb']:.0f} / {r['rss_after_second_mb']:.0f} / {r['rss_after_last_mb']:.0f} | "
            f"{r['rss_growth_per_checkpoint_mb']:.0f} |"
        )
    report = "\n".join(lines) + "\n"
    if not tiny:
        os.makedirs(RESULTS, exist_ok=True)
        with open(os.path.join(RESULTS, "bench_score_model.json"), "w") as f:
            json.dump({"machine": machine, "command": command, "rows": rows, "runs": runs}, f, indent=1)
        with open(os.path.join(RESULTS, "bench_score_model.md"), "w") as f:
            f.write(report)
    return report

if __name__ == "__main__":
    main()
