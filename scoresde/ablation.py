"""Sampler ablations: run a grid of samplers x NFE, time them, score their samples, and
write the results as a CSV, a markdown table and a PNG plot of quality against NFE.

The quality function is the caller's: on analytic targets `exact_target_quality` uses
exact samples and the exact mode posterior; on trained models `image_quality` and
`toy_quality` give a data-set distance. Every row names its metric, so tables never mix
feature spaces. `ablate_target` and `ablate_workdir` run a whole ablation (the `scoresde
ablate` command) in one call, `guidance_sweep` over classifier-free guidance weights.
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg
from tqdm.auto import tqdm

from scoresde.samplers import registry
from scoresde.samplers.timesteps import optimize_timesteps
from scoresde.score import as_score_model


def sliced_wasserstein(key, x, y, num_projections: int = 512) -> float:
    """Sliced 2-Wasserstein distance between equal-size samples x, y `(n, D)`:
    sqrt(mean over random unit directions of W2^2 of the 1-D projections)."""
    x, y = jnp.reshape(x, (x.shape[0], -1)), jnp.reshape(y, (y.shape[0], -1))
    if x.shape != y.shape:
        raise ValueError(f"sliced_wasserstein needs samples of equal shape, got {x.shape} and {y.shape}.")
    dirs = jax.random.normal(key, (x.shape[1], num_projections), x.dtype)
    dirs = dirs / jnp.linalg.norm(dirs, axis=0, keepdims=True)
    px, py = jnp.sort(x @ dirs, axis=0), jnp.sort(y @ dirs, axis=0)
    return float(jnp.sqrt(jnp.mean((px - py) ** 2)))


def _gaussian_fd(mu1, cov1, mu2, cov2) -> float:
    """Frechet (W2^2) distance between N(mu1, cov1) and N(mu2, cov2)."""
    root = scipy.linalg.sqrtm(cov1 @ cov2)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(cov1 + cov2 - 2.0 * np.real(root)))


def mode_frechet(target, x) -> tuple[float, float]:
    """Per-mode fit of samples x `(n, D)` to a `GaussianMixture` with separated modes.

    Samples are assigned to modes by the exact posterior; returns
    (sum_k w_k FD(empirical moments of mode k, exact N(mu_k, Sigma_k)), mode-weight TV).
    """
    flat = np.asarray(jnp.reshape(x, (x.shape[0], -1)), np.float64)
    if not np.all(np.isfinite(flat)):
        return float("inf"), 1.0
    t0 = jnp.zeros((flat.shape[0],), jnp.float32)
    assign = np.asarray(jnp.argmax(target.posterior_t(jnp.asarray(flat, jnp.float32), t0, _IdentitySDE()), axis=1))
    freq = np.bincount(assign, minlength=target.num_components) / len(assign)
    fd = 0.0
    for k, w in enumerate(target.weights):
        members = flat[assign == k]
        if len(members) <= flat.shape[1]:
            return float("inf"), 0.5 * float(np.abs(freq - target.weights).sum())
        fd += w * _gaussian_fd(members.mean(0), np.cov(members, rowvar=False), target.means[k], target.covs[k])
    return fd, 0.5 * float(np.abs(freq - target.weights).sum())


def exact_target_quality(target, key, floor_repeats: int = 5):
    """Quality of samples from a `GaussianMixture` target, in exact terms.

    Returns `quality(x) -> dict` with
      fd_modes: sum_k w_k of the Frechet distance between the empirical moments of the
        samples in mode k and the exact component (the headline metric; 0 is perfect);
      mode_tv: total variation between the modes' empirical frequencies and the weights;
      fd_modes_floor, mode_tv_floor: the same for exact target samples of the same size
        (mean of `floor_repeats` draws): what the sample size alone explains, and
        fd_modes_floor_sd the spread of those draws;
      sw: sliced W2 to exact target samples of the same size (a coarser check).
    """
    cache = {}

    def quality(x):
        n = x.shape[0]
        if n not in cache:
            keys = jax.random.split(key, floor_repeats + 2)
            floors = np.array([mode_frechet(target, target.sample(k, n)) for k in keys[2:]])
            cache[n] = (target.sample(keys[0], n), floors.mean(0), floors[:, 0].std(ddof=1))
        ref, (fd_floor, tv_floor), fd_floor_sd = cache[n]
        fd, tv = mode_frechet(target, x)
        finite = bool(jnp.all(jnp.isfinite(x)))
        return {
            "fd_modes": fd,
            "fd_modes_floor": float(fd_floor),
            "fd_modes_floor_sd": float(fd_floor_sd),
            "mode_tv": tv,
            "mode_tv_floor": float(tv_floor),
            "sw": sliced_wasserstein(key, jnp.reshape(x, (n, -1)), ref) if finite else float("inf"),
        }

    return quality


class _IdentitySDE:
    """marginal_coeffs of the unperturbed data (s = 1, sigma = 0), for exact posteriors at t = 0."""

    def marginal_coeffs(self, t):
        return jnp.ones_like(t), jnp.zeros_like(t)


def score_cost(score_fn, x, t: float = 0.5, repeats: int = 50) -> float:
    """Seconds per score evaluation at batch x `(B, ...)`, measured inside one compiled loop
    (so dispatch overhead is excluded, as it is inside a compiled sampler)."""
    tvec = jnp.full(x.shape[:1], t, x.dtype)
    score = as_score_model(score_fn)

    @jax.jit
    def loop(score, x):
        return jax.lax.fori_loop(0, repeats, lambda i, x: x + 1e-6 * score(x, tvec), x)

    jax.block_until_ready(loop(score, x))
    best = math.inf
    for _ in range(3):
        start = time.perf_counter()
        jax.block_until_ready(loop(score, x))
        best = min(best, time.perf_counter() - start)
    return best / repeats


def run_grid(
    key,
    sde,
    score_fn,
    shape,
    configs: list[tuple[str, dict]],
    quality: Callable[[jax.Array], dict],
    nfes: list[int | None] = (None,),
    time_repeats: int = 1,
    bare_score_seconds: float | None = None,
    progress: bool = True,
    learn_timesteps: int | None = None,
) -> list[dict]:
    """Run every (sampler, options) at every NFE budget; None means the sampler's defaults.

    Each run is compiled once, then timed (best of `time_repeats`, after the compile) and
    scored. With `bare_score_seconds`, rows get overhead = wall / (nfe x that). With
    `learn_timesteps` = B, samplers with a `timesteps` option run at each NFE budget on a
    grid fitted to the score from their `spacing` (`samplers.timesteps.optimize_timesteps`,
    B calibration latents drawn with `fold_in(key, 1)`, not the evaluation's) as well: a
    second row that says `"timesteps": "learnt"` and gives the grid and the seconds its fit took,
    `fit_s` (compilation included; not in `wall_s`).
    """
    if learn_timesteps is not None and not (registry._number(learn_timesteps, integer=True) and learn_timesteps >= 1):
        raise ValueError(f"learn_timesteps must be None or an integer >= 1 (calibration latents), got {learn_timesteps!r}.")
    rows = []
    jobs = [(name, opts, nfe) for name, opts in configs for nfe in nfes]
    for name, opts, nfe in tqdm(jobs, desc="ablation", disable=not progress):
        opts = dict(opts)
        if nfe is not None:
            steps = registry.num_steps_for_nfe(name, nfe, **opts)
            if steps is None:  # adaptive: its NFE is what it is; run it once only
                if any(r["sampler"] == name and r["options"] == json.dumps(opts, sort_keys=True) for r in rows):
                    continue
            else:
                opts["num_steps"] = steps
        row = _run_one(key, sde, score_fn, shape, name, opts, quality, time_repeats, bare_score_seconds)
        if row is None:
            continue
        rows.append(row)
        if learn_timesteps is not None and "num_steps" in opts and "timesteps" in registry.sampler_options(name):
            start = time.perf_counter()
            grid, _ = optimize_timesteps(jax.random.fold_in(key, 1), sde, score_fn, (learn_timesteps, *shape[1:]), name,
                                         progress=False, **opts)
            fit_s = time.perf_counter() - start
            row = _run_one(key, sde, score_fn, shape, name, {**opts, "timesteps": grid.tolist()}, quality,
                           time_repeats, bare_score_seconds)
            row["options"] = json.dumps({**opts, "timesteps": "learnt"}, sort_keys=True)
            row["timesteps"] = json.dumps([float(f"{t:.6g}") for t in grid])  # as `--option timesteps=...` takes it
            row["fit_s"] = fit_s
            rows.append(row)
    return rows


def _run_one(key, sde, score_fn, shape, name, opts, quality, time_repeats, bare_score_seconds):
    """One row of `run_grid`, or None (reported) where the sampler refuses the setting."""
    run = lambda: registry.sample(key, sde, score_fn, shape, name, **opts)  # noqa: E731
    try:
        x, used = run()
    except ValueError as err:  # a setting the sampler does not support (e.g. too few steps)
        tqdm.write(f"skipped {name} {opts}: {err}")
        return None
    jax.block_until_ready(x)
    wall = math.inf
    for _ in range(time_repeats):
        start = time.perf_counter()
        x, used = run()
        jax.block_until_ready(x)
        wall = min(wall, time.perf_counter() - start)
    row = {"sampler": name, "options": json.dumps(opts, sort_keys=True), "nfe": int(used), "wall_s": wall}
    if bare_score_seconds:
        row["overhead"] = wall / (used * bare_score_seconds)
    row.update(quality(x))
    return row


def sampler_configs(samplers, snrs=None) -> list[tuple[str, dict]]:
    """(sampler, options) runs of a grid: each sampler at its defaults, or once per value in
    `snrs` for the samplers with an snr option. Raises ValueError for an unknown name."""
    configs = []
    for name in samplers:
        if name not in registry.SAMPLERS:
            raise ValueError(f"unknown sampler {name!r}; valid: {', '.join(registry.SAMPLERS)}")
        if snrs and "snr" in registry.sampler_options(name):
            configs += [(name, {"snr": v}) for v in snrs]
        else:
            configs.append((name, {}))
    return configs


def guidance_sweep(key, sde, score_fn, shape, configs, quality, y, weights, nfes=(None,), progress=True) -> list[dict]:
    """`run_grid` of a conditional `score_fn(x, t, y)` under classifier-free guidance with
    condition y and each weight w in `weights`; rows get a "guidance" column. Every weight,
    0 included, is the traced leaf of one kind of `guidance.classifier_free` model, so each
    run of the grid compiles once for the whole sweep."""
    from scoresde.samplers import guidance

    rows = []
    for w in weights:
        guided = guidance.classifier_free(score_fn, y, w)
        grid = run_grid(key, sde, guided, shape, configs, quality, nfes=nfes, progress=progress)
        rows += [{"guidance": w, **row} for row in grid]
    return rows


def toy_quality(name: str, num: int):
    """(quality, metric, note) for samples of the 2-D toy `name`: exact per-mode Frechet
    distances for mixtures (`exact_target_quality`), else the sliced W2 distance to `num`
    exact samples."""
    from scoresde import analytic

    target = analytic.toy_target(name)
    if isinstance(target, analytic.GaussianMixture):
        return exact_target_quality(target, jax.random.PRNGKey(1)), "fd_modes", (
            "fd_modes: per-mode Frechet distance to the exact components of the target."
        )
    ref = target.sample(jax.random.PRNGKey(1), num)
    return (lambda x: {"sw": sliced_wasserstein(jax.random.PRNGKey(2), x, ref)}), "sw", (
        "sw: sliced W2 distance to exact samples of the target (of the same size)."
    )


def image_quality(config, num: int):
    """(quality, metric, note) for model-space image samples of a config (a latent model's are
    decoded, `experiment.to_unit_range`) against its test split: FD-digits in the bundled
    digits classifier's feature space for the digits, else FD-pixels8 (the Frechet distance of
    images average-pooled to 8 x 8) and the sliced W2 distance in pixel space to `num` test
    images."""
    from scoresde import experiment
    from scoresde.evaluation import feature_spaces

    held_out = np.concatenate(list(experiment.eval_images(config, "test", 256)))
    digits = config.data.dataset == "digits"
    space = "digits_classifier" if digits else feature_spaces.PIXELS
    metric = "fd_digits" if digits else "fd_pixels8"
    ref_stats = feature_spaces.compute_stats(held_out, space)
    ref = held_out[:num]

    def quality(x):
        images = np.asarray(experiment.to_unit_range(x, config))
        if not np.all(np.isfinite(images)):
            return {metric: float("inf")} if digits else {metric: float("inf"), "sw_pixels": float("inf")}
        row = {metric: feature_spaces.fd_from_stats(feature_spaces.compute_stats(images, space), ref_stats)["fd"]}
        if not digits:
            n = min(len(images), len(ref))
            row["sw_pixels"] = sliced_wasserstein(jax.random.PRNGKey(0), images[:n], ref[:n])
        return row

    if digits:
        note = ("fd_digits: Frechet distance to the held-out test split in the bundled digits classifier's "
                "64-d feature space (FD-digits; not an FID).")
    else:
        note = ("fd_pixels8: Frechet distance to the held-out test split of the images average-pooled to 8 x 8 "
                "(FD-pixels8; a low-frequency pixel statistic, not an FID); sw_pixels: sliced W2 distance in "
                "pixel space to held-out test images.")
    return quality, metric, note


class Ablation(NamedTuple):
    """An ablation's rows, the name of its headline metric, a title and notes (`write_results`)."""

    rows: list[dict]
    metric: str
    title: str
    notes: str


DEFAULT_SAMPLERS = ("euler_maruyama", "ddim", "edm_heun", "dpm_solver++", "dpm_solver")
DEFAULT_NFES = (10, 20, 50, 100)


def _grid_configs(samplers, snrs):
    from scoresde.experiment import UserError

    try:
        return sampler_configs(samplers, snrs)
    except ValueError as err:
        raise UserError(str(err)) from None


def _checked(rows):
    from scoresde.experiment import UserError

    if not rows:
        raise UserError("Every run of the grid was skipped (see the reasons above); change --samplers or --nfes.")
    return rows


def ablate_target(target: str, samplers=DEFAULT_SAMPLERS, nfes=DEFAULT_NFES, *, snrs=None, sde: str = "vpsde",
                  num: int | None = None, seed: int = 0, learn_timesteps: int | None = None) -> Ablation:
    """Samplers x NFE budgets (x snr values) on the exact score of an analytic 2-D mixture
    (`analytic.TOY_TARGETS`) under the SDE `sde`, `num` samples per run (default 4096),
    scored by `exact_target_quality` (fd_modes); `learn_timesteps` as `run_grid`."""
    from scoresde import analytic, sde_lib
    from scoresde.experiment import UserError

    configs = _grid_configs(samplers, snrs)
    if target not in analytic.TOY_TARGETS:
        raise UserError(f"unknown target {target!r}; valid: {', '.join(analytic.TOY_TARGETS)}")
    exact = analytic.toy_target(target)
    if not isinstance(exact, analytic.GaussianMixture):
        mixtures = [n for n in analytic.TOY_TARGETS if isinstance(analytic.toy_target(n), analytic.GaussianMixture)]
        raise UserError(f"target {target!r} has no exact score; use one of: {', '.join(mixtures)}")
    try:
        forward = sde_lib.get_sde(sde)
    except ValueError as err:
        raise UserError(str(err)) from None
    rows = run_grid(jax.random.PRNGKey(seed), forward, exact.score_fn(forward), (num or 4096, exact.dim), configs,
                    exact_target_quality(exact, jax.random.PRNGKey(1)), nfes=nfes, learn_timesteps=learn_timesteps)
    return Ablation(_checked(rows), "fd_modes", f"{target} ({sde}), exact score",
                    "Exact score of the target; fd_modes: per-mode Frechet distance to the exact components.")


def ablate_workdir(workdir: str, samplers=DEFAULT_SAMPLERS, nfes=DEFAULT_NFES, *, snrs=None,
                   num: int | None = None, seed: int = 0, guidance=None, learn_timesteps: int | None = None) -> Ablation:
    """Samplers x NFE budgets (x snr values) on the EMA model of a trained workdir, `num`
    samples per run (default 512), scored against the data (`image_quality`, `toy_quality`). With
    `guidance`, a list of classifier-free guidance weights, a conditional model is swept
    over them (`guidance_sweep`, every class in turn), and digits samples also get the
    bundled classifier's accuracy on their class. `learn_timesteps` as `run_grid` (not with guidance)."""
    from scoresde import experiment

    configs = _grid_configs(samplers, snrs)
    if guidance is not None and learn_timesteps:
        raise experiment.UserError("Learnt timesteps are fitted to one score: give --guidance or --learn-timesteps, "
                                   "not both.")
    config, sde, score_fn, step = experiment.load_score_fn(workdir)
    num = num or 512
    shape = (num,) + experiment.data_shape(config)
    if experiment.is_image_data(config):
        quality, metric, notes = image_quality(config, num)
    else:
        quality, metric, notes = toy_quality(config.data.dataset.removeprefix("toy:"), num)
    title = f"{config.data.dataset} ({config.training.sde}), step {step}"
    key = jax.random.PRNGKey(seed)
    if guidance is None:
        rows = run_grid(key, sde, score_fn, shape, configs, quality, nfes=nfes, learn_timesteps=learn_timesteps)
        return Ablation(_checked(rows), metric, title, notes)
    if experiment.condition_kind(config) == "text_embedding":
        raise experiment.UserError("--guidance sweeps label-conditional models; sample a text-embedding model at "
                                   "each weight with sample --condition-file F --guidance W.")
    if experiment.condition_table(config) is None:
        raise experiment.UserError("This model is unconditional (training.condition='none'): --guidance sweeps "
                                   "classifier-free guidance of a conditional one (e.g. --config digits_vp_class).")
    labels = experiment.class_labels(len(experiment.condition_table(config)), num)
    if config.data.dataset == "digits":
        from scoresde.evaluation.digits import digits_accuracy

        base_quality = quality
        quality = lambda x: {**base_quality(x), "accuracy": digits_accuracy(  # noqa: E731
            experiment.to_unit_range(x, config), labels)}
        notes += (" accuracy: fraction of samples the bundled digits classifier (98.3% on real test digits) "
                  "assigns to the requested class.")
    y = experiment.condition_from_labels(config, labels)
    rows = guidance_sweep(key, sde, score_fn, shape, configs, quality, y, guidance, nfes=nfes)
    return Ablation(_checked(rows), metric, title + ", classifier-free guidance", notes)


def write_results(rows: list[dict], path_prefix: str, metric: str, title: str, notes: str = "") -> list[str]:
    """Write `<prefix>.csv`, `<prefix>.md` (a table) and `<prefix>.png` (metric vs NFE)."""
    os.makedirs(os.path.dirname(path_prefix) or ".", exist_ok=True)
    fields = list(dict.fromkeys(k for row in rows for k in row))
    with open(path_prefix + ".csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fields)
        writer.writeheader()
        writer.writerows(rows)

    def fmt(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    with open(path_prefix + ".md", "w") as f:
        f.write(f"# {title}\n\n{notes}\n\n" if notes else f"# {title}\n\n")
        f.write("| " + " | ".join(fields) + " |\n|" + "---|" * len(fields) + "\n")
        for row in rows:
            f.write("| " + " | ".join(fmt(row.get(k, "")) for k in fields) + " |\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label in dict.fromkeys(_label(r) for r in rows):
        pts = sorted((r["nfe"], r[metric]) for r in rows if _label(r) == label)
        ax.plot(*zip(*pts), marker="o", label=label)
    floors = [r[f"{metric}_floor"] for r in rows if f"{metric}_floor" in r]
    if floors:
        ax.axhline(float(np.mean(floors)), color="gray", ls="--", label="sample-size floor")
    ax.set(xscale="log", yscale="log", xlabel="NFE (score evaluations)", ylabel=metric, title=title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path_prefix + ".png", dpi=120)
    plt.close(fig)
    return [path_prefix + ext for ext in (".csv", ".md", ".png")]


def _label(row):
    opts = {k: v for k, v in json.loads(row["options"]).items() if k != "num_steps"}
    label = row["sampler"] + (" " + ",".join(f"{k}={v}" for k, v in opts.items()) if opts else "")
    return label + (f" w={row['guidance']:g}" if "guidance" in row else "")
