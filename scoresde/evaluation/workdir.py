"""Sample quality of a trained workdir, and the reference statistics of a data set.

`evaluate_workdir` draws N samples in chunks kept on disk, so that an interrupted
evaluation resumes where it stopped, then reports FID / KID / IS (FD-digits for the
digits) against the data; a latent model's samples are decoded to images first
(`experiment.to_unit_range`), and an autoencoder gets its reconstruction report. The chunks are kept under a folder named by a hash of
everything that determines their content (`sample_settings`): another sampler, option,
seed, checkpoint or chunk size samples afresh instead of reusing them.
"""

from __future__ import annotations

import hashlib
import json
import math
import os

import jax
import numpy as np
from tqdm.auto import tqdm

from scoresde import experiment, reporting
from scoresde.evaluation import digits, feature_spaces, inception, metrics
from scoresde.experiment import UserError
from scoresde.workdir import check_writable, load_config


def feature_space(config) -> str:
    """The feature space a config's samples are compared in: the bundled digits classifier
    for the digits, the FID Inception-v3 otherwise."""
    return digits.FEATURE_SPACE if config.data.dataset == "digits" else inception.FEATURE_SPACE


def dataset_stats(config, split: str = "train", weights: str | None = None) -> metrics.Stats:
    """Feature statistics of a config's data split (images in [0, 1]) in its `feature_space`;
    `weights`: the FID Inception `.npz`. Save them with `metrics.save_stats`."""
    return feature_spaces.compute_stats(experiment.eval_images(config, split), feature_space(config), weights=weights)


def _reference(config, stats: str | None):
    """What samples are compared with: the statistics in the file `stats`, or the held-out
    digits themselves (KID needs their features)."""
    space = feature_space(config)
    if stats:
        try:
            reference = metrics.load_stats(stats)
        except (FileNotFoundError, ValueError) as err:  # no file, or not a stats file
            raise UserError(str(err)) from None
        if reference.feature_space != space:
            raise UserError(
                f"{stats!r} holds {reference.feature_space} statistics; {config.data.dataset} samples are "
                f"compared in {space} (scoresde fid-stats --config <this config> writes those)."
            )
        return reference
    if space == digits.FEATURE_SPACE:
        return np.concatenate(list(experiment.eval_images(config, "test", 256)))
    raise UserError(
        "FID needs dataset statistics: run scoresde fid-stats --config <name> --out stats.npz, then pass --stats."
    )


def sample_settings(sampler: str, options: dict, seed: int, step: int, chunk_shape) -> dict:
    """Everything that determines the content of the sample chunks of an evaluation of the
    checkpoint at `step` (its unconditional EMA model: no condition or guidance enters); chunk
    i is sampled with the key fold_in(PRNGKey(seed), i)."""
    return json.loads(json.dumps({
        "sampler": sampler, "options": options, "seed": seed, "step": step, "chunk_shape": list(chunk_shape),
    }, sort_keys=True, default=str))


def _chunk_dir(out: str, settings: dict) -> str:
    """The folder under `out` of the chunks sampled with `settings`: created (writable) with a
    settings.json, or an existing one whose settings.json says the same (a UserError otherwise)."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    run_dir = os.path.join(out, f"{settings['sampler']}_step{settings['step']}_{digest}")
    check_writable(run_dir)
    path = os.path.join(run_dir, "settings.json")
    if os.path.exists(path):
        with open(path) as f:
            saved = json.load(f)
        if saved != settings:
            raise UserError(f"{run_dir!r} holds samples of other settings ({path}); remove that folder.")
    elif os.path.isdir(run_dir) and any(f.startswith("chunk_") for f in os.listdir(run_dir)):
        raise UserError(f"{run_dir!r} holds samples without their settings.json; remove that folder.")
    else:
        reporting.write_json(path, settings)
    return run_dir


def evaluate_workdir(
    workdir: str,
    num: int | None = None,
    *,
    chunk: int | None = None,
    sampler: str | None = None,
    options: dict | None = None,
    seed: int = 0,
    stats: str | None = None,
    weights: str | None = None,
    out: str | None = None,
    progress: bool = True,
) -> tuple[dict, str]:
    """FID / KID / IS (FD-digits, KID, IS for the digits) of `num` samples (default
    eval.num_samples) of a trained workdir's EMA model, drawn in chunks of `chunk` (default
    eval.batch_size) with `sampler` and `options` (default: the config's,
    `experiment.resolve_sampler`) from the key `seed`.

    stats: the data set's statistics (`dataset_stats`; needed but for the digits, which are
    compared with their test split); weights: the FID Inception `.npz`.

    The chunks are kept in `<out>/<sampler>_step<step>_<hash>/` (`out` defaults to
    `<workdir>/eval`, so a read-only workdir needs another `out`) with the settings
    that made them, and reused by a rerun with the same settings (a resumed or larger
    evaluation). Returns the metrics, with the settings, and the path of the report.json
    written there.

    An autoencoder's workdir gets its reconstruction report of the test split instead
    (`autoencoder.reconstruction_report`: the first `num` test images, written to `out`).
    """
    from scoresde import autoencoder

    if autoencoder.is_autoencoder(load_config(workdir)):
        return autoencoder.reconstruction_report(workdir, num=num, out=out)
    config, sde, score, step = experiment.load_score_fn(workdir)
    if not experiment.is_image_data(config):
        raise UserError("evaluate computes image metrics; this config has 2-D points (use ablate).")
    name, options = experiment.resolve_sampler(config, sampler, options)
    num = num or config.eval.num_samples
    chunk = chunk or config.eval.batch_size
    chunk = max(chunk - chunk % jax.device_count(), jax.device_count())  # split over the devices
    reference = _reference(config, stats)
    shape = (chunk,) + experiment.data_shape(config)
    run_dir = _chunk_dir(out or os.path.join(workdir, "eval"), sample_settings(name, options, seed, step, shape))
    paths = [os.path.join(run_dir, f"chunk_{i:05d}.npz") for i in range(math.ceil(num / chunk))]
    for i, path in enumerate(tqdm(paths, desc="samples", disable=not progress)):
        if os.path.exists(path):  # sampled before with the same settings
            continue
        x, nfe = experiment.run_sampler(jax.random.fold_in(jax.random.PRNGKey(seed), i), sde, score, shape, name, options)
        tmp = path + ".tmp.npz"
        np.savez(tmp, samples=np.asarray(experiment.to_unit_range(x, config)), nfe=nfe)
        os.replace(tmp, path)
    samples = np.concatenate([np.load(path)["samples"] for path in paths])[:num]
    result = feature_spaces.evaluate(samples, reference, feature_space(config), weights=weights)
    result.update(sampler=name, options=options, seed=seed, num_samples=int(len(samples)), step=step)
    result = reporting.jsonable(result)
    return result, reporting.write_json(os.path.join(run_dir, "report.json"), result)
