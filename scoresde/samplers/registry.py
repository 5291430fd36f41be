"""Samplers by name, so that ablations and user code sweep any of them with one call.

Every entry is a `Sampler`: a function called as `fn(key, sde, score_fn, shape,
num_steps=..., eps=..., **options)` returning `(samples, nfe)`, and its cost, the
score evaluations per sample for a number of steps. Its options and their defaults
(those of the papers) are the keyword arguments of the function; `sampler_options(name)`
lists them, and `check_options` is the one place where options are validated.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
from typing import Callable

from scoresde.samplers import adaptive_sde, fast, ode, pc, unipc
from scoresde.samplers.adaptive_sde import adaptive_sde_sample
from scoresde.samplers.fast import ddim_sample, dpm_solver_sample, edm_sample
from scoresde.samplers.ode import ode_sample
from scoresde.samplers.pc import pc_sample
from scoresde.samplers.unipc import unipc_sample

# Arguments that are not options: the call's own, and the hooks set by `imputation`.
_NOT_OPTIONS = ("key", "sde", "score_fn", "shape", "constraint")


@dataclasses.dataclass(frozen=True)
class Sampler:
    """A sampler function and its cost `cost(num_steps, **options) -> nfe` (None: adaptive)."""

    fn: Callable
    cost: Callable[..., int | None]

    @property
    def options(self) -> dict:
        params = inspect.signature(self.fn).parameters
        return {k: p.default for k, p in params.items() if k not in _NOT_OPTIONS}

    def nfe(self, num_steps: int, **options) -> int | None:
        """Score evaluations per sample with num_steps steps, or None for adaptive solvers."""
        return self.cost(**{**self.options, **options, "num_steps": num_steps})

    def steps_for_nfe(self, nfe: int, **options) -> int | None:
        """The most steps whose cost is at most nfe (at least 1), or None for adaptive solvers."""
        if self.nfe(1, **options) is None:
            return None
        low, high = 1, max(1, nfe)  # every cost is >= num_steps and increasing in it
        while low < high:
            mid = (low + high + 1) // 2
            low, high = (mid, high) if self.nfe(mid, **options) <= nfe else (low, mid - 1)
        return low


SAMPLERS = {
    # Song et al. 2021: reverse-diffusion predictor + Langevin corrector (PC, snr 0.16).
    "pc": Sampler(pc_sample, pc.pc_nfe),
    # Reverse-SDE Euler--Maruyama alone.
    "euler_maruyama": Sampler(functools.partial(pc_sample, predictor="euler_maruyama", corrector="none"), pc.pc_nfe),
    # Reverse diffusion alone, and DDPM/SMLD ancestral sampling alone.
    "reverse_diffusion": Sampler(functools.partial(pc_sample, predictor="reverse_diffusion", corrector="none"), pc.pc_nfe),
    "ancestral": Sampler(functools.partial(pc_sample, predictor="ancestral_sampling", corrector="none"), pc.pc_nfe),
    # Probability-flow ODE: adaptive (tsit5 by default) or a fixed-step method.
    "ode": Sampler(ode_sample, ode.ode_nfe),
    "ode_heun": Sampler(functools.partial(ode_sample, method="heun"), ode.ode_nfe),
    # Karras et al. 2022: deterministic Heun, and the stochastic sampler with EDM's
    # CIFAR-10 VP settings (Table 5: S_churn 10, S_min 0.01, S_max 50, S_noise 1.007).
    "edm_heun": Sampler(edm_sample, fast.edm_nfe),
    "edm_stochastic": Sampler(
        functools.partial(edm_sample, S_churn=10.0, S_min=0.01, S_max=50.0, S_noise=1.007), fast.edm_nfe
    ),
    # Lu et al.: DPM-Solver++(2M) (default), DPM-Solver++(3M), DPM-Solver-3 singlestep, DDIM.
    "dpm_solver++": Sampler(dpm_solver_sample, fast.dpm_solver_nfe),
    "dpm_solver++_3m": Sampler(functools.partial(dpm_solver_sample, order=3), fast.dpm_solver_nfe),
    "dpm_solver": Sampler(
        functools.partial(dpm_solver_sample, order=3, method="singlestep", plus=False), fast.dpm_solver_nfe
    ),
    "ddim": Sampler(ddim_sample, fast.dpm_solver_nfe),
    # Zhao et al. 2023: UniPC-2 (bh2, data prediction), one evaluation per step.
    "unipc": Sampler(unipc_sample, unipc.unipc_nfe),
    # Jolicoeur-Martineau et al. 2021 ("Gotta Go Fast"): reverse SDE with per-example adaptive
    # steps (Euler-Maruyama / stochastic improved Euler pair, error control); NFE data-dependent.
    "adaptive_sde": Sampler(adaptive_sde_sample, adaptive_sde.adaptive_sde_nfe),
}


def get_sampler(name: str) -> Sampler:
    if name not in SAMPLERS:
        raise ValueError(f"Unknown sampler {name!r}; valid names: {', '.join(SAMPLERS)}.")
    return SAMPLERS[name]


def sampler_options(name: str) -> dict:
    """The keyword options of a sampler with their defaults (beyond key, sde, score_fn, shape)."""
    return get_sampler(name).options


def _number(value, integer=False):
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
        return False
    return math.isfinite(value)


# The range of every numeric option of any sampler, and UniPC's variant: (test, what the value must be).
_RANGES = {
    "num_steps": (lambda v: v is None or (_number(v, True) and v >= 1), "an integer >= 1"),
    "n_steps": (lambda v: _number(v, True) and v >= 0, "an integer >= 0"),
    "order": (lambda v: v in (1, 2, 3) and not isinstance(v, bool), "1, 2 or 3"),
    "max_steps": (lambda v: _number(v, True) and v >= 1, "an integer >= 1"),
    "eps": (lambda v: v is None or (_number(v) and v > 0), "a finite number > 0 (below T)"),
    "snr": (lambda v: _number(v) and v >= 0, "a finite number >= 0"),
    "rtol": (lambda v: _number(v) and v > 0, "a finite number > 0"),
    "atol": (lambda v: _number(v) and v > 0, "a finite number > 0"),
    "rho": (lambda v: _number(v) and v > 0, "a finite number > 0"),
    "h_init": (lambda v: _number(v) and v > 0, "a finite number > 0"),
    "safety": (lambda v: _number(v) and 0 < v <= 1, "a number in (0, 1]"),
    "exponent": (lambda v: _number(v) and v > 0, "a finite number > 0"),
    "S_churn": (lambda v: _number(v) and v >= 0, "a finite number >= 0"),
    "S_min": (lambda v: _number(v) and v >= 0, "a finite number >= 0"),
    "S_max": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0, "a number >= 0 (inf allowed)"),
    "S_noise": (lambda v: _number(v) and v >= 0, "a finite number >= 0"),
    "variant": (lambda v: v in unipc.VARIANTS, "'bh1' or 'bh2'"),
    "timesteps": (lambda v: v is None or fast.is_decreasing_grid(v), "None or a strictly decreasing sequence of >= 2 finite times > 0"),
    "brownian": (lambda v: v in adaptive_sde.BROWNIAN, "'memory' or 'redraw'"),
}


def check_options(name: str, options: dict) -> None:
    """Raise a one-line ValueError for an unknown sampler, an option it does not have, or
    a numeric option out of its range; the one check behind `sample`, imputation and the CLI."""
    valid = sampler_options(name)
    unknown = set(options) - set(valid)
    if unknown:
        raise ValueError(
            f"Sampler {name!r} has no option(s) {', '.join(sorted(unknown))}; valid: {', '.join(valid)}."
        )
    check_numbers("Sampler option", **options)
    timesteps, num_steps = options.get("timesteps"), options.get("num_steps")
    if timesteps is not None and num_steps is not None and len(timesteps) != num_steps + 1:
        raise ValueError(f"Sampler option timesteps has {len(timesteps)} times but num_steps={num_steps} needs {num_steps + 1}.")


def check_numbers(what: str = "Option", **values) -> None:
    """A one-line ValueError for a numeric setting out of its range (`_RANGES`; others pass)."""
    for key, value in values.items():
        if key in _RANGES and not _RANGES[key][0](value):
            raise ValueError(f"{what} {key} must be {_RANGES[key][1]}, got {value!r}.")


def sample(key, sde, score_fn, shape, sampler: str = "pc", **options):
    """Run the named sampler. Returns (samples `shape`, nfe)."""
    check_options(sampler, options)
    return get_sampler(sampler).fn(key, sde, score_fn, tuple(shape), **options)


def num_steps_for_nfe(sampler: str, nfe: int, **options) -> int | None:
    """The num_steps giving at most `nfe` score evaluations, or None for adaptive solvers."""
    return get_sampler(sampler).steps_for_nfe(nfe, **options)
