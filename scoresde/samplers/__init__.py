"""Reverse-time samplers. Each takes a plain `score_fn(x, t)` and returns `(samples, nfe)`."""

from scoresde.samplers.ode import METHODS as ODE_METHODS
from scoresde.samplers.ode import ODESolveError, ode_encode, ode_sample, solve_ode
from scoresde.samplers.pc import CORRECTORS, PREDICTORS, pc_sample
