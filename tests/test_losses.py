"""The training losses against hand computations in NumPy, with a fake network whose
output is known: output = a * x + b * labels (broadcast), parameters a and b."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scoresde import losses, sde_lib


class Affine(nn.Module):
    """output = a * x + b * labels, with scalar parameters a, b; records nothing else."""

    @nn.compact
    def __call__(self, x, labels, train=False):
        a = self.param("a", lambda k: jnp.asarray(0.7, jnp.float32))
        b = self.param("b", lambda k: jnp.asarray(0.01, jnp.float32))
        lab = jnp.asarray(labels, jnp.float32).reshape((-1,) + (1,) * (x.ndim - 1))
        return a * x + b * lab


PARAMS = {"a": jnp.asarray(0.7, jnp.float32), "b": jnp.asarray(0.01, jnp.float32)}
KEY = jax.random.PRNGKey(3)
DATA = np.asarray(jax.random.uniform(jax.random.PRNGKey(0), (5, 2, 3, 1), minval=-1, maxval=1), np.float64)


def draws(key, shape, eps, T):
    """The same random draws as the loss: key -> (k_t, k_z, k_dropout)."""
    k_t, k_z, _ = jax.random.split(key, 3)
    t = np.asarray(jax.random.uniform(k_t, (shape[0],), jnp.float32, minval=eps, maxval=T), np.float64)
    z = np.asarray(jax.random.normal(k_z, shape, jnp.float32), np.float64)
    return k_t, t, z


def np_coeffs(sde, t):
    """Marginal mean scale s(t), std sigma(t) and diffusion g(t), in NumPy float64."""
    if isinstance(sde, sde_lib.VESDE):
        sigma = sde.sigma_min * (sde.sigma_max / sde.sigma_min) ** t
        return np.ones_like(t), sigma, sigma * np.sqrt(2 * np.log(sde.sigma_max / sde.sigma_min))
    b0, b1 = sde.beta_0, sde.beta_1
    beta = b0 + t * (b1 - b0)
    integral = 0.5 * t**2 * (b1 - b0) + t * b0
    s = np.exp(-0.5 * integral)
    if isinstance(sde, sde_lib.subVPSDE):
        return s, 1 - np.exp(-integral), np.sqrt(beta * (1 - np.exp(-2 * integral)))
    return s, np.sqrt(1 - np.exp(-integral)), np.sqrt(beta)


def reduce(x, reduce_mean):
    x = x.reshape(x.shape[0], -1)
    return x.mean(1) if reduce_mean else 0.5 * x.sum(1)


@pytest.mark.parametrize("sde_name", ["vpsde", "subvpsde", "vesde"])
@pytest.mark.parametrize("reduce_mean", [True, False])
@pytest.mark.parametrize("likelihood_weighting", [True, False])
def test_sde_loss_matches_hand_computation(sde_name, reduce_mean, likelihood_weighting):
    sde = sde_lib.get_sde(sde_name)
    eps = 1e-5
    loss_fn = losses.get_sde_loss_fn(
        sde, Affine(), train=False, reduce_mean=reduce_mean, likelihood_weighting=likelihood_weighting, eps=eps
    )
    got = float(loss_fn(PARAMS, KEY, jnp.asarray(DATA, jnp.float32)))

    _, t, z = draws(KEY, DATA.shape, eps, sde.T)
    s, std, g = np_coeffs(sde, t)
    b4 = lambda v: v[:, None, None, None]  # noqa: E731
    xt = b4(s) * DATA + b4(std) * z
    if sde_name == "vesde":  # score network, continuous labels sigma(t)
        output = 0.7 * xt + 0.01 * b4(std)
        score = output
    else:  # noise network, labels 999 t, score = -output / std
        output = 0.7 * xt + 0.01 * b4(999 * t)
        score = -output / b4(std)
    if likelihood_weighting:
        expected = np.mean(reduce((score + z / b4(std)) ** 2, reduce_mean) * g**2)
    else:
        expected = np.mean(reduce((score * b4(std) + z) ** 2, reduce_mean))
    assert np.isfinite(expected)
    np.testing.assert_allclose(got, expected, rtol=2e-4)


def test_sde_loss_batch_dict_and_grad():
    sde = sde_lib.VPSDE()
    loss_fn = losses.get_sde_loss_fn(sde, Affine(), train=True, reduce_mean=True, likelihood_weighting=False)
    x = jnp.asarray(DATA, jnp.float32)
    a = loss_fn(PARAMS, KEY, x)
    b = loss_fn(PARAMS, KEY, {"image": x, "label": jnp.zeros(5, jnp.int32)})
    assert float(a) == float(b)
    grads = jax.grad(loss_fn)(PARAMS, KEY, x)
    # Finite-difference check of dL/da.
    h = 1e-2
    plus = loss_fn({**PARAMS, "a": PARAMS["a"] + h}, KEY, x)
    minus = loss_fn({**PARAMS, "a": PARAMS["a"] - h}, KEY, x)
    np.testing.assert_allclose(float(grads["a"]), float(plus - minus) / (2 * h), rtol=2e-2)


@pytest.mark.parametrize("reduce_mean", [True, False])
def test_smld_loss_matches_hand_computation(reduce_mean):
    sde = sde_lib.VESDE(sigma_min=0.01, sigma_max=50.0, N=10)
    loss_fn = losses.get_smld_loss_fn(sde, Affine(), train=False, reduce_mean=reduce_mean)
    got = float(loss_fn(PARAMS, KEY, jnp.asarray(DATA, jnp.float32)))

    k_t, k_z, _ = jax.random.split(KEY, 3)
    labels = np.asarray(jax.random.choice(k_t, sde.N, shape=(5,)))
    sigmas = np.exp(np.linspace(np.log(0.01), np.log(50.0), 10))[::-1][labels]  # descending ladder
    b4 = lambda v: v[:, None, None, None]  # noqa: E731
    noise = np.asarray(jax.random.normal(k_z, DATA.shape, jnp.float32), np.float64) * b4(sigmas)
    xt = DATA + noise
    score = 0.7 * xt + 0.01 * b4(labels.astype(np.float64))
    target = -noise / b4(sigmas**2)
    expected = np.mean(reduce((score - target) ** 2, reduce_mean) * sigmas**2)
    assert np.isfinite(expected)
    np.testing.assert_allclose(got, expected, rtol=2e-4)


@pytest.mark.parametrize("reduce_mean", [True, False])
def test_ddpm_loss_matches_hand_computation(reduce_mean):
    sde = sde_lib.VPSDE(beta_min=0.1, beta_max=20.0, N=50)
    loss_fn = losses.get_ddpm_loss_fn(sde, Affine(), train=False, reduce_mean=reduce_mean)
    got = float(loss_fn(PARAMS, KEY, jnp.asarray(DATA, jnp.float32)))

    k_t, k_z, _ = jax.random.split(KEY, 3)
    labels = np.asarray(jax.random.choice(k_t, sde.N, shape=(5,)))
    betas = np.linspace(0.1 / 50, 20.0 / 50, 50)
    abar = np.cumprod(1 - betas)[labels]
    b4 = lambda v: v[:, None, None, None]  # noqa: E731
    noise = np.asarray(jax.random.normal(k_z, DATA.shape, jnp.float32), np.float64)
    xt = b4(np.sqrt(abar)) * DATA + b4(np.sqrt(1 - abar)) * noise
    output = 0.7 * xt + 0.01 * b4(labels.astype(np.float64))
    expected = np.mean(reduce((output - noise) ** 2, reduce_mean))
    assert np.isfinite(expected)
    np.testing.assert_allclose(got, expected, rtol=2e-4)


def test_perfect_score_gives_zero_loss():
    """A point mass at x0: the exact perturbed score -(x - s x0)/sigma^2 makes the DSM loss 0."""
    x0 = jnp.asarray(DATA, jnp.float32)
    sde = sde_lib.VESDE()

    class Exact(nn.Module):
        @nn.compact
        def __call__(self, x, labels, train=False):
            self.param("unused", nn.initializers.zeros, ())
            sigma = labels.reshape((-1, 1, 1, 1))  # continuous VE labels are sigma(t)
            return -(x - x0) / sigma**2

    for lw in (True, False):
        loss_fn = losses.get_sde_loss_fn(sde, Exact(), train=False, likelihood_weighting=lw)
        assert float(loss_fn({"unused": jnp.zeros(())}, KEY, x0)) < 1e-6


def test_get_loss_fn_dispatch_and_errors():
    model = Affine()
    x = jnp.asarray(DATA, jnp.float32)
    ve, vp, subvp = sde_lib.VESDE(N=10), sde_lib.VPSDE(N=50), sde_lib.subVPSDE(N=50)
    for sde, ref in [(ve, losses.get_smld_loss_fn), (vp, losses.get_ddpm_loss_fn)]:
        a = losses.get_loss_fn(sde, model, train=False, reduce_mean=True, continuous=False)(PARAMS, KEY, x)
        b = ref(sde, model, train=False, reduce_mean=True)(PARAMS, KEY, x)
        assert np.isfinite(float(a)) and float(a) == float(b)
    a = losses.get_loss_fn(vp, model, train=False, reduce_mean=True, continuous=True)(PARAMS, KEY, x)
    b = losses.get_sde_loss_fn(vp, model, False, reduce_mean=True, likelihood_weighting=False)(PARAMS, KEY, x)
    assert float(a) == float(b)
    with pytest.raises(ValueError, match="subVPSDE"):
        losses.get_loss_fn(subvp, model, train=True, continuous=False)
    with pytest.raises(ValueError, match="Likelihood weighting"):
        losses.get_loss_fn(vp, model, train=True, continuous=False, likelihood_weighting=True)
    with pytest.raises(ValueError, match="VESDE"):
        losses.get_smld_loss_fn(vp, model, train=True)
    with pytest.raises(ValueError, match="VP"):
        losses.get_ddpm_loss_fn(ve, model, train=True)


def test_dropout_key_used_only_in_training():
    class Drop(nn.Module):
        @nn.compact
        def __call__(self, x, labels, train=False):
            w = self.param("w", nn.initializers.ones, ())
            return nn.Dropout(0.5, deterministic=not train)(w * x)

    x = jnp.asarray(DATA, jnp.float32)
    params = {"w": jnp.ones(())}
    sde = sde_lib.VESDE()
    train_fn = losses.get_sde_loss_fn(sde, Drop(), train=True)
    eval_fn = losses.get_sde_loss_fn(sde, Drop(), train=False)
    assert float(train_fn(params, KEY, x)) != float(eval_fn(params, KEY, x))
    assert float(train_fn(params, KEY, x)) == float(train_fn(params, KEY, x))
