"""Controllable generation by imputation: inpainting and colorization (Song et al. 2021, App. I).

The known part of x is given in an orthonormal basis on the last axis, decouple(x) = x @ M,
couple(u) = u @ M^-1 (M = I for inpainting, `COLOR_BASIS` for colorization), by a mask in
that basis (1 = known). Two methods, for every sampler of `registry.SAMPLERS`:

"replace" (the reference's `controllable_generation.py`): the samplers run unchanged and
the known part u_k is replaced by the data's noised marginal,

    PC:        u_k <- alpha_t data_k + sigma_t z_fresh after the corrector and after the
               predictor, both at the grid time t before the step (as the reference), and
               u_k of the noise-free mean x_mean <- alpha_t data_k; the start is u_k = data_k.
    ODE, fast: u_k(t) = alpha_t data_k + sigma_t z with ONE z drawn at the start: the ODE's
               known components move with d/dt u_k(t) (`ode.pinned_drift`), the fast
               samplers (EDM's churn included) pin u_k after every step.

  Replacement is not exact, even for a Gaussian target: the unknown part follows the
  reverse SDE whose score sees x_k at its noised mean alpha_t data_k, not the conditional
  score (tests/test_imputation.py derives that law and measures the bias).
  Two deliberate departures from the reference: its x_mean keeps the noisy x on the
  unknown part (`x_mean = x * (1 - mask) + ...`), so its final denoising does not reach
  the unknown pixels; here x_mean is the predictor's. And its output's known part is
  alpha_eps data (1 - 5e-5 of it on VP, all of it on VE); here it is the data exactly.

"tmpd" (Tweedie moment projection, Boys et al. 2023): the samplers run on the score of
p_t(x | y), y = u_k(0), with p(y | x_t) ~= N(y; P x0, P C P^T) from Tweedie's moments,

    x0(x) = (x + sigma_t^2 s(x, t)) / alpha_t,   C = Cov[x0 | x_t] = (sigma_t^2 / alpha_t) dx0/dx,
    grad_x log p(y | x_t) = dx0/dx P^T v,   P C P^T v = y - P x0,   P = mask o decouple,

v by `cg_iters` conjugate-gradient steps (one JVP of the score each; dx0/dx taken
symmetric). Exact for a Gaussian target when cg_iters >= the number of known coordinates,
an approximation otherwise. A guided score costs 2 + cg_iters network passes (the score
and cg_iters + 1 JVPs), all counted in the returned nfe.

Both methods end by setting the known part to the data. `Imputation` is the `constraint`
hook of the samplers: a pytree whose arrays are traced, so new data or masks of the same
shape reuse the compiled sampler.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from scoresde import parallel, sde_lib
from scoresde.samplers import registry
from scoresde.score import ScoreModel, as_score_model, pytree_dataclass, static_field
from scoresde.sde_lib import batch_broadcast as bb

METHODS = ("replace", "tmpd")
PC_SAMPLERS = ("pc", "euler_maruyama", "reverse_diffusion", "ancestral")

# The reference's orthonormal colour basis: column 0 is the gray direction (1, 1, 1) / sqrt(3).
COLOR_BASIS = np.array(
    [
        [5.7735014e-01, -8.1649649e-01, 4.0820226e-10],
        [5.7735026e-01, 4.0824834e-01, 7.0710671e-01],
        [5.7735026e-01, 4.0824822e-01, -7.0710683e-01],
    ]
)


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


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Imputation:
    """Known data in an orthonormal basis, and how to impose it (the samplers' `constraint`).

    target: decouple(data) `(B, ...)`; mask: `(B, ...)`, 1 = known, in the basis;
    z: `(B, ...)` the fixed noise of the pinned path; basis, basis_inv: `(C, C)` acting on
    the last axis, or None for the identity. method ("replace" or "tmpd") and cg_iters are
    static. Hooks: `guide` (score), `pin` (ODE, fast samplers, PC start), `project` (PC).
    """

    target: jax.Array
    mask: jax.Array
    z: jax.Array
    basis: jax.Array | None
    basis_inv: jax.Array | None
    method: str = dataclasses.field(default="replace", metadata=dict(static=True))
    cg_iters: int = dataclasses.field(default=0, metadata=dict(static=True))

    def decouple(self, x):
        return x if self.basis is None else x @ self.basis

    def couple(self, u):
        return u if self.basis is None else u @ self.basis_inv

    def _with_known(self, x, known):
        """couple(decouple(x) (1 - mask) + known mask)."""
        return self.couple(self.decouple(x) * (1.0 - self.mask) + known * self.mask)

    def fill(self, x):
        """x with its known part set to the data."""
        return self._with_known(x, self.target)

    def pin(self, x, alpha, sigma):
        """Replacement: the known part of x set to alpha data + sigma z (alpha, sigma scalars)."""
        return self._with_known(x, alpha * self.target + sigma * self.z) if self.method == "replace" else x

    def project(self, sde, key, x, x_mean, t):
        """Replacement at times t `(B,)`: known parts alpha_t data + sigma_t z_fresh (x), alpha_t data (x_mean)."""
        if self.method != "replace":
            return x, x_mean
        alpha, sigma = (bb(c, x) for c in sde.marginal_coeffs(jnp.asarray(t, x.dtype)))
        noise = jax.random.normal(key, x.shape, x.dtype)
        return self._with_known(x, alpha * self.target + sigma * noise), self._with_known(x_mean, alpha * self.target)

    def guide(self, sde, score_fn):
        """The score the samplers use: score_fn itself, or for "tmpd" that of p_t(x | y)."""
        return TMPDScore(score_fn, self, sde) if self.method == "tmpd" else score_fn

    @property
    def evals_per_score(self) -> int:
        """Network passes per guided score evaluation: 1, or 2 + cg_iters for "tmpd"."""
        return 2 + self.cg_iters if self.method == "tmpd" else 1


@pytree_dataclass
class TMPDScore(ScoreModel):
    """The TMPD score of p_t(x | y): s(x, t) + dx0/dx P^T v with C_kk v = y - P x0 (module docstring)."""

    score: ScoreModel
    imputation: Imputation
    sde: sde_lib.SDE = static_field()

    def __call__(self, x, t):
        imp = self.imputation
        alpha, sigma = (bb(c, x) for c in self.sde.marginal_coeffs(jnp.asarray(t, x.dtype)))
        score, score_jvp = jax.linearize(lambda y: self.score(y, t), x)
        x0 = (x + sigma**2 * score) / alpha

        def x0_jvp(w):  # dx0/dx w = (w + sigma^2 J w) / alpha
            return (w + sigma**2 * score_jvp(w)) / alpha

        def cov_kk(v):  # P C P^T v, C = (sigma^2 / alpha) dx0/dx
            return imp.mask * imp.decouple(sigma**2 / alpha * x0_jvp(imp.couple(imp.mask * v)))

        v = conjugate_gradient(cov_kk, imp.mask * (imp.target - imp.decouple(x0)), imp.cg_iters)
        return score + x0_jvp(imp.couple(imp.mask * v))


def _imputation(data, mask, basis=None, method="replace", cg_iters=5):
    """Validate the inputs and build the `Imputation` (mask broadcast to data's shape, z = 0)."""
    if method not in METHODS:
        raise ValueError(f"Unknown imputation method {method!r}; valid names: {', '.join(METHODS)}.")
    if not (isinstance(cg_iters, int) and cg_iters >= 0):
        raise ValueError(f"cg_iters must be an integer >= 0, got {cg_iters!r}.")
    data = jnp.asarray(data)
    if not jnp.issubdtype(data.dtype, jnp.floating):
        raise ValueError(f"data must be floating point, in the model's data space (as in training); got {data.dtype}.")
    if data.ndim < 2:
        raise ValueError(f"data must be a batch (B, ...) with at least 2 axes, got shape {data.shape}.")
    parallel.check_divisible(data.shape[0])
    mask = jnp.asarray(mask, data.dtype)
    try:
        mask = jnp.broadcast_to(mask, data.shape)
    except ValueError:
        raise ValueError(
            f"mask of shape {mask.shape} does not broadcast to the data's shape {data.shape}; pass a mask of "
            f"the data's shape, or one with size-1 axes to share it (e.g. (1, *data.shape[1:]))."
        ) from None
    basis_inv = None
    if basis is not None:
        basis = jnp.asarray(basis, data.dtype)
        basis_inv = jnp.linalg.inv(basis)
    data, mask = parallel.shard_batch(data), parallel.shard_batch(mask)
    target = data if basis is None else data @ basis
    return Imputation(target, mask, jnp.zeros_like(target), basis, basis_inv, method, cg_iters)


def observation_score_fn(sde, score_fn, data, mask, cg_iters: int = 5, basis=None) -> TMPDScore:
    """The TMPD score of p_t(x | y), y the known part of data `(B, ...)` under mask (1 = known),
    as a score model for any sampler (its data traced). Each evaluation costs 2 + cg_iters
    network passes."""
    return _imputation(data, mask, basis, "tmpd", cg_iters).guide(sde, as_score_model(score_fn))


_fill = jax.jit(Imputation.fill)


def _impute(key, sde, score_fn, constraint, sampler, options):
    """Run the named sampler under the constraint; known part set to the data at the end."""
    reserved = {"z", "constraint", "shape"} & set(options)
    if reserved:
        raise ValueError(f"Option(s) {', '.join(sorted(reserved))} are set by the imputation itself; leave them out.")
    registry.check_options(sampler, options)
    score_fn = as_score_model(score_fn)
    shape = constraint.target.shape
    sample_key, prior_key, z_key = jax.random.split(key, 3)
    fn = registry.get_sampler(sampler).fn
    if sampler in PC_SAMPLERS:
        x, nfe = fn(sample_key, sde, score_fn, shape, constraint=constraint, **options)
    else:
        z = parallel.shard_batch(jax.random.normal(z_key, shape, constraint.target.dtype))
        constraint = dataclasses.replace(constraint, z=z)
        alpha_T, sigma_T = sde.marginal_coeffs(jnp.full((1,), sde.T, constraint.target.dtype))
        x_T = constraint.pin(sde.prior_sampling(prior_key, shape), alpha_T[0], sigma_T[0])
        x, nfe = fn(sample_key, sde, score_fn, shape, z=x_T, constraint=constraint, **options)
    return _fill(constraint, x), nfe * constraint.evals_per_score


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
