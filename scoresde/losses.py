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
- `get_loss_fn`: the reference's choice between them (`training.continuous`), or one of
  the continuous objectives below (`training.loss`).

Objectives (`get_objective`): each is (how t is drawn, the regression target, its
weighting), and every one is a loss on the network's *score*: the score is turned into
the target's parameterization exactly (`score.score_to_output`; whatever the network
outputs, `model.parameterization`) and compared with its value at (x0, z)
(`score.output_target`):

- `dsm`: the reference's, above: t ~ U(eps, T), target eps (weight 1) or, with likelihood
  weighting, the score (weight g(t)^2); `min_snr_gamma` weights eps by min(SNR, gamma)/SNR.
- `edm` (Karras et al. 2022): ln sigma~ ~ N(p_mean, p_std^2) (-1.2, 1.2), t = sigma_to_t(sigma~)
  (any SDE: sigma~ = std/s is its noise-to-signal ratio), target x0 (EDM's denoiser
  D = E[x0 | x]) with lambda(sigma~) = (sigma~^2 + sigma_data^2) / (sigma~ sigma_data)^2.
- `flow_matching` (Lipman et al. 2022, Liu et al. 2022): t ~ U(eps, T) (or logit-normal),
  target the velocity ds/dt x0 + dstd/dt z, weight 1.
- `v` (Salimans & Ho 2022): target v = s z - std x0, weight 1, or with `min_snr_gamma`
  (Hang et al. 2023) min(SNR, gamma) in x0 terms: min(SNR, gamma) std^2 / (s^2 + std^2)^2,
  which is min(SNR, gamma) / (SNR + 1) on VP paths (s^2 + std^2 = 1). SNR = s^2 / std^2.

Since each target is affine in E[eps | x] with the same coefficients for the prediction
and the truth, every objective is w(t) c(t)^2 ||eps_hat - z||^2 for a known c(t): they
differ only in where t is drawn and how the noise levels are weighted.
- `get_classifier_loss_fn`: cross-entropy of a noise-conditional classifier on
  x(t) = s(t) x + sigma(t) z, t ~ U(eps, T), for classifier guidance.
- `get_autoencoder_loss_fn`: reconstruction + KL of latent diffusion's autoencoder.

Conditional models: `condition(batch) -> y` reads the condition (class labels `(B,)`,
tokens `(B, L)` or embeddings `(B, L, E)`, e.g. `batch["text_embedding"]`) from a batch, and each example's condition is replaced by the null
condition with probability `p_uncond` (drawn with `jax.random.fold_in(key, 3)`), so
one network learns s(x, t, y) and s(x, t, None) for classifier-free guidance.
Super-resolution models: `low_res` (a `conditioning.LowResolution`) makes y from the batch
itself, the block means of each image plus its noise augmentation (drawn with
`jax.random.fold_in(key, 4)`): pairs made on the fly.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from scoresde import sde_lib
from scoresde.conditioning import LowResolution, drop_condition
from scoresde.score import (
    SIGMA_DATA,
    check_network,
    default_parameterization,
    get_score_fn,
    noise_labels,
    output_target,
    score_to_output,
)
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


def batch_condition(condition, p_uncond: float, key, batch, low_res: LowResolution | None = None):
    """The batch's condition with per-example dropout to null, the low-resolution images of its
    images for a super-resolution model (`low_res`), or None for unconditional models."""
    if low_res is not None:
        return low_res.observe(jax.random.fold_in(key, 4), batch_images(batch))
    if condition is None:
        return None
    return drop_condition(jax.random.fold_in(key, 3), condition(batch), p_uncond)


def check_condition_kwargs(condition, p_uncond: float, low_res) -> None:
    """One-line ValueErrors for conditioning settings that do not go together."""
    if not 0.0 <= p_uncond <= 1.0:
        raise ValueError(f"p_uncond must be in [0, 1], got {p_uncond}.")
    if low_res is None:
        return
    if not isinstance(low_res, LowResolution):
        raise ValueError(f"low_res must be a scoresde.conditioning.LowResolution, got {type(low_res).__name__}.")
    if condition is not None:
        raise ValueError("A super-resolution model (low_res) is conditioned on the low-resolution image only; "
                         "pass condition=None.")
    if p_uncond:
        raise ValueError("A low-resolution condition has no null condition to drop to: set p_uncond=0.")


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


LOSSES = ("dsm", "edm", "flow_matching", "v")
T_SAMPLINGS = ("uniform", "logit_normal")
EDM_P_MEAN, EDM_P_STD = -1.2, 1.2  # EDM's log-normal distribution of sigma in training


@dataclasses.dataclass(frozen=True)
class Objective:
    """A training objective on the score (module docstring): `sample_t(key, n, dtype) -> t (n,)`,
    the `target` parameterization that is regressed, and `weight(t, s, std) -> (B,)` (None: 1)."""

    name: str
    sample_t: Callable
    target: str
    weight: Callable | None = None


def _positive(name, value):
    if not (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}.")


def get_objective(
    loss: str,
    sde: sde_lib.SDE,
    *,
    eps: float = 1e-5,
    likelihood_weighting: bool = False,
    min_snr_gamma: float = 0.0,
    t_sampling: str = "uniform",
    sigma_data: float = SIGMA_DATA,
    p_mean: float = EDM_P_MEAN,
    p_std: float = EDM_P_STD,
) -> Objective:
    """The `Objective` named `loss` (one of `LOSSES`) on `sde`; one-line ValueErrors for
    settings that do not apply to it. `min_snr_gamma` 0 is off; `t_sampling` 'logit_normal'
    draws t = eps + (T - eps) sigmoid(n), n ~ N(0, 1) (Esser et al. 2024), for all but edm."""
    if loss not in LOSSES:
        raise ValueError(f"Unknown loss {loss!r}; valid: {', '.join(LOSSES)}.")
    if t_sampling not in T_SAMPLINGS:
        raise ValueError(f"Unknown t_sampling {t_sampling!r}; valid: {', '.join(T_SAMPLINGS)}.")
    if likelihood_weighting and loss != "dsm":
        raise ValueError(f"likelihood_weighting applies to the 'dsm' loss only, not to {loss!r} (its own weighting).")
    if min_snr_gamma != 0:
        _positive("min_snr_gamma (0 = off)", min_snr_gamma)
        if loss not in ("dsm", "v") or likelihood_weighting:
            raise ValueError(f"min_snr_gamma weights the 'dsm' (eps, without likelihood weighting) and 'v' losses, "
                             f"not {'likelihood-weighted dsm' if likelihood_weighting else repr(loss)}.")
    gamma = float(min_snr_gamma)

    def snr(scale, std):
        return (scale / std) ** 2

    if loss == "edm":
        if t_sampling != "uniform":
            raise ValueError("The 'edm' loss draws ln sigma ~ N(p_mean, p_std^2); t_sampling must be 'uniform'.")
        _positive("sigma_data", sigma_data)
        _positive("p_std", p_std)
        if not (isinstance(p_mean, (int, float)) and math.isfinite(p_mean)):
            raise ValueError(f"p_mean must be a finite number, got {p_mean!r}.")

        def sample_t(key, n, dtype):
            sigma = jnp.exp(p_mean + p_std * jax.random.normal(key, (n,), dtype))
            return jnp.asarray(sde.sigma_to_t(sigma), dtype)

        def edm_weight(t, scale, std):  # lambda(sigma~) at the path's own sigma~ = std/s at t
            sigma = std / scale
            return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2

        return Objective(loss, sample_t, "x0", edm_weight)

    def sample_t(key, n, dtype):
        if t_sampling == "uniform":
            return jax.random.uniform(key, (n,), dtype, minval=eps, maxval=sde.T)
        return eps + (sde.T - eps) * jax.nn.sigmoid(jax.random.normal(key, (n,), dtype))

    if loss == "flow_matching":
        return Objective(loss, sample_t, "velocity")
    if loss == "v":
        if not gamma:
            return Objective(loss, sample_t, "v")
        # min(SNR, gamma) ||x0_hat - x0||^2 = that * std^2 / (s^2 + std^2)^2 ||v_hat - v||^2.
        return Objective(loss, sample_t, "v",
                         lambda t, scale, std: jnp.minimum(snr(scale, std), gamma) * std**2 / (scale**2 + std**2) ** 2)
    if likelihood_weighting:  # ||score + z/std||^2 g(t)^2 (g depends on t only)
        return Objective(loss, sample_t, "score",
                         lambda t, scale, std: sde.sde(jnp.zeros((t.shape[0], 1), t.dtype), t)[1] ** 2)
    if gamma:  # min(SNR, gamma) ||x0_hat - x0||^2 = min(SNR, gamma) / SNR ||eps_hat - z||^2
        return Objective(loss, sample_t, "eps",
                         lambda t, scale, std: jnp.minimum(snr(scale, std), gamma) / snr(scale, std))
    return Objective(loss, sample_t, "eps")


def get_objective_loss_fn(
    sde: sde_lib.SDE,
    model: nn.Module,
    train: bool,
    objective: Objective,
    reduce_mean: bool = True,
    continuous: bool = True,
    parameterization: str | None = None,
    condition: Callable | None = None,
    p_uncond: float = 0.0,
    sigma_data: float = SIGMA_DATA,
    low_res: LowResolution | None = None,
) -> SplitLoss:
    """The loss of an `Objective`, per example weight(t) ||F(score) - F(x0, z)||^2, F its
    target parameterization, x(t) = s(t) x0 + sigma(t) z (see `get_sde_loss_fn` for the
    other arguments; sigma_data is the 'edm' parameterization's; low_res: the condition of a
    super-resolution model, made from each batch)."""
    reduce_op = _reduce_op(reduce_mean)
    check_network(model, parameterization or default_parameterization(sde), continuous)
    check_condition_kwargs(condition, p_uncond, low_res)

    def draw(key, batch):
        """The batch's randomness: per-example times t, noise z and condition y, and the dropout key."""
        data = batch_images(batch)
        k_t, k_z, k_dropout = jax.random.split(key, 3)
        t = objective.sample_t(k_t, data.shape[0], data.dtype)
        z = jax.random.normal(k_z, data.shape, data.dtype)
        y = batch_condition(condition, p_uncond if train else 0.0, key, batch, low_res)
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
            sigma_data=sigma_data,
        )
        score = score_fn(perturbed, t) if y is None else score_fn(perturbed, t, y)
        derivatives = {}
        if objective.target == "velocity":
            scale, std, dscale, dstd = sde.coeffs_and_derivatives(jnp.asarray(t, data.dtype))
            derivatives = dict(dscale=dscale, dstd=dstd)
        else:
            scale, std = sde.marginal_coeffs(jnp.asarray(t, data.dtype))
        coeffs = dict(derivatives, sigma_data=sigma_data)
        prediction = score_to_output(score, perturbed, scale, std, objective.target, **coeffs)
        target = output_target(data, z, scale, std, objective.target, **coeffs)
        losses = reduce_op(_flat(jnp.square(prediction - target)))
        return losses if objective.weight is None else losses * objective.weight(t, scale, std)

    return SplitLoss(draw, per_example)


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
    """Continuous-time denoising score matching (the reference's `get_sde_loss_fn`): the
    'dsm' objective, per example ||score sigma + z||^2 or ||score + z/sigma||^2 g(t)^2.

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
    objective = get_objective("dsm", sde, eps=eps, likelihood_weighting=likelihood_weighting)
    return get_objective_loss_fn(sde, model, train, objective, reduce_mean, continuous, parameterization,
                                 condition, p_uncond)


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
    loss: str = "dsm",
    min_snr_gamma: float = 0.0,
    t_sampling: str = "uniform",
    sigma_data: float = SIGMA_DATA,
    p_mean: float = EDM_P_MEAN,
    p_std: float = EDM_P_STD,
    low_res: LowResolution | None = None,
) -> LossFn:
    """The reference's choice (`get_step_fn`): the SDE loss if `continuous`, else SMLD
    for VE and DDPM for VP SDEs. Defaults are the reference config's
    (`training.reduce_mean=False`, `continuous=True`, `likelihood_weighting=False`).
    Conditional training (`condition`, `p_uncond`; `low_res` for super-resolution) needs the
    continuous loss, and so do the objectives `loss` (`get_objective`: dsm, edm,
    flow_matching, v) and their options.
    """
    check_condition_kwargs(condition, p_uncond, low_res)
    if continuous:
        objective = get_objective(
            loss, sde, eps=eps, likelihood_weighting=likelihood_weighting, min_snr_gamma=min_snr_gamma,
            t_sampling=t_sampling, sigma_data=sigma_data, p_mean=p_mean, p_std=p_std,
        )
        return get_objective_loss_fn(sde, model, train, objective, reduce_mean, True, parameterization,
                                     condition, p_uncond, sigma_data, low_res)
    if loss != "dsm" or min_snr_gamma or t_sampling != "uniform":
        raise ValueError(f"The {loss!r} loss (min_snr_gamma, t_sampling) needs the continuous loss: set "
                         "training.continuous=True.")
    if condition is not None or low_res is not None:
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


# ----------------------------------------------------------------------------- autoencoder

RECONSTRUCTION_LOSSES = ("l1", "l2")


def diagonal_gaussian_kl(mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """KL(N(mean, diag exp(logvar)) || N(0, I)) per example, `(B, ...) -> (B,)`:
    0.5 sum(mean^2 + exp(logvar) - 1 - logvar) over the non-batch dimensions."""
    kl = 0.5 * (jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar)
    return jnp.sum(jnp.reshape(kl, (kl.shape[0], -1)), axis=-1)


def get_autoencoder_loss_fn(autoencoder: nn.Module, train: bool = True, kl_weight: float = 1e-6,
                            reconstruction: str = "l1") -> LossFn:
    """The loss of a KL autoencoder (`models.autoencoder`), LDM's without its perceptual and
    adversarial terms:

        loss = mean over the batch of (sum_pixels rec(x, x_hat) + kl_weight KL(q(z | x) || N(0, I))) / D

    rec = |x - x_hat| ("l1", LDM's) or (x - x_hat)^2 ("l2"); D the pixels per example (so the
    loss is per pixel, with LDM's relative weight of the two sums); x_hat = decode(z) with
    z = mean + exp(logvar / 2) eps drawn from q(z | x) in training (train=True, from `key`),
    z = mean otherwise. The batch is the images (or a dict with "image").
    """
    if reconstruction not in RECONSTRUCTION_LOSSES:
        raise ValueError(f"Unknown reconstruction loss {reconstruction!r}; valid: {', '.join(RECONSTRUCTION_LOSSES)}.")
    if not (math.isfinite(kl_weight) and kl_weight >= 0):
        raise ValueError(f"kl_weight must be a finite number >= 0, got {kl_weight!r}.")
    rec = jnp.abs if reconstruction == "l1" else jnp.square

    def loss_fn(params, key, batch):
        x = batch_images(batch)
        mean, logvar = autoencoder.apply({"params": params}, x, method="encode")
        z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, mean.shape, mean.dtype) if train else mean
        x_hat = autoencoder.apply({"params": params}, z, method="decode")
        per_example = jnp.sum(jnp.reshape(rec(x - x_hat), (x.shape[0], -1)), -1) + kl_weight * diagonal_gaussian_kl(
            mean, logvar)
        return jnp.mean(per_example) / math.prod(x.shape[1:])

    return loss_fn
