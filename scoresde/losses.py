"""Training objectives of Song et al. (2021), exactly as the reference `losses.py`.

Every builder returns `loss_fn(params, key, batch) -> scalar`, a pure function of
the network parameters, a PRNG key and a batch (an array `(B, ...)` or a dict with
an "image" entry). It is jit-, grad- and shard-friendly: under `jax.jit` with the
batch split over devices, the mean over the batch is the global mean.

Randomness: `key` is split into three, `k_t, k_z, k_dropout = jax.random.split(key, 3)`;
`k_t` draws the times (or discrete noise levels), `k_z` the Gaussian noise, and
`k_dropout` is the network's dropout key when `train=True`.

- `get_sde_loss_fn`: continuous-time denoising score matching, t ~ U(eps, T),
  x(t) = s(t) x + sigma(t) z, and per example
      without likelihood weighting: || score * sigma + z ||^2,
      with likelihood weighting:    || score + z / sigma ||^2 * g(t)^2,
  where ||.||^2 is the mean over the non-batch dimensions (`reduce_mean=True`) or
  half the sum (`reduce_mean=False`), then averaged over the batch.
- `get_smld_loss_fn`: NCSN's discrete loss for the VE SDE: level i ~ U{0..N-1} on the
  descending sigma ladder, || score - (-noise / sigma_i^2) ||^2 * sigma_i^2.
- `get_ddpm_loss_fn`: DDPM's loss for VP SDEs: index i ~ U{0..N-1},
  x_i = sqrt(abar_i) x + sqrt(1 - abar_i) noise, || output - noise ||^2.
- `get_loss_fn`: the reference's choice between them (`training.continuous`).
- `get_classifier_loss_fn`: cross-entropy of a noise-conditional classifier on
  x(t) = s(t) x + sigma(t) z, t ~ U(eps, T), for classifier guidance.

Conditional models: `condition(batch) -> y` reads the condition (class labels `(B,)`
or tokens `(B, L)`) from a batch, and each example's condition is replaced by the null
condition with probability `p_uncond` (drawn with `jax.random.fold_in(key, 3)`), so
one network learns s(x, t, y) and s(x, t, None) for classifier-free guidance.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from scoresde import sde_lib
from scoresde.conditioning import drop_condition
from scoresde.score import get_score_fn, noise_labels
from scoresde.sde_lib import batch_broadcast

LossFn = Callable[[object, jax.Array, object], jax.Array]


def batch_images(batch) -> jax.Array:
    """The data array of a batch: the batch itself, or its "image" entry."""
    if isinstance(batch, dict):
        return batch["image"]
    return batch


def _reduce_op(reduce_mean: bool):
    """Per-example reduction over flattened dims: mean, or half the sum (the reference)."""
    if reduce_mean:
        return lambda x: jnp.mean(x, axis=-1)
    return lambda x: 0.5 * jnp.sum(x, axis=-1)


def _flat(x):
    return x.reshape((x.shape[0], -1))


def batch_condition(condition, p_uncond: float, key, batch):
    """The batch's condition with per-example dropout to null, or None for unconditional models."""
    if condition is None:
        return None
    return drop_condition(jax.random.fold_in(key, 3), condition(batch), p_uncond)


@dataclasses.dataclass(frozen=True)
class SplitLoss:
    """A loss `(params, key, batch) -> scalar` in two parts, so that gradient accumulation
    can split a batch and its randomness into micro-batches and get the same loss:
    `draw(key, batch) -> (noise, dropout_key)`, noise a pytree of per-example arrays, and
    `per_example(params, batch, noise, dropout_key) -> (B,)`; the loss is their mean."""

    draw: Callable
    per_example: Callable

    def __call__(self, params, key, batch):
        noise, k_dropout = self.draw(key, batch)
        return jnp.mean(self.per_example(params, batch, noise, k_dropout))


def get_sde_loss_fn(
    sde: sde_lib.SDE,
    model: nn.Module,
    train: bool,
    reduce_mean: bool = True,
    continuous: bool = True,
    likelihood_weighting: bool = True,
    eps: float = 1e-5,
    parameterization: str | None = None,
    condition: Callable | None = None,
    p_uncond: float = 0.0,
) -> LossFn:
    """Continuous-time denoising score matching (the reference's `get_sde_loss_fn`).

    Args:
      sde: the forward SDE.
      model: a Flax module `model.apply({"params": p}, x, labels, train=..., rngs=...)`.
      train: training loss (dropout on) or evaluation loss.
      reduce_mean: average over data dimensions; otherwise half their sum.
      continuous: whether the network takes continuous time labels (see `get_score_fn`).
      likelihood_weighting: weight by g(t)^2 (Song et al. 2021, "maximum likelihood
        training"); otherwise lambda(t) = sigma(t)^2.
      eps: smallest time sampled.
      parameterization: what the network outputs (default: the reference's choice).
      condition: `condition(batch) -> y` for a conditional network, else None.
      p_uncond: probability of training an example on the null condition.
    """
    reduce_op = _reduce_op(reduce_mean)

    def draw(key, batch):
        """The batch's randomness: per-example times t, noise z and condition y, and the dropout key."""
        data = batch_images(batch)
        k_t, k_z, k_dropout = jax.random.split(key, 3)
        t = jax.random.uniform(k_t, (data.shape[0],), data.dtype, minval=eps, maxval=sde.T)
        z = jax.random.normal(k_z, data.shape, data.dtype)
        y = batch_condition(condition, p_uncond if train else 0.0, key, batch)
        return {"t": t, "z": z, "y": y}, k_dropout

    def per_example(params, batch, noise, k_dropout):
        """The loss of each example `(B,)` given its randomness from `draw`."""
        data, t, z, y = batch_images(batch), noise["t"], noise["z"], noise["y"]
        mean, std = sde.marginal_prob(data, t)
        perturbed = mean + batch_broadcast(std, data) * z
        score_fn = get_score_fn(
            sde,
            model,
            params,
            train=train,
            continuous=continuous,
            parameterization=parameterization,
            dropout_rng=k_dropout if train else None,
        )
        score = score_fn(perturbed, t) if y is None else score_fn(perturbed, t, y)
        if not likelihood_weighting:
            return reduce_op(_flat(jnp.square(score * batch_broadcast(std, score) + z)))
        g2 = sde.sde(jnp.zeros_like(data), t)[1] ** 2
        return reduce_op(_flat(jnp.square(score + z / batch_broadcast(std, z)))) * g2

    return SplitLoss(draw, per_example)


def get_smld_loss_fn(vesde: sde_lib.VESDE, model: nn.Module, train: bool, reduce_mean: bool = False) -> LossFn:
    """NCSN's discrete noise-conditional loss (the reference's `get_smld_loss_fn`).

    Labels are indices into the *descending* sigma ladder (label 0 = sigma_max), as
    the reference's SMLD networks expect; they are passed to the network as int32.
    """
    if not isinstance(vesde, sde_lib.VESDE):
        raise ValueError(f"SMLD training only works for VESDEs, got {type(vesde).__name__}.")
    smld_sigmas = np.asarray(vesde.discrete_sigmas[::-1])
    reduce_op = _reduce_op(reduce_mean)

    def loss_fn(params, key, batch):
        data = batch_images(batch)
        k_t, k_z, k_dropout = jax.random.split(key, 3)
        labels = jax.random.choice(k_t, vesde.N, shape=(data.shape[0],))
        sigmas = jnp.asarray(smld_sigmas, data.dtype)[labels]
        noise = jax.random.normal(k_z, data.shape, data.dtype) * batch_broadcast(sigmas, data)
        perturbed = data + noise
        rngs = {"dropout": k_dropout} if train else {}
        score = model.apply({"params": params}, perturbed, labels.astype(jnp.int32), train=train, rngs=rngs)
        target = -noise / batch_broadcast(sigmas**2, noise)
        losses = reduce_op(_flat(jnp.square(score - target))) * sigmas**2
        return jnp.mean(losses)

    return loss_fn


def get_ddpm_loss_fn(vpsde: sde_lib.VariancePreserving, model: nn.Module, train: bool, reduce_mean: bool = True) -> LossFn:
    """DDPM's noise-prediction loss (the reference's `get_ddpm_loss_fn`).

    Labels are the int32 step indices i in {0, ..., N-1}; the network predicts the noise.
    """
    if not isinstance(vpsde, sde_lib.VariancePreserving):
        raise ValueError(f"DDPM training only works for VP SDEs, got {type(vpsde).__name__}.")
    abar = vpsde.alphas_cumprod
    sqrt_abar, sqrt_1m_abar = np.sqrt(abar), np.sqrt(1.0 - abar)
    reduce_op = _reduce_op(reduce_mean)

    def loss_fn(params, key, batch):
        data = batch_images(batch)
        k_t, k_z, k_dropout = jax.random.split(key, 3)
        labels = jax.random.choice(k_t, vpsde.N, shape=(data.shape[0],))
        noise = jax.random.normal(k_z, data.shape, data.dtype)
        a = jnp.asarray(sqrt_abar, data.dtype)[labels]
        b = jnp.asarray(sqrt_1m_abar, data.dtype)[labels]
        perturbed = batch_broadcast(a, data) * data + batch_broadcast(b, data) * noise
        rngs = {"dropout": k_dropout} if train else {}
        output = model.apply({"params": params}, perturbed, labels.astype(jnp.int32), train=train, rngs=rngs)
        losses = reduce_op(_flat(jnp.square(output - noise)))
        return jnp.mean(losses)

    return loss_fn


def get_loss_fn(
    sde: sde_lib.SDE,
    model: nn.Module,
    train: bool,
    reduce_mean: bool = False,
    continuous: bool = True,
    likelihood_weighting: bool = False,
    eps: float = 1e-5,
    parameterization: str | None = None,
    condition: Callable | None = None,
    p_uncond: float = 0.0,
) -> LossFn:
    """The reference's choice (`get_step_fn`): the SDE loss if `continuous`, else SMLD
    for VE and DDPM for VP SDEs. Defaults are the reference config's
    (`training.reduce_mean=False`, `continuous=True`, `likelihood_weighting=False`).
    Conditional training (`condition`, `p_uncond`) needs the continuous loss.
    """
    if not 0.0 <= p_uncond <= 1.0:
        raise ValueError(f"p_uncond must be in [0, 1], got {p_uncond}.")
    if continuous:
        return get_sde_loss_fn(
            sde,
            model,
            train,
            reduce_mean=reduce_mean,
            continuous=True,
            likelihood_weighting=likelihood_weighting,
            eps=eps,
            parameterization=parameterization,
            condition=condition,
            p_uncond=p_uncond,
        )
    if condition is not None:
        raise ValueError("Conditional training needs the continuous loss: set training.continuous=True.")
    if likelihood_weighting:
        raise ValueError("Likelihood weighting is not supported for the discrete SMLD/DDPM losses.")
    if isinstance(sde, sde_lib.VESDE):
        return get_smld_loss_fn(sde, model, train, reduce_mean=reduce_mean)
    if isinstance(sde, sde_lib.VariancePreserving):
        return get_ddpm_loss_fn(sde, model, train, reduce_mean=reduce_mean)
    raise ValueError(f"Discrete training for {type(sde).__name__} is not supported; use continuous=True.")


def get_classifier_loss_fn(sde: sde_lib.SDE, classifier: nn.Module, train: bool, continuous: bool = True, eps: float = 1e-5) -> LossFn:
    """Cross-entropy of a noise-conditional classifier on perturbed data (for guidance).

    t ~ U(eps, T), x(t) = s(t) x + sigma(t) z, loss = -mean log softmax(f(x(t), label(t)))[y],
    with the same noise labels as the score networks (`noise_labels`), so it works for
    VP and VE SDEs alike. The batch needs "image" and "label".
    """

    def loss_fn(params, key, batch):
        data, y = batch["image"], batch["label"]
        k_t, k_z, k_dropout = jax.random.split(key, 3)
        t = jax.random.uniform(k_t, (data.shape[0],), data.dtype, minval=eps, maxval=sde.T)
        z = jax.random.normal(k_z, data.shape, data.dtype)
        mean, std = sde.marginal_prob(data, t)
        rngs = {"dropout": k_dropout} if train else {}
        labels = noise_labels(sde, t, continuous)
        logits = classifier.apply({"params": params}, mean + batch_broadcast(std, data) * z, labels, train=train, rngs=rngs)
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1))

    return loss_fn
