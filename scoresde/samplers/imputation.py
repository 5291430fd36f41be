"""Linear inverse problems with any unconditional model: y = A x (+ sigma_y n), by replacement
or TMPD. Inpainting, colorization and super-resolution are the operators `operators.mask`,
`operators.colour_projection` and `operators.average_pool`; `operators.blur` and
`operators.dense` (any matrix) are solved the same way (`solve_inverse`).

Two methods, for every sampler of `registry.SAMPLERS`:

"replace" (the reference's `controllable_generation.py`, Song et al. 2021, App. I): the
samplers run unchanged and the observed part of x, its component in the row space of A,
is replaced by the noised observation: x <- x - A+ (A x - (alpha y + sigma A z)), i.e.
A x = alpha y + sigma A z (masks and the colour basis: the known coordinates themselves),

    PC:        after the corrector and after the predictor, both at the grid time t before
               the step (as the reference), with fresh z; A x_mean = alpha_t y; the start
               has A x = y.
    ODE, fast: along the path A x(t) = alpha_t y + sigma_t A z with ONE z drawn at the
               start: the ODE's observed part moves with its derivative (`pin_velocity`,
               `ode.pinned_drift`), the fast samplers (EDM's churn included) pin it after
               every step.

  Replacement needs A+ (`LinearOperator.replace`: masks, the colour basis, pooling,
  dense matrices; not blur). It is not exact, even for a Gaussian target and a mask: the
  unobserved part follows the reverse SDE whose score sees the observed part at its noised
  mean, not the conditional score (tests/test_imputation.py derives that law and measures
  the bias; tests/test_inverse.py the same for pooling, in the rotated basis).
  Two deliberate departures from the reference: its x_mean keeps the noisy x on the
  unknown part (`x_mean = x * (1 - mask) + ...`), so its final denoising does not reach
  the unknown pixels; here x_mean is the predictor's. And its output's known part is
  alpha_eps data (1 - 5e-5 of it on VP, all of it on VE); here it is the data exactly.

  Noisy y (sigma_y > 0; operators with A AT = s^2 I on their range, `scale`): in the
  observed directions y is x_0 plus noise of std c = sigma_y / s, i.e. a sample of the
  forward process at noise-to-signal ratio c. So the observed part is replaced by
  alpha_t y + tau_t A z, tau_t = sqrt(sigma_t^2 - alpha_t^2 c^2), while the diffusion is
  noisier than y (sigma_t >= alpha_t c), and left to the sampler after, where y carries no
  more information than x_t; the output is not pinned to y. With A invertible (denoising,
  everything observed) and a stochastic sampler this samples p(x | y) exactly, up to the
  time grid; with partial observation it is an approximation, as the noiseless case. The
  deterministic samplers map x_t* deterministically after t*, so they never sample p(x | y)
  this way; and tau_t has an infinite slope at t*, which costs the adaptive ODE solver
  about 3x the steps (145 -> 367-421 NFE on a 16-D Gaussian).

"tmpd" (Tweedie moment projection, Boys et al. 2023): the samplers run on the score of
p_t(x | y), with p(y | x_t) ~= N(y; A x0, A C A^T + sigma_y^2 I) from Tweedie's moments,

    x0(x) = (x + sigma_t^2 s(x, t)) / alpha_t,   C = Cov[x0 | x_t] = (sigma_t^2 / alpha_t) dx0/dx,
    grad_x log p(y | x_t) = dx0/dx A^T v,   (A C A^T + sigma_y^2 I) v = y - A x0,

v by `cg_iters` conjugate-gradient steps (one JVP of the score each; dx0/dx taken
symmetric). Exact for a Gaussian target, with or without noise, when cg_iters >= the
number of observations per example (and a stochastic sampler: the probability-flow ODE
keeps the prior's offset, tests/test_imputation.py), an approximation otherwise. A guided
score costs 2 + cg_iters network passes (the score and cg_iters + 1 JVPs), all counted in
the returned nfe.

With exact y both methods end by setting A x = y (x <- x - A+ (A x - y); TMPD only where
the operator has A+); with noisy y the output is the sampler's. `Imputation` is the
`constraint` hook of the samplers: a pytree whose arrays (y, the operator's mask, kernel
or matrix, sigma_y) are traced, so new data of the same shape reuses the compiled sampler.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from scoresde import parallel, sde_lib
from scoresde.samplers import operators, registry
from scoresde.samplers.operators import COLOR_BASIS  # noqa: F401  (re-exported)
from scoresde.score import ScoreModel, as_score_model, pytree_dataclass, static_field
from scoresde.sde_lib import batch_broadcast as bb

METHODS = ("replace", "tmpd")
PC_SAMPLERS = ("pc", "euler_maruyama", "reverse_diffusion", "ancestral")

def _sum(x):
    """Per-example sums over all but the batch axis, `(B, 1, ..., 1)`."""
    return jnp.sum(x, axis=tuple(range(1, x.ndim)), keepdims=True)


def _div(a, b):
    """a / b, and 0 where b = 0 (a converged conjugate-gradient run)."""
    return jnp.where(b > 0, a / jnp.where(b > 0, b, 1.0), 0.0)


def conjugate_gradient(matvec, b, iters):
    """`iters` steps of CG from v = 0 on matvec(v) = b, per example (b `(B, ...)`); matvec SPD."""

    def step(_, carry):
        v, r, p, rr = carry
        Ap = matvec(p)
        a = _div(rr, _sum(p * Ap))
        v, r = v + a * p, r - a * Ap
        rr_next = _sum(r * r)
        return v, r, r + _div(rr_next, rr) * p, rr_next

    return jax.lax.fori_loop(0, iters, step, (jnp.zeros_like(b), b, b, _sum(b * b)))[0]


def _per_example(c, ref):
    """A scalar as is; per-example values `(B,)` as `(B, 1, ..., 1)` for ref."""
    return bb(c, ref) if jnp.ndim(c) == 1 else c


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Imputation:
    """An observation y = A x (+ sigma_y n) and how to impose it (the samplers' `constraint`).

    target: y `(B, ...)`; operator: an `operators.LinearOperator`; z: `(B, ...)` (x's shape)
    the fixed noise of the pinned path; sigma_y: y's noise std (a traced scalar), or None
    for exact y. method ("replace" or "tmpd") and cg_iters are static. Hooks: `guide`
    (score), `pin` and `pin_velocity` (ODE, fast samplers, PC start), `project` (PC).
    """

    target: jax.Array
    operator: operators.LinearOperator
    z: jax.Array
    sigma_y: jax.Array | None = None
    method: str = dataclasses.field(default="replace", metadata=dict(static=True))
    cg_iters: int = dataclasses.field(default=0, metadata=dict(static=True))

    def _gap(self, alpha, sigma):
        """sigma^2 - alpha^2 c^2 (c = sigma_y / s): how much noisier x_t is than y, per observed direction."""
        return sigma**2 - alpha**2 * (self.sigma_y / self.operator.scale) ** 2

    def _replace(self, x, alpha, sigma, noise):
        """x with A x = alpha y + tau A noise (no noise term for noise=None); tau = sigma for
        exact y, sqrt(sigma^2 - alpha^2 c^2) for noisy y, and x unchanged where that is < 0."""
        op, y = self.operator, self.target
        if self.sigma_y is None:
            tau, active = sigma, None
        else:
            gap = self._gap(alpha, sigma)
            tau, active = jnp.sqrt(jnp.maximum(gap, 0.0)), gap >= 0
        known = _per_example(alpha, y) * y
        if noise is not None:
            known = known + _per_example(tau, y) * op.A(noise)
        out = op.replace(x, known)
        return out if active is None else jnp.where(_per_example(active, x), out, x)

    def fill(self, x):
        """x with A x = y (x - A+ (A x - y)) for exact y where the operator has A+; else x."""
        return x if self.sigma_y is not None or not self.operator.has_pinv else self.operator.replace(x, self.target)

    def pin(self, x, alpha, sigma):
        """Replacement: A x set to alpha y + tau z's image (alpha, sigma scalars; `_replace`)."""
        return self._replace(x, alpha, sigma, self.z) if self.method == "replace" else x

    def pin_velocity(self, v, alpha, sigma, dalpha, dsigma):
        """v (a velocity at the pinned state) with its observed part the path's d/dt (alpha y +
        tau A z), given alpha, sigma and their derivatives; v itself where nothing is pinned."""
        if self.method != "replace":
            return v
        if self.sigma_y is None:
            return self._replace(v, dalpha, dsigma, self.z)
        gap = self._gap(alpha, sigma)
        c2 = (self.sigma_y / self.operator.scale) ** 2
        dtau = (sigma * dsigma - alpha * dalpha * c2) / jnp.sqrt(jnp.maximum(gap, 1e-20))
        known = dalpha * self.target + dtau * self.operator.A(self.z)
        return jnp.where(gap >= 0, self.operator.replace(v, known), v)

    def project(self, sde, key, x, x_mean, t):
        """Replacement at times t `(B,)`: A x = alpha_t y + tau_t A z_fresh, A x_mean = alpha_t y."""
        if self.method != "replace":
            return x, x_mean
        alpha, sigma = sde.marginal_coeffs(jnp.asarray(t, x.dtype))
        noise = jax.random.normal(key, x.shape, x.dtype)
        return self._replace(x, alpha, sigma, noise), self._replace(x_mean, alpha, sigma, None)

    def guide(self, sde, score_fn):
        """The score the samplers use: score_fn itself, or for "tmpd" that of p_t(x | y)."""
        return TMPDScore(score_fn, self, sde) if self.method == "tmpd" else score_fn

    @property
    def evals_per_score(self) -> int:
        """Network passes per guided score evaluation: 1, or 2 + cg_iters for "tmpd"."""
        return 2 + self.cg_iters if self.method == "tmpd" else 1


@pytree_dataclass
class TMPDScore(ScoreModel):
    """The TMPD score of p_t(x | y): s(x, t) + dx0/dx A^T v with (A C A^T + sigma_y^2 I) v = y - A x0
    (module docstring)."""

    score: ScoreModel
    imputation: Imputation
    sde: sde_lib.SDE = static_field()

    def __call__(self, x, t):
        imp, op = self.imputation, self.imputation.operator
        alpha, sigma = (bb(c, x) for c in self.sde.marginal_coeffs(jnp.asarray(t, x.dtype)))
        score, score_jvp = jax.linearize(lambda y: self.score(y, t), x)
        x0 = (x + sigma**2 * score) / alpha

        def x0_jvp(w):  # dx0/dx w = (w + sigma^2 J w) / alpha
            return (w + sigma**2 * score_jvp(w)) / alpha

        def cov_y(v):  # (A C A^T + sigma_y^2 I) v, C = (sigma^2 / alpha) dx0/dx
            out = op.A(sigma**2 / alpha * x0_jvp(op.AT(v)))
            return out if imp.sigma_y is None else out + imp.sigma_y**2 * v

        v = conjugate_gradient(cov_y, imp.target - op.A(x0), imp.cg_iters)
        return score + x0_jvp(op.AT(v))


def _check_method(method, cg_iters):
    if method not in METHODS:
        raise ValueError(f"Unknown imputation method {method!r}; valid names: {', '.join(METHODS)}.")
    if not (isinstance(cg_iters, int) and cg_iters >= 0):
        raise ValueError(f"cg_iters must be an integer >= 0, got {cg_iters!r}.")


def _check_batch(y, what):
    y = jnp.asarray(y)
    if not jnp.issubdtype(y.dtype, jnp.floating):
        raise ValueError(f"{what} must be floating point, in the model's data space (as in training); got {y.dtype}.")
    if y.ndim < 2:
        raise ValueError(f"{what} must be a batch (B, ...) with at least 2 axes, got shape {y.shape}.")
    parallel.check_divisible(y.shape[0])
    return y


def _constraint(operator, y, sigma_y=0.0, method="replace", cg_iters=5) -> Imputation:
    """Validate an observation y = A x (+ sigma_y n) and build its `Imputation` (z = 0)."""
    _check_method(method, cg_iters)
    if not isinstance(operator, operators.LinearOperator):
        raise ValueError(f"operator must be a scoresde.samplers.operators.LinearOperator (mask, average_pool, "
                         f"blur, dense, ...), got {type(operator).__name__}.")
    y = _check_batch(y, "y")
    x_shape = operator.input_shape(y.shape)
    if operator.output_shape(x_shape) != tuple(y.shape):  # raises for x shapes it does not take
        raise ValueError(f"{operator.name} maps x of shape {x_shape} to {operator.output_shape(x_shape)}, "
                         f"not to y's shape {tuple(y.shape)}.")
    if isinstance(sigma_y, bool) or not (isinstance(sigma_y, (int, float, np.integer, np.floating))
                                         and math.isfinite(sigma_y) and sigma_y >= 0):
        raise ValueError(f"sigma_y (the std of y's noise) must be a finite number >= 0, got {sigma_y!r}.")
    if method == "replace" and not operator.has_pinv:
        raise ValueError(f"{operator.name} has no cheap pseudo-inverse, which the replacement method needs; "
                         "use method='tmpd'.")
    if method == "replace" and sigma_y > 0 and operator.scale is None:
        raise ValueError(f"Replacement with noisy y (sigma_y > 0) needs an operator with equal singular values "
                         f"(A A^T = s^2 I on its range); {operator.name}'s are not: use method='tmpd'.")
    if isinstance(operator, operators.Subspace):
        y = operator.mask * y  # the unobserved entries are ignored
    y = parallel.shard_batch(y)
    z = parallel.shard_batch(jnp.zeros(x_shape, y.dtype))
    return Imputation(y, operator, z, jnp.asarray(float(sigma_y), y.dtype) if sigma_y > 0 else None, method, cg_iters)


def _imputation(data, mask, basis=None, method="replace", cg_iters=5):
    """The `Imputation` of data `(B, ...)` known where mask (in the basis) is 1 (mask broadcast to data's shape)."""
    _check_method(method, cg_iters)
    data = _check_batch(data, "data")
    mask = jnp.asarray(mask, data.dtype)
    try:
        mask = jnp.broadcast_to(mask, data.shape)
    except ValueError:
        raise ValueError(
            f"mask of shape {mask.shape} does not broadcast to the data's shape {data.shape}; pass a mask of "
            f"the data's shape, or one with size-1 axes to share it (e.g. (1, *data.shape[1:]))."
        ) from None
    if basis is None:
        op = operators.Subspace(parallel.shard_batch(mask))
    else:
        basis = jnp.asarray(basis, data.dtype)
        op = operators.Subspace(parallel.shard_batch(mask), basis, jnp.linalg.inv(basis))
    return _constraint(op, op.A(data), 0.0, method, cg_iters)


def observation_score_fn(sde, score_fn, data, mask, cg_iters: int = 5, basis=None) -> TMPDScore:
    """The TMPD score of p_t(x | y), y the known part of data `(B, ...)` under mask (1 = known),
    as a score model for any sampler (its data traced). Each evaluation costs 2 + cg_iters
    network passes. For any operator: `inverse_score_fn`."""
    return _imputation(data, mask, basis, "tmpd", cg_iters).guide(sde, as_score_model(score_fn))


def inverse_score_fn(sde, score_fn, operator, y, sigma_y: float = 0.0, cg_iters: int = 5) -> TMPDScore:
    """The TMPD score of p_t(x | y), y = A x + sigma_y n, as a score model for any sampler."""
    return _constraint(operator, y, sigma_y, "tmpd", cg_iters).guide(sde, as_score_model(score_fn))


_fill = jax.jit(Imputation.fill)


def _impute(key, sde, score_fn, constraint, sampler, options):
    """Run the named sampler under the constraint; A x = y at the end for exact y."""
    reserved = {"z", "constraint", "shape"} & set(options)
    if reserved:
        raise ValueError(f"Option(s) {', '.join(sorted(reserved))} are set by the imputation itself; leave them out.")
    registry.check_options(sampler, options)
    score_fn = as_score_model(score_fn)
    shape, dtype = constraint.z.shape, constraint.z.dtype
    sample_key, prior_key, z_key = jax.random.split(key, 3)
    fn = registry.get_sampler(sampler).fn
    if sampler in PC_SAMPLERS:
        x, nfe = fn(sample_key, sde, score_fn, shape, constraint=constraint, **options)
    else:
        z = parallel.shard_batch(jax.random.normal(z_key, shape, dtype))
        constraint = dataclasses.replace(constraint, z=z)
        alpha_T, sigma_T = sde.marginal_coeffs(jnp.full((1,), sde.T, dtype))
        x_T = constraint.pin(sde.prior_sampling(prior_key, shape), alpha_T[0], sigma_T[0])
        x, nfe = fn(sample_key, sde, score_fn, shape, z=x_T, constraint=constraint, **options)
    return _fill(constraint, x), nfe * constraint.evals_per_score


def solve_inverse(key, sde, score_fn, operator, y, sigma_y: float = 0.0, sampler: str = "pc",
                  method: str = "replace", cg_iters: int = 5, **options):
    """Sample x given y = A x + sigma_y n (n ~ N(0, I)) with an unconditional score model.

    operator: an `operators.LinearOperator` (`mask`, `colour_projection`, `average_pool`,
    `blur`, `dense`); y `(B, ...)` its output shape (mask: x's shape, entries where the mask
    is 0 ignored), in the model's data space; x's shape follows from y's. sigma_y: y's
    noise std (0: exact y, and A x = y in the output). sampler: any name of
    `registry.SAMPLERS`, with its options (num_steps, eps, ...). method: "replace" (not for
    blur; with sigma_y > 0 only for operators with a `scale`) or "tmpd" with cg_iters CG
    steps (module docstring: what is exact). Returns (x `(B, ...)`, nfe in network passes
    per sample).
    """
    return _impute(key, sde, score_fn, _constraint(operator, y, sigma_y, method, cg_iters), sampler, options)


def super_resolve(key, sde, score_fn, low, factor: int, sigma_y: float = 0.0, sampler: str = "pc",
                  method: str = "replace", cg_iters: int = 5, **options):
    """High-resolution images `(B, H f, W f, C)` whose f x f block means are low `(B, H, W, C)`
    (+ noise of std sigma_y): `solve_inverse` with `operators.average_pool(factor)`."""
    return solve_inverse(key, sde, score_fn, operators.average_pool(factor), low, sigma_y, sampler, method, cg_iters,
                         **options)


def inpaint(key, sde, score_fn, data, mask, sampler: str = "pc", method: str = "replace", cg_iters: int = 5, **options):
    """Fill in the unknown part of data `(B, ...)` (in the model's data space); mask like data
    or broadcastable to it, 1 = known.

    sampler: any name of `registry.SAMPLERS`, with its options (num_steps, eps, ...).
    method: "replace" (the reference) or "tmpd" (module docstring; cg_iters CG steps).
    Returns (x `(B, ...)` with x = data where mask = 1, nfe in network passes per sample).
    """
    return _impute(key, sde, score_fn, _imputation(data, mask, None, method, cg_iters), sampler, options)


def colorize(key, sde, score_fn, gray, sampler: str = "pc", method: str = "replace", cg_iters: int = 5, **options):
    """Colour images whose gray component is known: gray `(B, H, W, 3)` or `(B, H, W, 1)`.

    The known part is channel 0 of decouple(gray) in `COLOR_BASIS` (sqrt 3 times the channel
    mean); the two colour channels are sampled. Returns (x `(B, H, W, 3)`, nfe); see `inpaint`.
    """
    gray = jnp.asarray(gray)
    if gray.ndim != 4 or gray.shape[-1] not in (1, 3):
        raise ValueError(f"gray must be (B, H, W, 3) or (B, H, W, 1), got shape {gray.shape}.")
    gray = jnp.broadcast_to(gray, gray.shape[:-1] + (3,))
    mask = jnp.asarray([1.0, 0.0, 0.0], gray.dtype)
    return _impute(key, sde, score_fn, _imputation(gray, mask, COLOR_BASIS, method, cg_iters), sampler, options)
