"""Sampling grids learnt for one score: the times of a few-step sampler, fitted by gradient
descent through the sampler itself to a tight solve from the same latents (LD3, Tong et al.
2025, "Learning to Discretize Denoising Diffusion ODEs"; cf. AYS, Sabour et al. 2024).

A grid sampler maps latents z and its times t_0 = T > t_1 > ... > t_M = eps to samples
x(z; t). Where a tight probability-flow ODE solve gives x*(z), the grid minimises

    L(t) = E_z |x(z; t) - x*(z)|^2 / d

over a calibration batch of latents. The free parameters are the interior times, as
increments of the half-log-SNR lambda_t = log(alpha_t / sigma_t) through a softmax, so that
every grid stays strictly decreasing and keeps its end points:

    lambda(t_i) = lambda(T) + (lambda(eps) - lambda(T)) sum_{j < i} softmax(theta)_j.

The sampler and its score are traced, so this costs `iterations` backward passes through
M score evaluations on the calibration batch, and the tight solve once.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from scoresde import sde_lib
from scoresde.samplers import fast, registry
from scoresde.score import as_score_model


def grid_from_logits(sde, theta, eps):
    """The `(M + 1,)` times from T down to eps whose lambda increments are softmax(theta `(M,)`)."""
    lam_T, lam_eps = fast._lambda(sde, jnp.asarray(sde.T)), fast._lambda(sde, jnp.asarray(eps))
    lam = lam_T + (lam_eps - lam_T) * jnp.cumsum(jax.nn.softmax(theta))
    ts = fast._t_of_lambda(sde, lam)
    return jnp.concatenate([jnp.full((1,), sde.T), ts[:-1], jnp.full((1,), eps)])


def logits_of_grid(sde, ts):
    """theta with `grid_from_logits(sde, theta, ts[-1]) = ts` (`ts` strictly decreasing)."""
    lam = jax.vmap(lambda t: fast._lambda(sde, t))(jnp.asarray(ts, jnp.float32))
    return jnp.log(jnp.diff(lam))


def optimize_timesteps(
    key,
    sde: sde_lib.SDE,
    score_fn,
    shape,
    sampler: str = "dpm_solver++_3m",
    num_steps: int = 10,
    eps: float | None = None,
    spacing: str | None = None,
    teacher: str = "ode",
    teacher_options: dict | None = None,
    iterations: int = 300,
    learning_rate: float = 0.05,
    progress: bool = True,
    **options,
):
    """Fit the `num_steps + 1` times of a grid sampler to a tight solve (module docstring).

    Args:
      key: draws the calibration latents `shape` (B, ...) from the prior; use other latents
        for evaluation.
      sampler: any sampler with a `timesteps` option (DPM-Solver(++), DDIM, UniPC), with its
        `options`; `spacing` is the grid it starts from (None: the sampler's default).
      teacher, teacher_options: the tight solve (default: the adaptive probability-flow ODE,
        tsit5 at rtol = atol = 1e-5).
      iterations, learning_rate: Adam on theta (module docstring).
    Returns (timesteps `(num_steps + 1,)` numpy, from T to eps; a dict with the calibration
    loss L before and after, and the teacher's NFE).
    """
    if "timesteps" not in registry.sampler_options(sampler):
        raise ValueError(f"Sampler {sampler!r} has no timesteps option; use one of "
                         f"{', '.join(n for n in registry.SAMPLERS if 'timesteps' in registry.sampler_options(n))}.")
    eps = sde_lib.default_eps(sde) if eps is None else float(eps)
    if spacing is None:
        spacing = registry.sampler_options(sampler)["spacing"]
    start = fast.sampling_grid(sde, num_steps, eps, spacing)
    registry.check_options(sampler, {**options, "num_steps": num_steps, "eps": eps, "timesteps": np.asarray(start)})
    options["spacing"] = spacing
    if not (registry._number(iterations, integer=True) and iterations >= 1):
        raise ValueError(f"iterations must be an integer >= 1, got {iterations!r}.")
    if not (registry._number(learning_rate) and learning_rate > 0):
        raise ValueError(f"learning_rate must be a finite number > 0, got {learning_rate!r}.")
    teacher_options = dict(teacher_options or {})
    registry.check_options(teacher, teacher_options)
    score_fn = as_score_model(score_fn)
    z = sde.prior_sampling(key, tuple(shape))
    x_ref, teacher_nfe = registry.sample(None, sde, score_fn, tuple(shape), teacher, z=z, eps=eps, **teacher_options)
    run = functools.partial(registry.get_sampler(sampler).fn, None, sde, shape=tuple(shape), num_steps=num_steps,
                            eps=None, **options)

    def loss(theta, score_fn, z, x_ref):  # all traced: the network's parameters, latents and targets
        x, _ = run(score_fn, timesteps=grid_from_logits(sde, theta, eps), z=z)
        return jnp.mean(jnp.sqrt(jnp.mean((x - x_ref) ** 2, axis=tuple(range(1, x.ndim)))))

    optimizer = optax.adam(learning_rate)

    @functools.partial(jax.jit, static_argnums=2)
    def fit(theta, state, chunk, score_fn, z, x_ref):
        def step(carry, _):
            theta, state = carry
            value, grad = jax.value_and_grad(loss)(theta, score_fn, z, x_ref)
            updates, state = optimizer.update(grad, state)
            return (optax.apply_updates(theta, updates), state), value

        (theta, state), values = jax.lax.scan(step, (theta, state), length=chunk)
        return theta, state, values

    theta = logits_of_grid(sde, start)
    state = optimizer.init(theta)
    before = float(loss(theta, score_fn, z, x_ref))
    best, best_loss = theta, before
    with tqdm(total=iterations, desc="timesteps", disable=not progress) as bar:
        done = 0
        while done < iterations:
            chunk = min(25, iterations - done)
            new, state, values = fit(theta, state, chunk, score_fn, z, x_ref)
            if not bool(jnp.all(jnp.isfinite(values))):
                break
            theta, done = new, done + chunk
            value = float(loss(theta, score_fn, z, x_ref))
            if value < best_loss:
                best, best_loss = theta, value
            bar.set_postfix(loss=f"{value:.3g}")
            bar.update(chunk)
    return np.asarray(grid_from_logits(sde, best, eps)), {
        "loss_before": before, "loss_after": best_loss, "teacher_nfe": int(teacher_nfe)}
