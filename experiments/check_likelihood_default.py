"""Is the default of `scoresde likelihood` at least as accurate as the adaptive solve it replaced?

For each score and data: the error of log p (mean and max over the batch of |log p - log p of
a tsit5 solve in t at rtol = atol = 1e-7|, same probes, nats/dim) of dopri5 in sigma at the
reference's rtol = atol = 1e-5 (the default before, still `log_likelihood`'s), and of
DPM-Solver-3M / 2M with `likelihood.REPORT_STEPS` steps and half as many.

    python experiments/check_likelihood_default.py --workdirs runs/digits,runs/digits300

Each workdir is a trained digits model (the quick start's, and any other), measured at
dequantized test digits and at its own samples; the exact 16-D mixture score is measured
with the exact divergence and with a Rademacher probe. Writes
experiments/results/likelihood_default_check.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import jax
import numpy as np

from bench_likelihood import EPS, digits_case, digits_samples_case, gmm_case
from scoresde import likelihood, sde_lib

SETTINGS = {
    "dopri5 in sigma, rtol = atol = 1e-5 (the default before)": dict(),
    f"DPM-Solver-3M, {likelihood.REPORT_STEPS} steps (the default)": dict(
        method="dpm_solver_3m", num_steps=likelihood.REPORT_STEPS),
    f"DPM-Solver-2M, {likelihood.REPORT_STEPS} steps": dict(method="dpm_solver_2m", num_steps=likelihood.REPORT_STEPS),
    f"DPM-Solver-3M, {likelihood.REPORT_STEPS // 2} steps": dict(
        method="dpm_solver_3m", num_steps=likelihood.REPORT_STEPS // 2),
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdirs", default="runs/digits", help="comma-separated trained digits workdirs")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "likelihood_default_check"))
    args = parser.parse_args()
    from ablate_samplers import machine

    key, sde = jax.random.key(0), sde_lib.VPSDE()
    cases = [("exact 16-D mixture", "exact", *gmm_case(args.batch, key)),
             ("exact 16-D mixture", "rademacher", *gmm_case(args.batch, key))]
    for workdir in args.workdirs.split(","):
        cases += [(f"{workdir}, test digits", "rademacher", *digits_case(workdir, args.batch, key)),
                  (f"{workdir}, its samples", "rademacher", *digits_samples_case(workdir, args.batch, key))]
    rows = []
    for name, divergence, score, x in cases:
        dim = int(np.prod(x.shape[1:]))
        run = lambda **kw: log_likelihood_np(key, sde, score, x, divergence, **kw)
        tight, _ = run(method="tsit5", time_variable="t", rtol=1e-7, atol=1e-7, max_steps=65536)
        for label, kw in SETTINGS.items():
            logp, nfe = run(**kw)
            err = np.abs(logp - tight) / dim
            rows.append(dict(case=name, divergence=divergence, setting=label, nfe=nfe, err_mean=float(err.mean()),
                             err_max=float(err.max())))
            print(f"{name} ({divergence}) {label}: {nfe} NFE, error {err.mean():.2e} nats/dim", flush=True)
    write(args, rows, machine())


def log_likelihood_np(key, sde, score, x, divergence, **kwargs):
    logp, _, nfe = likelihood.log_likelihood(key, sde, score, x, divergence=divergence, eps=EPS, **kwargs)
    return np.asarray(logp, np.float64), nfe


def write(args, rows, machine_name):
    with open(args.out + ".json", "w") as f:
        json.dump(dict(machine=machine_name, batch=args.batch, rows=rows), f, indent=1)
    lines = ["# The default of `scoresde likelihood` against the adaptive solve it replaced\n",
             f"Machine: {machine_name}. Command (from experiments/): `python check_likelihood_default.py "
             f"{' '.join(sys.argv[1:])}`. VP SDE, eps = {EPS}, batch {args.batch}. Error: |log p - log p of a tsit5 "
             "solve in t at rtol = atol = 1e-7| / D with the same probes, mean and max over the batch (nats/dim).\n",
             "| case | divergence | setting | NFE | mean err | max err |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['case']} | {r['divergence']} | {r['setting']} | {r['nfe']} | {r['err_mean']:.1e} | {r['err_max']:.1e} |"
              for r in rows]
    with open(args.out + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("wrote", args.out + ".md")


if __name__ == "__main__":
    main()
