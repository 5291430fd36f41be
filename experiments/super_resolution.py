"""Super-resolution (2x) on the held-out 8x8 digits and 16x16 photo crops, on CPU: bicubic
upsampling, the inverse-problem method with an unconditional model (`imputation.super_resolve`,
replacement), and the conditional super-resolution model (SR3 / cascaded diffusion,
`digits_sr`, `photos_sr`), all from the same low-resolution images (the 2x2 block means of
each test image). On digits, also the two-stage cascade (a 4x4 digits model, then digits_sr)
against the one-stage 8x8 model.

Trains (or resumes; a finished run returns at once) five small models with the CLI, with
shortened schedules (`--digits-steps`, `--photos-steps`), then measures against the
held-out high-resolution images:

  psnr     mean over test images of 10 log10(1 / MSE), images in [0, 1];
  lr_rmse  RMSE between the output's 2x2 block means and the low-resolution input (0 for an
           output that is consistent with it);
  fd       FD-digits (digits: the bundled digits classifier's 64-d features) and FD-patch
           (all 4x4 pixel patches, 16-d grey or 48-d RGB: `metrics.patch_frechet_distance`),
           each against the test images.

    python experiments/super_resolution.py [--runs runs/super_resolution] [--out experiments/results]

Writes <out>/super_resolution.{md,json,png}.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from scoresde import experiment, reporting
from scoresde.data import digits_split, photos_split
from scoresde.evaluation import feature_spaces, metrics

# Euler-Maruyama (the reverse SDE; replacement as the reference): these briefly trained eps
# networks are least accurate near t = T, where DPM-Solver++'s data prediction divides by
# alpha_T = 0.0067, and its 20-step samples diverge on photos.
SAMPLER, OPTIONS = "euler_maruyama", {"num_steps": 100}
EMA_RATE = 0.99  # the configs' 0.995 still weighs the first steps at these short schedules
FACTOR = 2
SHOWN = 8  # test images in the figure


def train(runs, name, config, steps, overrides=()):
    """Train (or resume) `config` into <runs>/<name> for `steps` steps, EMA rate `EMA_RATE`, without
    snapshot grids."""
    workdir = os.path.join(runs, name)
    cmd = [sys.executable, "-m", "scoresde", "train", "--workdir", workdir, f"--config.training.n_iters={steps}",
           f"--config.training.snapshot_freq={steps}", "--config.training.snapshot_sampling=False",
           f"--config.model.ema_rate={EMA_RATE}", *overrides]
    if not os.path.exists(experiment.config_path(workdir)):
        cmd += ["--config", config]
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    return workdir


def block_means(x, f=FACTOR):
    n, h, w, c = x.shape
    return x.reshape(n, h // f, f, w // f, f, c).mean(axis=(2, 4))


def measure(out, high, low, digits: bool) -> dict:
    """The metrics of outputs `out` against the test images `high` and their low-resolution `low`."""
    out = np.asarray(out, np.float32)
    row = {"psnr": float(np.mean(metrics.psnr(out, high))),
           "lr_rmse": float(np.sqrt(np.mean((block_means(out) - low) ** 2)))}
    if digits:
        stats = [feature_spaces.compute_stats(x, "digits_classifier") for x in (out, high)]
        row["fd_digits"] = feature_spaces.fd_from_stats(*stats)["fd"]
    row["fd_patch"] = metrics.patch_frechet_distance(out, high)
    return row


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def evaluate(data_name, high, train_images, uncond, sr, digits):
    """Rows of (method, nfe, wall_s, metrics) for one data set, and the outputs to show."""
    low = block_means(high)
    rows, shown = [], {"input (nearest)": np.repeat(np.repeat(low, FACTOR, 1), FACTOR, 2)}

    def add(method, out, nfe, wall):
        rows.append({"data": data_name, "method": method, "nfe": nfe, "wall_s": round(wall, 1),
                     **measure(out, high, low, digits)})
        print(rows[-1], flush=True)

    add("nearest (A+ y)", shown["input (nearest)"], 0, 0.0)
    bicubic, wall = timed(lambda: np.clip(np.asarray(jax.image.resize(jnp.asarray(low), high.shape, "bicubic")), 0, 1))
    add("bicubic", bicubic, 0, wall)
    shown["bicubic"] = bicubic
    result = experiment.sample_workdir(uncond, len(high), upsample=low, sampler=SAMPLER, options=OPTIONS,
                                       impute_method="replace")
    add(f"inverse problem, unconditional model (replace, {SAMPLER} {OPTIONS['num_steps']})", result.samples,
        result.nfe, result.wall_s)
    shown["inverse problem"] = result.samples
    result = experiment.sample_workdir(sr, len(high), upsample=low, sampler=SAMPLER, options=OPTIONS)
    add(f"conditional SR model ({SAMPLER} {OPTIONS['num_steps']})", result.samples, result.nfe, result.wall_s)
    shown["SR model"] = result.samples
    shown["original"] = high
    # What real images score: another set of real images of the same kind (FD's sample-size floor).
    floor = train_images[np.random.default_rng(0).choice(len(train_images), len(high), replace=False)]
    real = {"data": data_name, "method": "real training images (FD floor; PSNR n/a)", "nfe": 0, "wall_s": 0.0,
            **{k: v for k, v in measure(floor, high, block_means(floor), digits).items() if k.startswith("fd")}}
    rows.append(real)
    return rows, shown


def cascade_rows(base4, uncond, sr, high):
    """FD of the two-stage cascade (4x4 model, then digits_sr) and of the one-stage 8x8 model."""
    rows = []
    for method, kwargs, workdir in (("one stage: unconditional 8x8 model", {}, uncond),
                                    ("cascade: 4x4 model, then the SR model", {"base_workdir": base4}, sr)):
        result = experiment.sample_workdir(workdir, len(high), sampler=SAMPLER, options=OPTIONS, seed=1, **kwargs)
        stats = [feature_spaces.compute_stats(x, "digits_classifier") for x in (result.samples, high)]
        rows.append({"data": "digits", "method": f"{method} ({SAMPLER} {OPTIONS['num_steps']} per stage)",
                     "nfe": result.nfe, "wall_s": round(result.wall_s, 1),
                     "fd_digits": feature_spaces.fd_from_stats(*stats)["fd"],
                     "fd_patch": metrics.patch_frechet_distance(result.samples, high)})
        print(rows[-1], flush=True)
    return rows


def figure(panels, path):
    """One panel per data set: a row per test image, a column per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 7))
    for ax, (name, shown) in zip(np.atleast_1d(axes), panels.items()):
        columns = list(shown)
        rows = np.linspace(0, len(shown["original"]) - 1, SHOWN).round().astype(int)  # spread over the test set
        tiles = np.stack([shown[c][rows] for c in columns], 1)
        tiles = tiles.reshape((-1,) + tiles.shape[2:])
        if tiles.shape[-1] == 1:
            tiles = np.repeat(tiles, 3, -1)
        grid = reporting.image_grid(tiles, nrow=len(columns), upscale=64 // tiles.shape[1])
        ax.imshow(grid, interpolation="nearest")
        width = grid.shape[1] / len(columns)
        ax.set_xticks([(i + 0.5) * width for i in range(len(columns))])
        ax.set_xticklabels(columns, rotation=30, ha="right", fontsize=8)
        ax.set_yticks([])
        ax.set_title(f"{name}: 2x super-resolution of held-out images")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_markdown(rows, path, notes):
    fields = ["data", "method", "nfe", "wall_s", "psnr", "lr_rmse", "fd_digits", "fd_patch"]

    def fmt(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    with open(path, "w") as f:
        f.write(f"# 2x super-resolution: bicubic, inverse problem, conditional SR model\n\n{notes}\n\n")
        f.write("| " + " | ".join(fields) + " |\n|" + "---|" * len(fields) + "\n")
        for row in rows:
            f.write("| " + " | ".join(fmt(row.get(k, "")) for k in fields) + " |\n")
    return path


def machine():
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__}"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default="runs/super_resolution")
    parser.add_argument("--out", default="experiments/results")
    parser.add_argument("--digits-steps", type=int, default=600)
    parser.add_argument("--photos-steps", type=int, default=400)
    args = parser.parse_args()
    start = time.perf_counter()
    d, p = args.digits_steps, args.photos_steps
    digits_uncond = train(args.runs, "digits_vp", "digits_vp", d)
    digits_sr = train(args.runs, "digits_sr", "digits_sr", d)
    digits_base4 = train(args.runs, "digits_vp_4x4", "digits_vp", d, ["--config.data.image_size=4"])
    photos_uncond = train(args.runs, "photos_vp", "photos_vp", p)
    photos_sr = train(args.runs, "photos_sr", "photos_sr", p)
    trained = time.perf_counter() - start

    digits_train, _, digits_test, _ = digits_split(0)
    photos_train, _, photos_test, _ = photos_split()
    rows, panels = [], {}
    for name, high, train_images, uncond, sr, digits in (
            ("digits", digits_test, digits_train, digits_uncond, digits_sr, True),
            ("photos", photos_test, photos_train, photos_uncond, photos_sr, False)):
        data_rows, panels[name] = evaluate(name, high, train_images, uncond, sr, digits)
        rows += data_rows
    rows += cascade_rows(digits_base4, digits_uncond, digits_sr, digits_test)
    total = time.perf_counter() - start

    notes = (
        f"Held-out images: the 359 test digits (8x8 from 4x4) and the 270 test crops of the two photographs "
        f"(16x16 from 8x8; from held-out tiles no training crop touches). The low-resolution inputs are their 2x2 "
        f"block means. psnr: mean over images of 10 log10(1/MSE) in [0, 1] units (higher is closer to the original); "
        f"lr_rmse: RMSE of the output's block means against the input (consistency); fd_digits: Frechet distance "
        f"in the bundled digits classifier's 64-d features; fd_patch: Frechet distance between all 4x4 pixel "
        f"patches (lower is closer to the real images' distribution). Models: digits_vp, digits_sr and digits_vp "
        f"at image_size 4 trained {d} steps; photos_vp and photos_sr {p} steps (batch 64); EMA rate {EMA_RATE}. The "
        f"SR models add "
        f"their training noise augmentation (data.sr_noise_aug = 0.02) to the input. Diffusion samplers: "
        f"{SAMPLER}, {OPTIONS['num_steps']} steps, one sample per input. Command: python "
        f"experiments/super_resolution.py --digits-steps {d} --photos-steps {p}. Machine: {machine()}; "
        f"training {trained / 60:.1f} min, all {total / 60:.1f} min, measured while other jobs shared the CPU."
    )
    os.makedirs(args.out, exist_ok=True)
    prefix = os.path.join(args.out, "super_resolution")
    reporting.write_json(prefix + ".json", {"rows": rows, "notes": notes, "digits_steps": d, "photos_steps": p,
                                            "sampler": SAMPLER, "options": OPTIONS, "train_s": trained,
                                            "total_s": total, "machine": machine()})
    write_markdown(rows, prefix + ".md", notes)
    figure(panels, prefix + ".png")
    print(open(prefix + ".md").read())


if __name__ == "__main__":
    main()
