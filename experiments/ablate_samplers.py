"""Sampler ablations on exact-score Gaussian-mixture targets.

Part 1 (default settings): every sampler family at its published defaults on a 16-D
mixture under VP: NFE, wall time, distance to the target, and the overhead ratio
wall / (NFE x one bare score evaluation), for the cheap exact score and for a
network-sized score (a random residual MLP, timed only: its samples mean nothing).

Part 2 (quality per NFE): every sampler at NFE in {10, 20, 50, 100, 1000} on a hard
16-D target (4 well-separated modes of weights 1:3:5:7), against the exact target.

    python experiments/ablate_samplers.py [--n 4096] [--out experiments/results]

`--samplers` and `--nfes` restrict part 2 (a sampler as NAME or NAME:JSON-options):

    python experiments/ablate_samplers.py --skip-defaults --out /tmp/few --nfes 6,8 --samplers unipc dpm_solver++

Adaptive samplers (ode, adaptive_sde) run once per configuration whatever the NFE grid: to
sweep one, give it several tolerances, e.g. 'adaptive_sde:{"rtol": 0.1}'. `--sde ve`
runs everything on the VE SDE instead of VP. `--learn-timesteps B` adds, for every sampler
with a `timesteps` option, a row on a grid fitted to the score (`samplers.timesteps`) from B
calibration latents other than the evaluation's:

    python experiments/ablate_samplers.py --skip-defaults --out experiments/results/learnt_timesteps \
      --nfes 6,8,10,12 --learn-timesteps 512 --samplers 'dpm_solver++_3m:{"plus": false, "spacing": "karras"}' \
      'unipc:{"spacing": "karras"}' 'dpm_solver++:{"spacing": "karras"}' ode

Writes <out>/ablate_defaults.{csv,md,png} and <out>/ablate_nfe.{csv,md,png}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess

import jax
import jax.numpy as jnp

from scoresde import ablation, analytic, models, sde_lib

DEFAULTS = [
    ("pc", {}),  # reverse diffusion + Langevin, snr 0.16, N = 1000
    ("pc", {"predictor": "euler_maruyama"}),
    ("pc", {"predictor": "ancestral_sampling"}),
    ("pc", {"corrector": "ald"}),
    ("euler_maruyama", {}),
    ("reverse_diffusion", {}),
    ("ancestral", {}),
    ("ode", {}),  # tsit5, rtol = atol = 1e-5
    ("ode", {"method": "dopri5"}),
    ("ode_heun", {"num_steps": 100}),
    ("edm_heun", {}),
    ("edm_stochastic", {}),
    ("dpm_solver++", {}),
    ("dpm_solver++_3m", {}),
    ("dpm_solver", {"num_steps": 7}),
    ("ddim", {}),
]

PER_NFE = [
    ("euler_maruyama", {}),
    ("pc", {}),
    ("ancestral", {}),
    ("ode_heun", {}),
    ("ddim", {}),
    ("edm_heun", {}),
    ("edm_stochastic", {}),
    ("dpm_solver++", {}),
    ("dpm_solver++_3m", {}),
    ("dpm_solver", {}),
    ("unipc", {}),
]


QUALITY_NOTES = (
    "fd_modes: sum over modes of weight x Frechet distance between the moments of the samples "
    "assigned (by the exact posterior) to that mode and the exact component; mode_tv: total variation "
    "between mode frequencies and the true weights; *_floor: the same for exact target samples of the "
    "same size, i.e. what the sample size alone explains; sw: sliced W2 to exact samples (coarse). "
    "Deterministic samplers start from the same latents, so they converge to the same samples."
)


def sampler_config(text: str) -> tuple[str, dict]:
    """NAME or NAME:JSON (the sampler's options) -> (name, options)."""
    name, _, options = text.partition(":")
    return name, json.loads(options) if options else {}


def _label(row) -> str:
    """The sampler's name, with its options beyond num_steps when it has any."""
    options = {k: v for k, v in json.loads(row["options"]).items() if k != "num_steps"}
    return row["sampler"] + (f" {json.dumps(options, sort_keys=True)}" if options else "")


def machine() -> str:
    try:
        cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        name = next(line.split(":", 1)[1].strip() for line in cpu.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        name = platform.processor()
    return f"{name}, {os.cpu_count()} cores, {jax.devices()[0].platform} ({jax.devices()[0].device_kind}), jax {jax.__version__}"


def network_score(sde, dim, key):
    """A network-sized score: random residual MLP (width 256, 4 blocks), as get_score_fn wraps it."""
    net = models.get_model("mlp", hidden=256, num_layers=4, init_scale=1.0)
    params = net.init(key, jnp.zeros((1, dim)), jnp.ones((1,)), train=False)["params"]
    return models.get_score_fn(sde, net, params)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4096, help="samples per run")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    parser.add_argument("--net-n", type=int, default=256, help="batch for the network-score timing runs")
    parser.add_argument("--skip-defaults", action="store_true")
    parser.add_argument("--skip-nfe", action="store_true")
    parser.add_argument("--samplers", nargs="+", metavar="NAME[:JSON]", type=sampler_config,
                        help="part 2 only: these samplers (with options) instead of every one")
    parser.add_argument("--nfes", type=lambda s: [int(v) for v in s.split(",")], default=[10, 20, 50, 100, 1000],
                        help="part 2: comma-separated NFE budgets (default 10,20,50,100,1000)")
    parser.add_argument("--sde", choices=["vp", "ve"], default="vp", help="the SDE (default vp)")
    parser.add_argument("--learn-timesteps", type=int, default=None, metavar="B",
                        help="part 2: also run samplers with a timesteps option on grids fitted to the score "
                        "from B calibration latents (samplers.timesteps, LD3)")
    args = parser.parse_args()
    key = jax.random.PRNGKey(0)
    sde = sde_lib.VPSDE() if args.sde == "vp" else sde_lib.VESDE()
    sde_name = args.sde.upper()
    dim = 16
    shape = (args.n, dim)
    where = machine()
    print("machine:", where)

    if not args.skip_defaults:
        target = analytic.separated_mixture(dim, num_modes=3, spread=4.0, seed=1)
        exact = target.score_fn(sde)
        quality = ablation.exact_target_quality(target, jax.random.PRNGKey(1))
        x0 = jnp.zeros(shape)
        cost_exact = ablation.score_cost(exact, x0)
        net = network_score(sde, dim, jax.random.PRNGKey(2))
        net_shape = (args.net_n, dim)
        cost_net = ablation.score_cost(net, jnp.zeros(net_shape))
        rows = ablation.run_grid(key, sde, exact, shape, DEFAULTS, quality, bare_score_seconds=cost_exact)
        net_rows = ablation.run_grid(key, sde, net, net_shape, DEFAULTS, lambda x: {}, bare_score_seconds=cost_net)
        for row, net_row in zip(rows, net_rows):
            row["overhead_exact"] = row.pop("overhead")
            row["nfe_net"], row["wall_s_net"], row["overhead_net"] = net_row["nfe"], net_row["wall_s"], net_row["overhead"]
        notes = (
            f"Machine: {where}. Target: 16-D mixture of 3 modes (weights 1:3:5), {sde_name} SDE, {args.n} samples.\n"
            f"Bare score evaluation at this batch, inside a compiled loop: exact GMM score "
            f"{cost_exact * 1e6:.1f} us, network-sized MLP score (width 256, 4 residual blocks) at batch {args.net_n}: {cost_net * 1e6:.1f} us.\n"
            "overhead = wall / (NFE x bare score time): the loop's cost beyond the score evaluations. "
            "The *_net columns rerun each sampler on the network score (timing only; for the adaptive ODE "
            "its NFE differs because the random network defines a different ODE).\n"
            + QUALITY_NOTES
        )
        files = ablation.write_results(rows, os.path.join(args.out, "ablate_defaults"), "fd_modes", "Samplers at default settings", notes)
        print("\n".join(files))

    if not args.skip_nfe:
        target = analytic.separated_mixture(dim, num_modes=4, spread=6.0, seed=3)
        exact = target.score_fn(sde)
        quality = ablation.exact_target_quality(target, jax.random.PRNGKey(1))
        rows = ablation.run_grid(key, sde, exact, shape, args.samplers or PER_NFE, quality, nfes=args.nfes,
                                 learn_timesteps=args.learn_timesteps)
        em = [r["fd_modes"] for r in rows if r["sampler"] == "euler_maruyama" and r["nfe"] == 1000]
        # Indistinguishable from exact samples: within 2 sd of the fd_modes of exact sample sets.
        band = rows[0]["fd_modes_floor"] + 2 * rows[0]["fd_modes_floor_sd"]
        first = {}
        for r in sorted(rows, key=lambda r: r["nfe"]):
            if r["fd_modes"] <= band:
                first.setdefault(_label(r), r["nfe"])
        summary = ", ".join(f"{name} {nfe}" for name, nfe in sorted(first.items(), key=lambda kv: kv[1])) or "none"
        exact_note = f"Euler-Maruyama at NFE 1000 reaches fd_modes = {min(em):.4f}; exact" if em else "Exact"
        notes = (
            f"Machine: {where}. Hard target: 16-D mixture of 4 modes (weights 1:3:5:7, 6 apart), {sde_name} SDE, "
            f"{args.n} samples. {exact_note} samples of "
            f"the same size give {rows[0]['fd_modes_floor']:.4f} +- {rows[0]['fd_modes_floor_sd']:.4f} (sd).\n"
            f"Smallest NFE at which each sampler is indistinguishable from exact samples at this sample size "
            f"(fd_modes <= floor + 2 sd = {band:.4f}): {summary}.\n" + QUALITY_NOTES
        )
        files = ablation.write_results(rows, os.path.join(args.out, "ablate_nfe"), "fd_modes", "Distance to target vs NFE", notes)
        print("\n".join(files))
        print(notes)


if __name__ == "__main__":
    main()
