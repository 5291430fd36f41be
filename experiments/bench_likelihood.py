"""On-device likelihood solve vs the reference approach (scipy RK45 on the host).

The reference (score_sde/likelihood.py) integrates the augmented probability-flow ODE
with scipy.integrate.solve_ivp(method="RK45"), calling a jitted drift-and-divergence
function on the device at every evaluation: one host round trip per evaluation. Here
both solve the same augmented ODE, with the same score, batch, Hutchinson probes
(Rademacher, fixed for the solve), eps = 1e-5 and rtol = atol = 1e-5.

    python experiments/bench_likelihood.py [--repeats 3]

Reports NFE, wall time (best of repeats, after compilation) and the agreement of logp,
for a cheap score (exact GMM, 16-D) and network-sized ones (random residual MLPs on
the 64-D digits shape; width 1024 with --large), and writes experiments/results/bench_likelihood.md.
"""

from __future__ import annotations

import argparse
import functools
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from scipy import integrate

from scoresde import analytic, models, sde_lib
from scoresde.likelihood import drift_and_divergence, log_likelihood
from scoresde.samplers.ode import probability_flow_drift

EPS, TOL = 1e-5, 1e-5


def scipy_log_likelihood(key, sde, score_fn, x):
    """The reference's host-loop solve: scipy RK45, a device call per evaluation."""
    drift = probability_flow_drift(sde, score_fn)
    probes = jax.random.rademacher(key, (1, *x.shape), x.dtype)  # same probes as log_likelihood
    shape, n = x.shape, x.size

    @jax.jit
    def rhs(t, x):
        return drift_and_divergence(functools.partial(drift, t), x, probes)

    def fun(t, y):
        dx, ddelta = rhs(jnp.asarray(t, x.dtype), jnp.asarray(y[:n].reshape(shape), x.dtype))
        return np.concatenate([np.asarray(dx).ravel(), np.asarray(ddelta)]).astype(np.float64)

    y0 = np.concatenate([np.asarray(x).ravel(), np.zeros(shape[0])])
    sol = integrate.solve_ivp(fun, (EPS, sde.T), y0, rtol=TOL, atol=TOL, method="RK45")
    z = jnp.asarray(sol.y[:n, -1].reshape(shape), x.dtype)
    return np.asarray(sde.prior_logp(z)) + sol.y[n:, -1], sol.nfev


def best_time(fn, repeats):
    result = fn()
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        jax.block_until_ready(result)
        best = min(best, time.perf_counter() - start)
    return result, best


def mlp_score(sde, dim, width, key):
    net = models.get_model("mlp", hidden=width, num_layers=4, init_scale=1.0)
    params = net.init(key, jnp.zeros((1, dim)), jnp.ones((1,)), train=False)["params"]
    return models.get_score_fn(sde, net, params)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--large", action="store_true", help="add a width-1024 MLP (slow on CPU)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "bench_likelihood.md"))
    args = parser.parse_args()
    from ablate_samplers import machine  # noqa: E402  (same folder)

    sde = sde_lib.VPSDE()
    key = jax.random.PRNGKey(0)
    gmm = analytic.separated_mixture(16, num_modes=3, seed=1)
    cases = [
        ("exact GMM score, 16-D", gmm.score_fn(sde), gmm.sample(key, args.batch)),
        ("MLP width 256, 64-D", mlp_score(sde, 64, 256, key), jax.random.normal(key, (args.batch, 64))),
    ]
    if args.large:
        cases.append(("MLP width 1024, 64-D", mlp_score(sde, 64, 1024, key), jax.random.normal(key, (args.batch, 64))))
    lines = [
        "# Likelihood: on-device diffrax solve vs host-loop scipy RK45\n",
        f"Machine: {machine()}. VP SDE, batch {args.batch}, Hutchinson (Rademacher, 1 probe, the same "
        f"probes for both), eps = {EPS}, rtol = atol = {TOL}; wall time best of {args.repeats} after "
        "compilation; max err: max over the batch of |logp - logp of a dopri8 solve at rtol = atol = 1e-8| "
        "(nats, float32). The MLP scores are random networks (timing only). Our error norm is the max over "
        "the state's parts (x, delta logp) of each part's RMS, scipy's the RMS over everything, so at the "
        "same tolerances ours is stricter on delta logp. Command: "
        "`python experiments/bench_likelihood.py`.\n",
        "| score | ours: method | ours: NFE | ours: wall s | ours: max err | scipy RK45: NFE | scipy: wall s | scipy: max err | speed-up | mean abs logp |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, score_fn, x in cases:
        # A tight solve of the same augmented ODE (same probes) measures each solver's error.
        tight, _, _ = log_likelihood(key, sde, score_fn, x, method="dopri8", rtol=1e-8, atol=1e-8, eps=EPS)
        for method in ("tsit5", "dopri5"):
            run = functools.partial(log_likelihood, key, sde, score_fn, x, method=method, rtol=TOL, atol=TOL, eps=EPS)
            (logp, _, nfe), ours = best_time(run, args.repeats)
            if method == "tsit5":
                (ref, ref_nfe), theirs = best_time(lambda: scipy_log_likelihood(key, sde, score_fn, x), args.repeats)
            err = float(np.max(np.abs(np.asarray(logp) - np.asarray(tight))))
            ref_err = float(np.max(np.abs(ref - np.asarray(tight))))
            row = (
                f"| {name} | {method} | {nfe} | {ours:.3f} | {err:.1e} | {ref_nfe} | {theirs:.3f} | {ref_err:.1e} | "
                f"{theirs / ours:.1f}x | {float(np.mean(np.abs(ref))):.1f} |"
            )
            print(row, flush=True)
            lines.append(row)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("wrote", args.out)


if __name__ == "__main__":
    main()
