"""Training objectives on the bundled 8x8 digits: DSM on the VP SDE (`digits_vp`), EDM
(`digits_edm`: EDM's path, preconditioning, log-normal sigma and weighting) and flow
matching (`digits_fm`: rectified flow, velocity network), with the same network, data,
optimizer and step budget.

Each run is trained (or resumed; a finished run is skipped) through
`experiment.train_workdir`, as `scoresde train` does, then measured on its EMA model:

- FD-digits (Frechet distance to the held-out test digits in the bundled digits
  classifier's 64-d feature space; not an FID) at NFE budgets 10, 20 and 50, with the
  best of a few deterministic samplers at each budget (`ablation.ablate_workdir`: all
  samplers start from the same latents);
- bits/dim of the test split (`experiment.likelihood_report`: 1 dequantization pass,
  probability-flow ODE by dopri5 in sigma at rtol = atol = 1e-3, Hutchinson-Rademacher divergence).

    python experiments/ablate_objectives.py [--steps 2000] [--num 1024] [--runs runs/objectives]
                                            [--configs digits_vp,digits_edm,digits_fm] [--out experiments/results]
    python experiments/ablate_objectives.py --tiny      # smoke test: tiny nets, 3 steps, small samples

Writes <out>/ablate_objectives.{md,csv,png} (`ablate_objectives_tiny.*` with --tiny): the
table of the best sampler per objective and budget with bits/dim, every (sampler, NFE)
row in the CSV, and FD-digits against NFE.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
import time

import numpy as np

from scoresde import ablation, experiment
from scoresde.samplers import registry

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ablate_samplers import machine  # noqa: E402

CONFIGS = ("digits_vp", "digits_edm", "digits_fm")
LABELS = {"digits_vp": "DSM-VP (eps)", "digits_edm": "EDM", "digits_fm": "flow matching (RF)",
          "digits_v": "v-pred + min-SNR-5 (VP)"}
# Deterministic samplers that take an NFE budget (UniPC where the registry has it).
SAMPLERS = tuple(s for s in ("dpm_solver++", "dpm_solver++_3m", "unipc", "edm_heun", "ode_heun", "ddim")
                 if s in registry.SAMPLERS)
NFES = (10, 20, 50)
TINY_OVERRIDES = ["training.batch_size=16", "model.nf=8", "model.ch_mult=(1,)", "model.num_res_blocks=1",
                  "training.log_freq=1", "training.eval_freq=1000"]


def train_run(name: str, workdir: str, steps: int, tiny: bool) -> float:
    """Train config `name` to `steps` steps in `workdir` (resuming); returns the seconds it took."""
    overrides = [f"training.n_iters={steps}", f"training.snapshot_freq={steps}", "training.snapshot_sampling=False",
                 f"training.snapshot_freq_for_preemption={min(steps, 250)}"] + (TINY_OVERRIDES if tiny else [])
    config = None if os.path.exists(experiment.config_path(workdir)) else name
    start = time.perf_counter()
    experiment.train_workdir(workdir, config, overrides, verbose=not tiny)
    return time.perf_counter() - start


def evaluate_run(name: str, workdir: str, samplers, nfes, num: int, bpd_limit: int | None) -> tuple[list[dict], dict]:
    """Every (sampler, NFE budget) row of FD-digits, and the bits/dim report."""
    rows = []
    for budget in nfes:
        result = ablation.ablate_workdir(workdir, samplers, (budget,), num=num)
        rows += [{"config": name, "objective": LABELS.get(name, name), "nfe_budget": budget, **row} for row in result.rows]
    bpd = experiment.likelihood_report(workdir, passes=1, method="dopri5", rtol=1e-3, atol=1e-3, limit=bpd_limit)
    if isinstance(bpd, tuple):  # (report, path of its JSON) where likelihood_report also writes it
        bpd = bpd[0]
    return rows, bpd


def best_rows(rows, nfes):
    """The lowest-FD row per (config, budget)."""
    best = []
    for name in dict.fromkeys(r["config"] for r in rows):
        for budget in nfes:
            candidates = [r for r in rows if r["config"] == name and r["nfe_budget"] == budget]
            if candidates:
                best.append(min(candidates, key=lambda r: r["fd_digits"]))
    return best


def write(prefix: str, rows, reports: dict, train_s: dict, batch: int, args, nfes):
    os.makedirs(os.path.dirname(prefix) or ".", exist_ok=True)
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with open(prefix + ".csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fields)
        writer.writeheader()
        writer.writerows(rows)

    best = best_rows(rows, nfes)
    with open(prefix + ".md", "w") as f:
        f.write("# Training objectives on digits (8x8): DSM-VP vs EDM vs flow matching\n\n")
        f.write(f"Machine: {machine()}.\n\n")
        f.write(f"Each config trained for {args.steps} steps (batch {batch}, the digits configs' network, "
                f"optimizer and EMA); EMA model. FD-digits: Frechet distance to the held-out test digits in the bundled "
                f"digits classifier's feature space (not an FID), {args.num} samples, the best of "
                f"{', '.join(args.samplers)} at each NFE budget (same latents for all). Bits/dim: test split, "
                f"1 dequantization pass, probability-flow ODE at rtol = atol = 1e-3"
                f"{f', first {args.bpd_limit} images' if args.bpd_limit else ''}.\n\n")
        if args.tiny:
            f.write("**Smoke test (--tiny): tiny networks trained for a few steps; the numbers mean nothing.**\n\n")
        f.write("| objective | config | " + " | ".join(f"FD-digits @ {b} NFE (sampler, NFE used)" for b in nfes)
                + " | bits/dim | train s |\n")
        f.write("|---|---|" + "---|" * len(nfes) + "---|---|\n")
        for name in dict.fromkeys(r["config"] for r in rows):
            cells = []
            for b in nfes:
                r = next((r for r in best if r["config"] == name and r["nfe_budget"] == b), None)
                cells.append("—" if r is None else f"{r['fd_digits']:.4g} ({r['sampler']}, {r['nfe']})")
            report = reports[name]
            bpd = f"{report['bpd']:.4g} ± {report['bpd_stderr']:.2g}"
            f.write(f"| {LABELS.get(name, name)} | `{name}` | " + " | ".join(cells) + f" | {bpd} | {train_s[name]:.0f} |\n")
        f.write("\nEvery (sampler, NFE) run is in the CSV.\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for name in dict.fromkeys(r["config"] for r in rows):
        pts = sorted((r["nfe_budget"], r["fd_digits"]) for r in best if r["config"] == name)
        ax.plot(*zip(*pts), marker="o", label=f"{LABELS.get(name, name)} ({reports[name]['bpd']:.3g} bits/dim)")
    ax.set(xscale="log", yscale="log", xlabel="NFE budget", ylabel="FD-digits (best sampler)",
           title=f"Objectives on digits, {args.steps} steps" + (" (smoke test)" if args.tiny else ""))
    ax.set_xticks(nfes, [str(b) for b in nfes])
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(prefix + ".png", dpi=120)
    plt.close(fig)
    return [prefix + ext for ext in (".md", ".csv", ".png")]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2000, help="training steps of every run (the same budget)")
    parser.add_argument("--num", type=int, default=1024, help="samples per FD-digits measurement")
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--samplers", default=",".join(SAMPLERS))
    parser.add_argument("--bpd-limit", type=int, default=None, help="bits/dim of the first N test images only")
    parser.add_argument("--runs", default=None, help="workdirs (default runs/objectives; a temporary folder with --tiny)")
    parser.add_argument("--out", default="experiments/results")
    parser.add_argument("--tiny", action="store_true", help="smoke test: tiny nets, 3 steps, 64 samples, 2 samplers")
    args = parser.parse_args(argv)
    args.samplers = args.samplers.split(",")
    nfes = NFES
    if args.tiny:
        args.steps, args.num, args.bpd_limit = 3, 64, args.bpd_limit or 16
        args.samplers = ["dpm_solver++", "edm_heun"]
        nfes = (10, 20)
    runs = args.runs or (tempfile.mkdtemp(prefix="ablate_objectives_") if args.tiny else "runs/objectives")

    rows, reports, train_s = [], {}, {}
    for name in args.configs.split(","):
        workdir = os.path.join(runs, name)
        train_s[name] = train_run(name, workdir, args.steps, args.tiny)
        print(f"{name}: trained to {args.steps} steps in {train_s[name]:.0f} s ({workdir})", flush=True)
        run_rows, reports[name] = evaluate_run(name, workdir, args.samplers, nfes, args.num, args.bpd_limit)
        batch = experiment.load_config(workdir).training.batch_size
        rows += run_rows
        best = {b: min((r for r in run_rows if r["nfe_budget"] == b), key=lambda r: r["fd_digits"]) for b in nfes}
        print(f"{name}: " + ", ".join(f"FD@{b} {r['fd_digits']:.4g} ({r['sampler']})" for b, r in best.items())
              + f", {reports[name]['bpd']:.4g} bits/dim", flush=True)
    prefix = os.path.join(args.out, "ablate_objectives" + ("_tiny" if args.tiny else ""))
    for path in write(prefix, rows, reports, train_s, batch, args, nfes):
        print("wrote", path)
    return rows, reports


if __name__ == "__main__":
    main()
