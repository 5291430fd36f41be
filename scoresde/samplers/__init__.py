"""Reverse-time samplers. Each takes a score model or a plain `score_fn(x, t)` and returns `(samples, nfe)`."""

from scoresde.samplers.ode import METHODS as ODE_METHODS
from scoresde.samplers.ode import ODESolveError, ode_encode, ode_sample, solve_ode
from scoresde.samplers.pc import CORRECTORS, PREDICTORS, pc_sample
from scoresde.samplers.fast import ddim_sample, dpm_solver_sample, edm_sample
from scoresde.samplers.unipc import unipc_sample
from scoresde.samplers.adaptive_sde import SDESolveError, adaptive_sde_sample
from scoresde.samplers.registry import SAMPLERS, Sampler, check_options, get_sampler, num_steps_for_nfe, sample, sampler_options
from scoresde.samplers import cascade, operators, timesteps
from scoresde.samplers.imputation import (COLOR_BASIS, Imputation, colorize, inpaint, inverse_score_fn,
                                           observation_score_fn, solve_inverse, super_resolve)
