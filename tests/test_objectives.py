"""The training objectives of `losses.get_objective` (EDM, flow matching, v-prediction,
min-SNR-gamma) and the parameterizations that go with them (`score.py`: 'edm', 'velocity').

1. EDM's preconditioning against Karras et al. (2022), Table 1, and the properties it was
   derived for (unit-variance network input and target, unit effective loss weight).
2. Every parameterization turns the exact E[. | x] of a Gaussian mixture into its exact score,
   on four paths (VP, rectified flow, EDM's path and a user-defined one): an oracle network
   reads back x and t from what `NetworkScore` feeds it (EDM's c_in x and c_noise included)
   and outputs the exact target, from a posterior mean computed here independently of
   `analytic` (and path derivatives written out by hand).
3. Each loss against a NumPy hand computation on tiny inputs with an affine network
   (output = a x + b label), same keys: the draws of t (log-normal sigma, uniform,
   logit-normal), the network's inputs, the target and the weight; and the weighted value
   is checked to be far from the unweighted one, so a dropped weight fails.
4. Gradient accumulation (micro-batches) gives the same loss and gradient; wrong settings
   are one-line errors; the digits configs build what they say.

Float64 (x64) where the comparison is of formulas, so tolerances are far below any error.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scoresde import analytic, configs, experiment, losses, sde_lib, train
from scoresde.score import (
    PARAMETERIZATIONS,
    edm_preconditioning,
    get_score_fn,
    output_target,
    output_to_score,
    score_to_output,
)
from scoresde.sde_lib import EDMPath, RectifiedFlow, VPSDE

from conftest import LINEAR_PATH

VP, RF, EDM = VPSDE(), RectifiedFlow(), EDMPath()

# ---------------------------------------------------------------------------------------
# 1. EDM's preconditioning (Table 1).


def test_edm_preconditioning_is_table_1(x64):
    sigma = np.array([0.002, 0.05, 0.5, 1.0, 7.0, 80.0])
    for sd in (0.5, 1.3):
        got = [np.asarray(c) for c in edm_preconditioning(jnp.asarray(sigma), sd)]
        table = [sd**2 / (sigma**2 + sd**2), sigma * sd / np.sqrt(sd**2 + sigma**2), 1 / np.sqrt(sigma**2 + sd**2),
                 np.log(sigma) / 4]
        for g, want in zip(got, table):
            np.testing.assert_allclose(g, want, rtol=1e-12)
        c_skip, c_out, c_in, _ = got
        # What Table 1 was derived for (Karras et al., App. B.6), with data of std sigma_data:
        np.testing.assert_allclose(c_in**2 * (sd**2 + sigma**2), 1.0, rtol=1e-12)  # Var[c_in (x0 + sigma n)] = 1
        target_var = ((1 - c_skip) ** 2 * sd**2 + c_skip**2 * sigma**2) / c_out**2  # Var[(x0 - c_skip x)/c_out]
        np.testing.assert_allclose(target_var, 1.0, rtol=1e-12)
        lam = (sigma**2 + sd**2) / (sigma * sd) ** 2
        np.testing.assert_allclose(lam * c_out**2, 1.0, rtol=1e-12)  # effective weight lambda c_out^2 = 1


# ---------------------------------------------------------------------------------------
# 2. Output -> score, exactly, on exact targets.

MIXTURE = analytic.GaussianMixture(
    [0.3, 0.7], [[-1.0, 0.5], [1.5, -1.0]], [[[0.30, 0.10], [0.10, 0.20]], [[0.15, -0.05], [-0.05, 0.25]]]
)


def _hand_derivatives(sde, t):
    """ds/dt, d sigma/dt written out per path (not by the library's autodiff)."""
    if sde is VP:
        s = jnp.exp(-0.25 * t**2 * (VP.beta_1 - VP.beta_0) - 0.5 * t * VP.beta_0)
        beta = VP.beta_0 + t * (VP.beta_1 - VP.beta_0)
        return -0.5 * beta * s, 0.5 * beta * s**2 / jnp.sqrt(1 - s**2)
    if sde is RF:
        return -jnp.ones_like(t), jnp.ones_like(t)
    if sde is EDM:
        return jnp.zeros_like(t), jnp.ones_like(t)
    assert sde is LINEAR_PATH  # alpha = e^-t, sigma = t
    return -jnp.exp(-t), jnp.ones_like(t)


def _posterior_mean(x, s, sigma):
    """E[x0 | x] under the mixture, x = s x0 + sigma z: sum_k r_k (mu_k + s Sigma_k C_k^-1 (x - s mu_k)),
    C_k = s^2 Sigma_k + sigma^2 I, r_k the posterior weights (own Gaussian log-densities)."""
    mu, cov, w = (jnp.asarray(a) for a in (MIXTURE.means, MIXTURE.covs, MIXTURE.weights))
    C = s[:, None, None, None] ** 2 * cov[None] + sigma[:, None, None, None] ** 2 * jnp.eye(2)  # (B, K, D, D)
    diff = x[:, None, :] - s[:, None, None] * mu[None]  # (B, K, D)
    sol = jnp.linalg.solve(C, diff[..., None])[..., 0]
    logdet = jnp.linalg.slogdet(C)[1]
    log_r = jnp.log(w) - 0.5 * logdet - 0.5 * jnp.sum(diff * sol, -1)
    r = jax.nn.softmax(log_r, axis=-1)
    means = mu[None] + s[:, None, None] * jnp.einsum("kde,bke->bkd", cov, sol)
    return jnp.sum(r[..., None] * means, axis=1)


class Oracle(nn.Module):
    """Reads x and t back from the network's inputs (x and the noise label, or EDM's c_in x~
    and c_noise) and outputs the exact target of its parameterization."""

    sde: object
    parameterization: str
    sigma_data: float

    @nn.compact
    def __call__(self, inputs, labels, train=False):
        sde, sd = self.sde, self.sigma_data
        if self.parameterization == "edm":
            sigma_t = jnp.exp(4 * labels)  # c_noise = ln(sigma~)/4
            t = sde.sigma_to_t(sigma_t)
            x = inputs * (sde.marginal_coeffs(t)[0] * jnp.sqrt(sigma_t**2 + sd**2))[:, None]  # c_in = 1/sqrt(.)
        else:
            t = labels if sde is EDM else labels / 999
            x = inputs
        s, sigma = sde.marginal_coeffs(t)
        ds, dsigma = _hand_derivatives(sde, t)
        x0 = _posterior_mean(x, s, sigma)
        eps = (x - s[:, None] * x0) / sigma[:, None]
        s, sigma, ds, dsigma = (c[:, None] for c in (s, sigma, ds, dsigma))
        if self.parameterization == "edm":
            st = sigma / s
            c_skip, c_out = sd**2 / (st**2 + sd**2), st * sd / jnp.sqrt(st**2 + sd**2)
            return (x0 - c_skip * x / s) / c_out
        return dict(score=(s * x0 - x) / sigma**2, eps=eps, x0=x0, v=s * eps - sigma * x0,
                    velocity=ds * x0 + dsigma * eps)[self.parameterization]


PATH_TIMES = {"vp": (VP, [0.02, 0.3, 0.6, 0.95]), "rf": (RF, [0.02, 0.3, 0.7, 0.98]),
              "edm": (EDM, [0.01, 0.4, 3.0, 40.0]), "linear": (LINEAR_PATH, [0.05, 0.8, 2.5, 4.5])}


@pytest.mark.parametrize("path", list(PATH_TIMES))
def test_parameterizations_give_the_exact_score(path, x64):
    sde, times = PATH_TIMES[path]
    t = jnp.asarray(times)
    x = 1.5 * jax.random.normal(jax.random.PRNGKey(0), (4, 2), jnp.float64)
    exact = MIXTURE.score_fn(sde)(x, t)
    for parameterization in PARAMETERIZATIONS:
        oracle = Oracle(sde, parameterization, 0.7)
        score = get_score_fn(sde, oracle, {}, parameterization=parameterization, sigma_data=0.7)(x, t)
        np.testing.assert_allclose(score, exact, rtol=1e-8, atol=1e-10, err_msg=f"{path}, {parameterization}")


def test_score_to_output_inverts_output_to_score(x64):
    """On a path with s^2 + sigma^2 != 1 and s' != 0: the inverse, and the regression targets
    (the output at known x0 and eps) give the kernel's score -eps/sigma."""
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(1), 3)
    x0, eps, out = (jax.random.normal(k, (6, 3), jnp.float64) for k in (k1, k2, k3))
    scale, std = jnp.linspace(0.3, 0.95, 6), jnp.linspace(1.5, 0.01, 6)
    dscale, dstd = -jnp.linspace(0.1, 2.0, 6), jnp.linspace(3.0, 0.5, 6)
    x = scale[:, None] * x0 + std[:, None] * eps
    kw = dict(dscale=dscale, dstd=dstd, sigma_data=0.4)
    for p in PARAMETERIZATIONS:
        score = output_to_score(out, x, scale, std, p, **kw)
        np.testing.assert_allclose(score_to_output(score, x, scale, std, p, **kw), out, rtol=1e-9, atol=1e-9, err_msg=p)
        target = output_target(x0, eps, scale, std, p, **kw)
        np.testing.assert_allclose(output_to_score(target, x, scale, std, p, **kw), -eps / std[:, None],
                                   rtol=1e-9, atol=1e-9, err_msg=p)
    with pytest.raises(ValueError, match="dscale and dstd"):
        output_to_score(out, x, scale, std, "velocity")


# ---------------------------------------------------------------------------------------
# 3. Each loss against a hand computation.


class Affine(nn.Module):
    """output = a x + b label, in x's dtype."""

    @nn.compact
    def __call__(self, x, labels, train=False):
        a = self.param("a", lambda k: jnp.asarray(0.7, x.dtype))
        b = self.param("b", lambda k: jnp.asarray(0.01, x.dtype))
        return a * x + b * jnp.reshape(labels, (-1,) + (1,) * (x.ndim - 1)).astype(x.dtype)


KEY = jax.random.PRNGKey(3)
EPS = 1e-5


def _coeffs(sde, t):
    """s, sigma, ds/dt, d sigma/dt by hand."""
    if isinstance(sde, VPSDE):
        log_s = -0.25 * t**2 * (sde.beta_1 - sde.beta_0) - 0.5 * t * sde.beta_0
        s, beta = np.exp(log_s), sde.beta_0 + t * (sde.beta_1 - sde.beta_0)
        sigma = np.sqrt(1 - s**2)
        return s, sigma, -0.5 * beta * s, 0.5 * beta * s**2 / sigma
    if isinstance(sde, RectifiedFlow):
        return 1 - t, t, -np.ones_like(t), np.ones_like(t)
    return np.ones_like(t), t, np.zeros_like(t), np.ones_like(t)  # EDM: sigma = t


def _t_of_sigma(sde, sig):
    """The time at which sigma/s = sig, by hand: VP solves the quadratic log s(t) = -log(1 + sig^2)/2."""
    if isinstance(sde, EDMPath):
        return sig
    assert isinstance(sde, VPSDE)
    db, b0, log_s = sde.beta_1 - sde.beta_0, sde.beta_0, -0.5 * np.log1p(sig**2)
    return (-b0 / 2 + np.sqrt(b0**2 / 4 - db * log_s)) / (db / 2)


def hand_loss(loss, sde, parameterization, data, reduce_mean=True, min_snr_gamma=0.0, t_sampling="uniform",
              sigma_data=0.5, p_mean=-1.2, p_std=1.2):
    """(weighted loss, unweighted loss) in NumPy, with the loss's own random draws."""
    B = data.shape[0]
    k_t, k_z, _ = jax.random.split(KEY, 3)
    z = np.asarray(jax.random.normal(k_z, data.shape, jnp.float64))
    if loss == "edm":
        t = _t_of_sigma(sde, np.exp(p_mean + p_std * np.asarray(jax.random.normal(k_t, (B,), jnp.float64))))
    elif t_sampling == "uniform":
        t = np.asarray(jax.random.uniform(k_t, (B,), jnp.float64, minval=EPS, maxval=sde.T))
    else:
        t = EPS + (sde.T - EPS) / (1 + np.exp(-np.asarray(jax.random.normal(k_t, (B,), jnp.float64))))
    s, sig, ds, dsig = (c[:, None, None, None] for c in _coeffs(sde, t))
    x = s * data + sig * z
    st, sd = sig / s, sigma_data  # EDM's sigma in the frame x / s
    c_skip, c_out, c_in = sd**2 / (st**2 + sd**2), st * sd / np.sqrt(st**2 + sd**2), 1 / np.sqrt(st**2 + sd**2)
    # The network's inputs and output.
    if parameterization == "edm":
        F = 0.7 * c_in * x / s + 0.01 * np.log(st) / 4
    else:
        F = 0.7 * x + 0.01 * (t if isinstance(sde, EDMPath) else 999 * t)[:, None, None, None]
    # Its predictions of x0 and eps (from the parameterization's definition).
    if parameterization == "eps":
        eps_hat = F
        x0_hat = (x - sig * F) / s
    elif parameterization == "v":  # v = s eps - sig x0 with s^2 + sig^2 = 1 (VP)
        x0_hat, eps_hat = s * x - sig * F, sig * x + s * F
    elif parameterization == "velocity":  # rectified flow: u = eps - x0, x = (1 - t) x0 + t eps
        x0_hat, eps_hat = x - sig * F, x + s * F
    else:  # edm: D = c_skip x~ + c_out F
        x0_hat = c_skip * x / s + c_out * F
        eps_hat = (x - s * x0_hat) / sig
    snr = (s / sig) ** 2
    if loss == "edm":
        pred, target, w = x0_hat, data, (st**2 + sd**2) / (st * sd) ** 2
    elif loss == "flow_matching":
        pred, target, w = ds * x0_hat + dsig * eps_hat, ds * data + dsig * z, 1.0
    elif loss == "v":
        pred, target = s * eps_hat - sig * x0_hat, s * z - sig * data
        w = np.minimum(snr, min_snr_gamma) / (snr + 1) if min_snr_gamma else 1.0
    else:
        pred, target, w = eps_hat, z, np.minimum(snr, min_snr_gamma) / snr if min_snr_gamma else 1.0
    sq = ((pred - target) ** 2).reshape(B, -1)
    per = sq.mean(1) if reduce_mean else 0.5 * sq.sum(1)
    return float(np.mean(np.reshape(w, (B,) if np.ndim(w) else ()) * per)), float(np.mean(per))


LOSS_CASES = {
    "edm-edm_path": ("edm", EDM, "edm", {}),
    "edm-vp-eps-options": ("edm", VP, "eps", dict(sigma_data=0.7, p_mean=-0.5, p_std=0.8, reduce_mean=False)),
    "fm-rf-velocity": ("flow_matching", RF, "velocity", {}),
    "fm-rf-logit_normal": ("flow_matching", RF, "velocity", dict(t_sampling="logit_normal")),
    "fm-vp-eps": ("flow_matching", VP, "eps", {}),
    "v-vp": ("v", VP, "v", {}),
    "v-vp-min_snr5": ("v", VP, "v", dict(min_snr_gamma=5.0)),
    "dsm-vp-min_snr1": ("dsm", VP, "eps", dict(min_snr_gamma=1.0)),
}


@pytest.mark.parametrize("case", list(LOSS_CASES))
def test_loss_matches_hand_computation(case, x64):
    loss, sde, parameterization, options = LOSS_CASES[case]
    data = np.asarray(jax.random.uniform(jax.random.PRNGKey(0), (8, 2, 3, 1), jnp.float64, -1, 1))
    fn = losses.get_loss_fn(sde, Affine(), train=False, loss=loss, parameterization=parameterization, eps=EPS,
                            **{"reduce_mean": True, **options})
    params = {"a": jnp.asarray(0.7), "b": jnp.asarray(0.01)}
    got = float(fn(params, KEY, jnp.asarray(data)))
    expected, unweighted = hand_loss(loss, sde, parameterization, data, **options)
    np.testing.assert_allclose(got, expected, rtol=1e-9)
    if loss != "flow_matching" and case != "v-vp":  # unit weights; elsewhere a dropped weight fails (rtol 1e-9)
        assert abs(unweighted - expected) > 1e-3 * abs(expected), (unweighted, expected)


def test_micro_batches_give_the_same_step(x64):
    """SplitLoss: the batch's draws (log-normal sigma, noise) are sliced with it."""
    data = jax.random.uniform(jax.random.PRNGKey(0), (6, 2, 3, 1), jnp.float64, -1, 1)
    params = {"a": jnp.asarray(0.7), "b": jnp.asarray(0.01)}
    fn = losses.get_loss_fn(VP, Affine(), train=True, loss="edm", parameterization="edm")
    plain = jax.jit(jax.value_and_grad(fn))(params, KEY, data)
    split = jax.jit(train.accumulated_value_and_grad(fn, 3))(params, KEY, data)
    for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(split)):
        np.testing.assert_allclose(a, b, rtol=1e-10)


# ---------------------------------------------------------------------------------------
# 4. Settings and configs.


@pytest.mark.parametrize(
    "loss, options, message",
    [
        ("huber", {}, "Unknown loss 'huber'"),
        ("edm", dict(likelihood_weighting=True), "likelihood_weighting applies to the 'dsm' loss only"),
        ("edm", dict(min_snr_gamma=5.0), "min_snr_gamma weights the 'dsm'"),
        ("flow_matching", dict(min_snr_gamma=5.0), "min_snr_gamma weights the 'dsm'"),
        ("dsm", dict(min_snr_gamma=5.0, likelihood_weighting=True), "not likelihood-weighted dsm"),
        ("v", dict(min_snr_gamma=-1.0), "min_snr_gamma .0 = off. must be a finite number > 0"),
        ("edm", dict(t_sampling="logit_normal"), "t_sampling must be 'uniform'"),
        ("edm", dict(sigma_data=0.0), "sigma_data must be"),
        ("v", dict(t_sampling="beta"), "Unknown t_sampling"),
    ],
)
def test_bad_settings_are_one_line_errors(loss, options, message):
    with pytest.raises(ValueError, match=message) as info:
        losses.get_objective(loss, VP, **options)
    assert "\n" not in str(info.value)


def test_network_checks():
    ncsn = experiment.model_from_config(configs.get_config("digits_ve"))  # Fourier features of log(sigma)
    with pytest.raises(ValueError, match="embedding_type='positional'"):
        losses.get_loss_fn(EDM, ncsn, train=True, loss="edm", parameterization="edm")
    with pytest.raises(ValueError, match="needs continuous time labels"):
        get_score_fn(VP, Affine(), {}, continuous=False, parameterization="velocity")
    with pytest.raises(ValueError, match="needs the continuous loss"):
        losses.get_loss_fn(VP, Affine(), train=True, continuous=False, loss="v")


def test_digits_configs():
    """Each digits config trains what its name says, through train_kwargs (the CLI's path)."""
    expected = {
        "digits_edm": (EDMPath, dict(loss="edm", parameterization="edm", sigma_data=0.5, p_mean=-1.2, p_std=1.2)),
        "digits_fm": (RectifiedFlow, dict(loss="flow_matching", parameterization="velocity", t_sampling="uniform")),
        "digits_v": (VPSDE, dict(loss="v", parameterization="v", min_snr_gamma=5.0)),
        "digits_vp": (VPSDE, dict(loss="dsm", parameterization=None, min_snr_gamma=0.0)),
    }
    for name, (cls, settings) in expected.items():
        config = configs.get_config(name)
        configs.validate(config)
        assert type(experiment.sde_from_config(config)) is cls
        kwargs = experiment.train_kwargs(config)["loss_kwargs"]
        assert {k: kwargs[k] for k in settings} == settings, name
    config = configs.apply_overrides(configs.get_config("digits_vp_classifier"), ["training.loss=edm"])
    with pytest.raises(experiment.UserError, match="applies to score models"):
        experiment.train_kwargs(config)
    with pytest.raises(ValueError, match="unknown value 'flow'"):
        configs.apply_overrides(configs.get_config("digits_vp"), ["training.loss=flow"])
