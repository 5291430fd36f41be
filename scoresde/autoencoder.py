"""Latent diffusion's first stage in a workdir: a trained autoencoder, its encoder and decoder
on images in [0, 1], and its reconstruction report.

An autoencoder trains like any model of the toolkit, from its own config
(`training.objective='autoencoder'`, `model.name='autoencoder'`, e.g. `digits_ae`,
`photos_ae`; loss `losses.get_autoencoder_loss_fn`):

    scoresde train --config digits_ae --workdir runs/ae       # checkpoints, metrics.jsonl, resumes
    scoresde evaluate --workdir runs/ae                        # reconstruction_report of the test split

At each periodic checkpoint (with training.snapshot_sampling) it writes the reconstruction
report of the test split: `eval/reconstruction_test_step<S>.json` (MSE, PSNR, MAE on [0, 1]
pixels; the latents' std and KL) and `samples/reconstruction_step_<S>.png` (originals
beside their reconstructions), and logs the metrics to TensorBoard.

    ae = autoencoder.load("runs/ae")              # the EMA parameters of its newest checkpoint
    z = ae.encode(images)                          # (N, H, W, C) in [0, 1] -> means of q(z | x), (N, H/f, W/f, c)
    images = ae.decode(z)                          # -> (N, H, W, C) in [0, 1] (clipped)
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

from scoresde import data, experiment, losses, reporting
from scoresde.errors import UserError
from scoresde.workdir import check_writable, load_config

OBJECTIVE = "autoencoder"


def is_autoencoder(config) -> bool:
    """Whether a config trains an autoencoder (training.objective='autoencoder')."""
    return config.training.get("objective", "score") == OBJECTIVE


@functools.partial(jax.jit, static_argnums=(0, 1))
def _apply(model, method: str, params, x):
    return model.apply({"params": params}, x, method=method)


def _batched(fn, x: np.ndarray, batch_size: int):
    """fn over x `(N, ...)` in batches of `batch_size` (the last one padded, so one shape
    compiles), concatenated on the host; fn may return a tuple."""
    x = np.asarray(x, np.float32)
    size = min(batch_size, len(x))
    outs = []
    for i in range(0, len(x), size):
        chunk = x[i : i + size]
        n = len(chunk)
        if n < size:
            chunk = np.concatenate([chunk, np.zeros((size - n,) + chunk.shape[1:], chunk.dtype)])
        outs.append(jax.tree.map(lambda a: np.asarray(a)[:n], fn(chunk)))
    return jax.tree.map(lambda *a: np.concatenate(a), *outs)


@dataclasses.dataclass(frozen=True)
class TrainedAutoencoder:
    """A trained autoencoder: its config, network (`models.Autoencoder`), parameters and step.
    Its methods take and give images in [0, 1]; the data scaling of its config is applied."""

    config: object
    model: object
    params: object
    step: int

    @property
    def factor(self) -> int:
        return self.model.factor

    def latent_shape(self, image_shape) -> tuple[int, int, int]:
        """The latents' shape `(H/f, W/f, latent_channels)` for images `(H, W, C)`."""
        h, w, _ = image_shape
        return (h // self.factor, w // self.factor, self.model.latent_channels)

    def posterior(self, images, batch_size: int = 256):
        """(mean, logvar) of q(z | x) for images `(N, H, W, C)` in [0, 1], numpy arrays."""
        x = data.get_data_scaler(self.config.data.get("centered", False))(np.asarray(images, np.float32))
        return _batched(lambda b: _apply(self.model, "encode", self.params, b), x, batch_size)

    def encode(self, images, batch_size: int = 256) -> np.ndarray:
        """The means of q(z | x) `(N, H/f, W/f, c)` for images `(N, H, W, C)` in [0, 1]."""
        return self.posterior(images, batch_size)[0]

    def decode(self, z, batch_size: int = 256) -> np.ndarray:
        """Images `(N, H, W, C)` in [0, 1] (clipped) of latents z `(N, H/f, W/f, c)`."""
        x = _batched(lambda b: _apply(self.model, "decode", self.params, b), z, batch_size)
        return np.clip(data.get_data_inverse_scaler(self.config.data.get("centered", False))(x), 0.0, 1.0)

    def digest(self) -> str:
        """A digest of the parameters (sha256 of their bytes, in tree order): what names the
        latents they encode."""
        h = hashlib.sha256()
        for leaf in jax.tree.leaves(self.params):
            h.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
        return h.hexdigest()[:16]


def load_config_checked(workdir: str):
    """The config of the autoencoder in `workdir`; a UserError if it holds another kind of model."""
    config = load_config(workdir)
    if not is_autoencoder(config):
        kind = config.training.get("objective", "score")
        raise UserError(f"{workdir!r} holds a {kind} model, not an autoencoder (train one with "
                        f"scoresde train --config digits_ae --workdir <dir>).")
    return config


def load(workdir: str, step: int | None = None) -> TrainedAutoencoder:
    """The EMA parameters of the autoencoder in `workdir` at its newest checkpoint (or `step`)."""
    config = load_config_checked(workdir)
    params, step = experiment.load_ema_params(workdir, config, step)
    return TrainedAutoencoder(config, experiment.model_from_config(config), params, step)


def newest_step(workdir: str) -> int:
    """The step of the newest checkpoint of the autoencoder in `workdir` (a UserError if none)."""
    from scoresde import checkpoints

    load_config_checked(workdir)
    with checkpoints.CheckpointManager(workdir, async_save=False, read_only=True) as manager:
        latest = manager.latest()
    if latest is None:
        raise UserError(f"The autoencoder in {workdir!r} has no checkpoint yet. Train it first: "
                        f"scoresde train --workdir {workdir}")
    return latest[0]


@functools.lru_cache(maxsize=4)
def _load_cached(path: str, step: int, stamp: float) -> TrainedAutoencoder:
    return load(path, step)


def load_cached(workdir: str, step: int) -> TrainedAutoencoder:
    """`load(workdir, step)`, kept in memory for the next call with the same checkpoint (one
    whose files changed since is loaded again)."""
    from scoresde import checkpoints

    path = os.path.abspath(workdir)
    stamps = [os.stat(d).st_mtime for d in (os.path.join(path, checkpoints.PERIODIC_DIR, str(step)),
                                            os.path.join(path, checkpoints.META_DIR, str(step))) if os.path.isdir(d)]
    return _load_cached(path, int(step), max(stamps, default=0.0))


# ----------------------------------------------------------------------------- reconstructions


def reconstruction_metrics(images, reconstructions) -> dict:
    """Reconstruction error of images `(N, H, W, C)` in [0, 1]: mse and mae over all pixels,
    psnr = 10 log10(1 / mse) (dB, peak 1), and psnr_mean, the mean of the per-image PSNRs."""
    err = np.asarray(reconstructions, np.float64) - np.asarray(images, np.float64)
    per_image = np.mean(np.reshape(err, (len(err), -1)) ** 2, axis=1)
    mse = float(per_image.mean())
    psnr = lambda m: 10 * np.log10(1.0 / np.maximum(m, 1e-20))  # noqa: E731
    return {"mse": mse, "psnr": float(psnr(mse)), "psnr_mean": float(psnr(per_image).mean()),
            "mae": float(np.abs(err).mean()), "count": int(len(err))}


def evaluate(ae: TrainedAutoencoder, images) -> tuple[dict, np.ndarray]:
    """`reconstruction_metrics` of images `(N, H, W, C)` in [0, 1] through the autoencoder
    (decode of the posterior mean), with the latents' std and mean KL(q(z | x) || N(0, I));
    and the reconstructions."""
    mean, logvar = ae.posterior(images)
    recon = ae.decode(mean)
    metrics = reconstruction_metrics(images, recon)
    metrics.update(latent_std=float(mean.std()), kl=float(np.mean(losses.diagonal_gaussian_kl(mean, logvar))))
    return metrics, recon


def save_reconstruction_grid(images, reconstructions, path: str, pairs_per_row: int = 8) -> str:
    """A PNG of images `(N, H, W, C)` in [0, 1], each beside its reconstruction (pairs_per_row
    pairs per row)."""
    pairs = np.stack([np.asarray(images), np.asarray(reconstructions)], 1).reshape((-1,) + np.shape(images)[1:])
    return reporting.save_image_grid(pairs, path, nrow=2 * pairs_per_row)


def _write_report(ae: TrainedAutoencoder, images, split: str, json_path: str, png_path: str, num_shown: int):
    metrics, recon = evaluate(ae, images)
    if not all(math.isfinite(v) for v in metrics.values()):
        raise UserError(f"Non-finite reconstruction metrics {metrics}: the autoencoder broke down; nothing was written.")
    report = {**metrics, "split": split, "step": ae.step, "factor": ae.factor,
              "latent_shape": list(ae.latent_shape(np.shape(images)[1:])), "png": png_path}
    os.makedirs(os.path.dirname(os.path.abspath(png_path)), exist_ok=True)
    os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
    save_reconstruction_grid(images[:num_shown], recon[:num_shown], png_path)
    return report, reporting.write_json(json_path, report)


def reconstruction_report(workdir: str, split: str = "test", *, step: int | None = None, num: int | None = None,
                          out: str | None = None, num_shown: int = 32) -> tuple[dict, str]:
    """Reconstruction error (`evaluate`) of a split's images (the first `num`) through the
    autoencoder in `workdir` (newest checkpoint, or `step`), written to the folder `out`
    (default `<workdir>/eval`, checked writable first) as `reconstruction_<split>_step<S>.json`
    with a `.png` of the first `num_shown` beside their reconstructions. Returns the report
    and the path of the JSON."""
    config = load_config_checked(workdir)
    out = check_writable(out or os.path.join(workdir, "eval"))
    ae = load(workdir, step)
    images = np.concatenate(list(experiment.eval_images(config, split)))[:num]
    path = os.path.join(out, f"reconstruction_{split}_step{ae.step}")
    return _write_report(ae, images, split, path + ".json", path + ".png", num_shown)


def snapshot_hook(config, model, workdir: str, tb=None, verbose: bool = True):
    """`train.train`'s `on_snapshot` for an autoencoder config (None when
    training.snapshot_sampling is off): the reconstruction report of the test split at each
    periodic checkpoint, `eval/reconstruction_test_step<S>.json` and
    `samples/reconstruction_step_<S>.png`, and its metrics as TensorBoard scalars
    ("reconstruction/mse", ...)."""
    if not config.training.snapshot_sampling:
        return None
    images = np.concatenate(list(experiment.eval_images(config, "test")))

    def on_snapshot(state, step):
        if jax.process_index() != 0:
            return
        ae = TrainedAutoencoder(config, model, state.ema_params, step)
        try:
            report, path = _write_report(ae, images, "test", os.path.join(workdir, "eval", f"reconstruction_test_step{step}.json"),
                                         os.path.join(workdir, "samples", f"reconstruction_step_{step:08d}.png"), 32)
        except UserError as err:  # an early, unstable autoencoder: no report, but training goes on
            print(f"reconstructions at step {step}: none written: {err}", file=sys.stderr, flush=True)
            return
        if verbose:
            print(f"reconstructions at step {step}: test MSE {report['mse']:.4g}, PSNR {report['psnr']:.2f} dB -> "
                  f"{path}, {report['png']}", flush=True)
        if tb is not None:
            tb.scalars(step, {f"reconstruction/{k}": report[k] for k in ("mse", "psnr", "mae", "latent_std", "kl")})

    return on_snapshot

