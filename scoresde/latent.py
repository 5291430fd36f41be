"""Latent diffusion (Rombach et al. 2022): score models on a trained autoencoder's latents.

A score (or classifier) config becomes a latent one with `data.autoencoder`, the workdir of
an autoencoder trained on the same data (`scoresde.autoencoder`; data.dataset, image_size
and num_channels must match). Its data are then

    x = latent_scale * E[z | images]       (h, w, latent_channels) = (H/f, W/f, c)
    images = decode(x / latent_scale)      what its samples become

Training encodes the training split once into `<workdir>/latents.npz` (atomically), and
reuses it while its key stays the same: the autoencoder's workdir, checkpoint step, a digest
of its parameters and its data settings; when the autoencoder changes, the data are encoded
again. config.json records the autoencoder's checkpoint (`data.autoencoder_step`: its newest
when the run starts) and the scale (`data.latent_scale`: by default 1 / std of the encoded
training latents, LDM's scale_by_std), so later commands decode with exactly that checkpoint.

The SDE, the network, the objectives, every sampler, guidance (class labels pass through the
cache) and the ablation tool see arrays of latents and are unchanged; the one place where
samples become images, `experiment.to_unit_range`, decodes them (`to_images`).
"""

from __future__ import annotations

import json
import os

import numpy as np

from scoresde import autoencoder, data, experiment
from scoresde.errors import UserError

CACHE = "latents.npz"
PIXEL_KEYS = ("dataset", "image_size", "num_channels")  # what the autoencoder's data and the model's must share


def autoencoder_workdir(config) -> str:
    """data.autoencoder: the autoencoder's workdir, or "" for a pixel-space model."""
    return config.data.get("autoencoder", "") or ""


def is_latent(config) -> bool:
    return bool(autoencoder_workdir(config))


def autoencoder_config(config):
    """The config of a latent config's autoencoder, checked: it exists, is an autoencoder, and
    was trained on the same data (`PIXEL_KEYS`). UserErrors name data.autoencoder."""
    path = autoencoder_workdir(config)
    try:
        ae_config = autoencoder.load_config_checked(path)
    except UserError as err:
        raise UserError(f"data.autoencoder={path!r}: {err}") from None
    for key in PIXEL_KEYS:
        if ae_config.data.get(key) != config.data.get(key):
            raise UserError(
                f"The autoencoder in {path!r} was trained on data.{key}={ae_config.data.get(key)!r}, this config has "
                f"{config.data.get(key)!r}: the latent model's data must be the autoencoder's "
                f"({', '.join(f'{k}={ae_config.data.get(k)!r}' for k in PIXEL_KEYS)}).")
    return ae_config


def latent_shape(config) -> tuple[int, int, int]:
    """The shape of one latent `(H/f, W/f, latent_channels)` of a latent config's data."""
    ae_config = autoencoder_config(config)
    model = experiment.model_from_config(ae_config)
    size, f = config.data.image_size, model.factor
    if size % f:
        raise UserError(f"data.image_size={size} is not a multiple of the autoencoder's factor {f}.")
    return (size // f, size // f, model.latent_channels)


def resolve_step(config):
    """The config with data.autoencoder_step set: the autoencoder's newest checkpoint if it is
    -1, else checked to exist."""
    path = autoencoder_workdir(config)
    autoencoder_config(config)
    step = config.data.get("autoencoder_step", -1)
    if step < 0:
        config.data.autoencoder_step = autoencoder.newest_step(path)
        return config
    from scoresde import checkpoints

    with checkpoints.CheckpointManager(path, async_save=False, read_only=True) as manager:
        steps = {s for s, _ in manager.candidates()}
    if step not in steps:
        raise UserError(f"The autoencoder in {path!r} has no checkpoint at data.autoencoder_step={step} "
                        f"(it has {sorted(steps) or 'none'}).")
    return config


def load_autoencoder(config) -> autoencoder.TrainedAutoencoder:
    """The autoencoder a latent config (with data.autoencoder_step resolved) encodes and decodes with."""
    step = config.data.get("autoencoder_step", -1)
    if step < 0:
        raise UserError("data.autoencoder_step is not set: train the latent model first (training records it).")
    autoencoder_config(config)
    return autoencoder.load_cached(autoencoder_workdir(config), step)


def cache_key(ae: autoencoder.TrainedAutoencoder, workdir: str) -> dict:
    """What the cached latents depend on: the autoencoder (workdir, step, parameter digest) and its data."""
    return {"autoencoder": os.path.abspath(workdir), "step": int(ae.step), "digest": ae.digest(),
            "data": {k: ae.config.data.get(k) for k in (*PIXEL_KEYS, "centered")}}


def cached_latents(workdir: str, config, verbose: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The latent means `(N, h, w, c)` (unscaled) and labels `(N,)` of the training split of a
    latent config: read from `<workdir>/latents.npz` if its key (`cache_key`) is the current
    one, else encoded and written there atomically."""
    ae = load_autoencoder(config)
    key = json.dumps(cache_key(ae, autoencoder_workdir(config)), sort_keys=True)
    path = os.path.join(workdir, CACHE)
    if os.path.exists(path):
        with np.load(path) as cached:
            if str(cached["key"]) == key:
                return cached["latents"], cached["labels"]
        if verbose:
            print(f"{path} was encoded by another autoencoder checkpoint (or data); encoding again.", flush=True)
    batches = list(experiment.dataset_from_config(ae.config, "train", ae.config.eval.batch_size, unit_range=True,
                                                  shuffle=False, num_epochs=1, drop_remainder=False))
    images, labels = (np.concatenate([b[k] for b in batches]) for k in ("image", "label"))
    if verbose:
        print(f"Encoding {len(images)} training images with the autoencoder in {autoencoder_workdir(config)} "
              f"(step {ae.step}) -> {path}", flush=True)
    latents = ae.encode(images)
    if not np.all(np.isfinite(latents)):
        raise UserError(f"The autoencoder in {autoencoder_workdir(config)!r} (step {ae.step}) encodes to non-finite "
                        "latents; nothing was written.")
    os.makedirs(workdir, exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}.npz"
    np.savez(tmp, latents=latents, labels=labels, key=key)
    os.replace(tmp, path)
    return latents, labels


def prepare(workdir: str, config, verbose: bool = True):
    """(config, train_iter) of a latent config: the training latents (`cached_latents`),
    data.latent_scale set to 1 / std of them if it is 0, and an iterator of batches
    {"image": scaled latents, "label"} shuffled with config.seed."""
    latents, labels = cached_latents(workdir, config, verbose)
    if config.data.get("latent_scale", 0.0) <= 0:
        std = float(latents.std())
        if not std > 0:
            raise UserError(f"The autoencoder's latents of the training data have std {std}: nothing to scale.")
        config.data.latent_scale = 1.0 / std
    try:
        train_iter = data.DataIterator(data.ArraySource(latents * config.data.latent_scale, labels),
                                       config.training.batch_size, shuffle=True, seed=config.seed)
    except ValueError as err:  # a batch larger than the data set
        raise UserError(str(err)) from None
    return config, train_iter


def to_images(x, config) -> np.ndarray:
    """Samples of a latent model `(N, h, w, c)` as images `(N, H, W, C)` in [0, 1]:
    decode(x / data.latent_scale) with the recorded autoencoder checkpoint."""
    scale = config.data.get("latent_scale", 0.0)
    if not scale > 0:
        raise UserError("data.latent_scale is not set: train the latent model first (training records it).")
    return load_autoencoder(config).decode(np.asarray(x, np.float32) / scale)
