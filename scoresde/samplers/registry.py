"""Samplers by name, so that ablations and user code sweep any of them with one call.

Every entry is called as `fn(key, sde, score_fn, shape, num_steps=..., eps=..., **options)`
and returns `(samples, nfe)`. Its options and their defaults (those of the papers) are
the keyword arguments of the function behind it; `sampler_options(name)` lists them.
"""

from __future__ import annotations

import functools
import inspect

from scoresde.samplers.fast import ddim_sample, dpm_solver_sample, edm_sample
from scoresde.samplers.ode import ode_sample
from scoresde.samplers.pc import pc_sample

SAMPLERS = {
    # Song et al. 2021: reverse-diffusion predictor + Langevin corrector (PC, snr 0.16).
    "pc": pc_sample,
    # Reverse-SDE Euler--Maruyama alone.
    "euler_maruyama": functools.partial(pc_sample, predictor="euler_maruyama", corrector="none"),
    # Reverse diffusion alone, and DDPM/SMLD ancestral sampling alone.
    "reverse_diffusion": functools.partial(pc_sample, predictor="reverse_diffusion", corrector="none"),
    "ancestral": functools.partial(pc_sample, predictor="ancestral_sampling", corrector="none"),
    # Probability-flow ODE: adaptive (tsit5 by default) or a fixed-step method.
    "ode": ode_sample,
    "ode_heun": functools.partial(ode_sample, method="heun"),
    # Karras et al. 2022: deterministic Heun, and the stochastic sampler with EDM's
    # CIFAR-10 VP settings (Table 5: S_churn 10, S_min 0.01, S_max 50, S_noise 1.007).
    "edm_heun": edm_sample,
    "edm_stochastic": functools.partial(edm_sample, S_churn=10.0, S_min=0.01, S_max=50.0, S_noise=1.007),
    # Lu et al.: DPM-Solver++(2M) (default), DPM-Solver++(3M), DPM-Solver-3 singlestep, DDIM.
    "dpm_solver++": dpm_solver_sample,
    "dpm_solver++_3m": functools.partial(dpm_solver_sample, order=3),
    "dpm_solver": functools.partial(dpm_solver_sample, order=3, method="singlestep", plus=False),
    "ddim": ddim_sample,
}


def _lookup(name):
    if name not in SAMPLERS:
        raise ValueError(f"Unknown sampler {name!r}; valid names: {', '.join(SAMPLERS)}.")
    return SAMPLERS[name]


def sampler_options(name: str) -> dict:
    """The keyword options of a sampler with their defaults (beyond key, sde, score_fn, shape)."""
    fn = _lookup(name)
    params = inspect.signature(fn).parameters
    internal = ("key", "sde", "score_fn", "shape", "constraint")  # constraint: the imputation hook
    return {k: p.default for k, p in params.items() if k not in internal}


def sample(key, sde, score_fn, shape, sampler: str = "pc", **options):
    """Run the named sampler. Returns (samples `shape`, nfe)."""
    fn = _lookup(sampler)
    unknown = set(options) - set(sampler_options(sampler))
    if unknown:
        raise ValueError(
            f"Sampler {sampler!r} has no option(s) {', '.join(sorted(unknown))}; "
            f"valid: {', '.join(sampler_options(sampler))}."
        )
    return fn(key, sde, score_fn, tuple(shape), **options)


def num_steps_for_nfe(sampler: str, nfe: int, **options) -> int | None:
    """The num_steps giving (at most) `nfe` score evaluations, or None for adaptive solvers."""
    opts = {**sampler_options(sampler), **options}
    if sampler in ("pc", "euler_maruyama", "reverse_diffusion", "ancestral"):
        per_step = (opts["predictor"] != "none") + (opts["corrector"] != "none") * opts["n_steps"]
        return max(1, nfe // per_step)
    if sampler.startswith("ode"):
        if opts["method"] in ("euler",):
            return nfe
        return None if opts["method"] in ("tsit5", "dopri5", "bosh3", "dopri8") else max(1, nfe // 2)
    if sampler.startswith("edm"):
        return max(1, (nfe + 1) // 2)
    if opts.get("method") == "singlestep":
        return max(1, nfe // opts["order"])
    return max(1, nfe)



