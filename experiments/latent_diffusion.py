"""Latent diffusion against pixel-space diffusion, on the bundled digits and on 32 x 32 crops
of scikit-learn's two sample photographs (`photos`): what the autoencoder costs and saves.

For each data set, three runs trained through `experiment.train_workdir` (as `scoresde
train`; a finished run is resumed and skipped):

- the autoencoder (`digits_ae`: 8x8x1 -> 4x4x2, factor 2; `photos_ae`: 32x32x3 -> 8x8x4,
  factor 4, 12x fewer values);
- the score model on its latents (`digits_ldm`, `photos_ldm`: VP SDE, DDPM++ U-Net);
- the same score model in pixel space (`digits_vp`, `photos32_vp`), for the same number of steps.

Measured:

- the autoencoder's reconstruction error on the held-out split (MSE, PSNR on [0, 1] pixels;
  `autoencoder.reconstruction_report`);
- sample quality: the Frechet distance of `--num` samples (Euler-Maruyama, 100 steps, decoded for
  the latent model) to the held-out split, FD-digits for the digits (the bundled classifier's
  features) and FD-pixels8 for the photos (images average-pooled to 8 x 8: no offline feature
  network exists for photos); for reference the same distance for the held-out split's
  reconstructions (what the autoencoder alone costs) and for as many training images;
- training cost: seconds per step of the compiled train steps, the best of `--rounds`
  interleaved rounds (so that both models see the same machine load), and each run's wall
  time from its logs (`run_seconds`: compilation and snapshots included; the latent model's
  total adds its autoencoder's and the encoding of the training data, timed once compiled);
- sampling cost: seconds for `--time-num` samples (compiled; the latent model's include
  decoding them), the best of `--rounds` interleaved rounds.

    python experiments/latent_diffusion.py [--runs runs/latent_diffusion] [--out experiments/results]
                                           [--datasets digits,photos] [--num 512] [--time-num 64] [--rounds 3]
    python experiments/latent_diffusion.py --tiny      # smoke test: tiny nets, a few steps

Writes <out>/latent_diffusion.{md,json} and latent_diffusion.png (per data set: held-out
images, pixel-space samples, latent samples), latent_diffusion_recon_<data>.png (held-out
images beside their reconstructions); `_tiny` names with --tiny.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import sys
import tempfile
import time

import jax
import numpy as np

from scoresde import autoencoder, experiment, models, reporting, train
from scoresde import workdir as workdir_lib
from scoresde.evaluation import feature_spaces

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ablate_samplers import machine  # noqa: E402

# Per data set: (autoencoder config, latent config, pixel config, feature space, steps of the
# autoencoder, steps of each score model).
DATASETS = {
    "digits": ("digits_ae", "digits_ldm", "digits_vp", "digits_classifier", 600, 600),
    "photos": ("photos_ae", "photos_ldm", "photos32_vp", feature_spaces.PIXELS, 1000, 1000),
}
# Euler-Maruyama (the reverse SDE), as experiments/super_resolution.py: the briefly trained eps
# networks are least accurate near t = T, where DPM-Solver++'s data prediction divides by alpha_T,
# and the pixel model's 20-step DPM-Solver++ samples of photos diverge.
SAMPLER, NFE = "euler_maruyama", 100
QUIET = ["training.snapshot_sampling=False"]  # score models: no sample grids while training
TINY_AE = ["model.nf=8", "model.num_res_blocks=0", "training.batch_size=16", "training.log_freq=1"]
TINY_SCORE = ["model.nf=8", "model.ch_mult=(1,)", "training.batch_size=16", "training.log_freq=1"]


def train_run(workdir: str, name: str, steps: int, overrides=()):
    """Train config `name` to `steps` steps in `workdir` (or resume it; a finished run only loads)."""
    overrides = [f"training.n_iters={steps}", f"training.snapshot_freq={steps}",
                 f"training.snapshot_freq_for_preemption={steps}", *overrides]
    config = None if os.path.exists(experiment.config_path(workdir)) else name
    experiment.train_workdir(workdir, config, overrides)


def run_seconds(workdir: str) -> float:
    """A run's training wall time from its logs, so that a rerun of this script, which only
    loads finished runs, reports it too: for each start or resume in config_history.jsonl, the
    time to the last row of metrics.jsonl before the next one (compilation included; a resume
    that trains nothing adds nothing)."""
    def seconds(text):
        return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S%z").timestamp()

    starts = [seconds(e["time"]) for e in workdir_lib.history(workdir) if e["event"] in ("start", "resume")]
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        times = [json.loads(line)["time"] for line in f if '"time"' in line]
    total = 0.0
    for begin, end in zip(starts, starts[1:] + [float("inf")]):
        inside = [t for t in times if begin <= t < end]
        total += max(inside) - begin if inside else 0.0
    return total


def step_seconds(config, steps: int = 10):
    """A function timing `steps` compiled train steps of a config (random data of its shape:
    the cost does not depend on the values), and the network's parameter count."""
    sde, model = experiment.sde_from_config(config), experiment.model_from_config(config)
    kwargs = experiment.train_kwargs(config)
    loss_fn = train.objective_loss_fn(sde, model, kwargs["objective"], True, **kwargs["loss_kwargs"])
    step = train.compile_step(train.make_train_step(loss_fn, kwargs["optimizer"], kwargs["ema_rate"]), 1)
    shape = experiment.data_shape(config)
    state = train.init_train_state(model, sde, jax.random.PRNGKey(0), shape, kwargs["optimizer"],
                                   kwargs["loss_kwargs"].get("continuous", True))
    batch = train.put_batch(np.random.default_rng(0).normal(size=(config.training.batch_size,) + shape)
                            .astype(np.float32))
    holder = {"state": state}

    def run():
        state = holder["state"]
        start = time.perf_counter()
        for _ in range(steps):
            state, metrics = step(state, batch)
        jax.block_until_ready(metrics)
        holder["state"] = state
        return (time.perf_counter() - start) / steps

    run()  # compile
    return run, models.count_params(state.params)


def fd(images, reference_stats, space) -> float:
    return feature_spaces.fd_from_stats(feature_spaces.compute_stats(images, space), reference_stats)["fd"]


def measured(name: str, runs: str, num: int, time_num: int, rounds: int, tiny: bool) -> dict:
    """`measure`, or what an earlier run of this script measured for `name` with the same settings
    (`<runs>/<name>_measured.{json,npz}`, written when a data set is done), so that an interrupted
    run goes on with the next data set."""
    path = os.path.join(runs, f"{name}_measured")
    settings = {"num": num, "time_num": time_num, "rounds": rounds}
    if os.path.exists(path + ".json"):
        with open(path + ".json") as f:
            result = json.load(f)
        if result.pop("_settings", None) == settings:
            with np.load(path + ".npz") as images:
                result["_images"] = {k: images[k] for k in images.files}
            result["_images"]["recon_png"] = result.pop("_recon_png")
            return result
    result = measure(name, runs, num, time_num, rounds, tiny)
    images = dict(result["_images"])
    np.savez(path + ".npz", **{k: v for k, v in images.items() if k != "recon_png"})
    reporting.write_json(path + ".json", {**{k: v for k, v in result.items() if k != "_images"},
                                          "_settings": settings, "_recon_png": images["recon_png"]})
    return result


def add_run_times(result: dict, runs: str) -> dict:
    """The runs' training wall times (`run_seconds`); the latent model's total adds its
    autoencoder's and the encoding of the training data."""
    name = result["data"]
    ae, ldm, pixel = (run_seconds(os.path.join(runs, f"{name}_{k}")) for k in ("ae", "ldm", "pixel"))
    result["autoencoder"]["train_run_s"] = ae
    result["latent"].update(score_model_run_s=ldm, train_run_s=ldm + ae + result["latent"]["encode_s"])
    result["pixel"]["train_run_s"] = pixel
    return result


def measure(name: str, runs: str, num: int, time_num: int, rounds: int, tiny: bool) -> dict:
    ae_name, ldm_name, pixel_name, space, ae_steps, steps = DATASETS[name]
    if tiny:
        ae_steps, steps = 4, 4
    dirs = {k: os.path.join(runs, f"{name}_{k}") for k in ("ae", "ldm", "pixel")}
    train_run(dirs["ae"], ae_name, ae_steps, TINY_AE if tiny else ())
    train_run(dirs["ldm"], ldm_name, steps, [f"data.autoencoder={dirs['ae']}", *QUIET, *(TINY_SCORE if tiny else ())])
    train_run(dirs["pixel"], pixel_name, steps, [*QUIET, *(TINY_SCORE if tiny else ())])
    recon, _ = autoencoder.reconstruction_report(dirs["ae"])
    config = {k: experiment.load_config(dirs[k]) for k in ("ldm", "pixel")}
    held_out = np.concatenate(list(experiment.eval_images(config["pixel"], "test")))
    ref = feature_spaces.compute_stats(held_out, space)
    ae = autoencoder.load(dirs["ae"])
    all_train = np.concatenate(list(experiment.eval_images(config["pixel"], "train")))
    ae.encode(all_train)  # compiled for that shape
    start = time.perf_counter()
    ae.encode(all_train)
    encode_s = time.perf_counter() - start  # what encoding the training data once costs
    floors = {"fd_reconstructions": fd(ae.decode(ae.encode(held_out)), ref, space),
              # as many training images, drawn over the whole split (photos' are in photo order)
              "fd_train_images": fd(all_train[np.random.default_rng(0).choice(len(all_train), len(held_out), replace=False)],
                                    ref, space)}

    def sample(k, n, seed):
        return experiment.sample_workdir(dirs[k], n, sampler=SAMPLER, options={"num_steps": NFE}, seed=seed)

    samples = {k: sample(k, num, 0).samples for k in ("ldm", "pixel")}  # for the FD
    # Interleaved rounds: train steps and sampling of both models under the same load.
    timers = {k: step_seconds(config[k]) for k in ("ldm", "pixel")}
    for k in timers:
        sample(k, time_num, 1)  # compiled for time_num samples
    step_s, sample_s = {k: [] for k in timers}, {k: [] for k in timers}
    for r in range(rounds):
        for k in ("ldm", "pixel"):
            step_s[k].append(timers[k][0]())
            sample_s[k].append(sample(k, time_num, 2 + r).wall_s)
    metric = "fd_digits" if space == "digits_classifier" else "fd_pixels8"
    rows = {}
    for k in ("ldm", "pixel"):
        rows[k] = {
            "config": config[k].name, "data_shape": list(experiment.data_shape(config[k])),
            "params": timers[k][1], "train_steps": steps, "batch_size": config[k].training.batch_size,
            "train_s_per_step": min(step_s[k]), "train_s_per_step_rounds": step_s[k],
            "sample_s": min(sample_s[k]), "sample_num": time_num, "sample_s_rounds": sample_s[k],
            metric: fd(samples[k], ref, space),
        }
    rows["ldm"]["encode_s"] = encode_s
    return {
        "data": name, "metric": metric, "feature_space": space, "num_samples": num, "held_out": len(held_out),
        "sampler": f"{SAMPLER}, {NFE} steps", "autoencoder": {
            "config": ae_name, "steps": ae_steps, "factor": recon["factor"],
            "latent_shape": recon["latent_shape"], "params": models.count_params(ae.params),
            **{k: recon[k] for k in ("mse", "psnr", "psnr_mean", "mae", "latent_std", "kl")}},
        "floors": floors, "latent": rows["ldm"], "pixel": rows["pixel"],
        "_images": {"held_out": held_out[:16], "pixel": samples["pixel"][:16], "latent": samples["ldm"][:16],
                    "recon_png": recon["png"]},
    }


def write(results: list[dict], out: str, suffix: str, rounds: int, seconds: float, command: str):
    os.makedirs(out, exist_ok=True)
    prefix = os.path.join(out, f"latent_diffusion{suffix}")
    grids = []
    for r in results:
        images = r.pop("_images")
        shutil.copyfile(images["recon_png"], f"{prefix}_recon_{r['data']}.png")
        grids.append((r["data"], [images["held_out"], images["pixel"], images["latent"]]))
    for name, rows in grids:  # one PNG per data set: held-out | pixel | latent, a row each
        reporting.save_image_grid(np.concatenate(rows), f"{prefix}_{name}.png", nrow=16)
    info = {"machine": machine(), "command": command, "rounds": rounds, "total_s": seconds, "results": results}
    reporting.write_json(prefix + ".json", info)
    lines = [f"# Latent diffusion vs pixel space{' (tiny smoke test)' if suffix else ''}", "",
             f"`{command}` on {info['machine']}; {seconds / 60:.1f} minutes in all.", ""]
    for r in results:
        a, m = r["autoencoder"], r["metric"]
        lines += [f"## {r['data']}", "",
                  f"Autoencoder `{a['config']}` ({a['params']:,} parameters, factor {a['factor']}, latents "
                  f"{'x'.join(map(str, a['latent_shape']))}), {a['steps']} steps in {a['train_run_s']:.0f} s: held-out "
                  f"MSE {a['mse']:.5f}, PSNR {a['psnr']:.2f} dB (mean per image {a['psnr_mean']:.2f} dB).", "",
                  f"{m}: {r['feature_space']} Frechet distance of {r['num_samples']} samples ({r['sampler']}) to the "
                  f"{r['held_out']} held-out images; the held-out images' reconstructions give "
                  f"{r['floors']['fd_reconstructions']:.3g} and as many training images "
                  f"{r['floors']['fd_train_images']:.3g}.", "",
                  f"| model | data shape | params | steps | batch | train s/step | train run s | "
                  f"sample s ({r['latent']['sample_num']}) | {m} |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for k in ("pixel", "latent"):
            x = r[k]
            run = f"{x['train_run_s']:.0f}" + (f" ({x['score_model_run_s']:.0f} + AE + encoding)" if k == "latent" else "")
            lines.append(f"| {x['config']} | {'x'.join(map(str, x['data_shape']))} | {x['params']:,} | "
                         f"{x['train_steps']} | {x['batch_size']} | {x['train_s_per_step']:.4f} | {run} | "
                         f"{x['sample_s']:.2f} | {x[m]:.3g} |")
        p, q = r["pixel"], r["latent"]
        lines += ["", f"Latent / pixel: train step x{q['train_s_per_step'] / p['train_s_per_step']:.2f}, "
                  f"sampling x{q['sample_s'] / p['sample_s']:.2f}, {m} {q[m]:.3g} vs {p[m]:.3g}.", ""]
    lines += ["Seconds per step and per sampling call are the best of the interleaved rounds "
              f"({rounds}); each round's value is in the JSON. Runs' wall times include compilation.", ""]
    with open(prefix + ".md", "w") as f:
        f.write("\n".join(lines))
    return prefix


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="runs/latent_diffusion")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    parser.add_argument("--datasets", default="digits,photos")
    parser.add_argument("--num", type=int, default=512, help="samples per model")
    parser.add_argument("--time-num", type=int, default=64, help="samples per timed sampling call")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds")
    parser.add_argument("--tiny", action="store_true", help="smoke test: tiny nets, 4 steps, in a temporary folder")
    args = parser.parse_args()
    names = [n for n in args.datasets.split(",") if n]
    command = "python experiments/latent_diffusion.py " + " ".join(sys.argv[1:])
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        runs = tmp if args.tiny else args.runs
        num, time_num, rounds = (32, 8, 1) if args.tiny else (args.num, args.time_num, args.rounds)
        results = [add_run_times(measured(name, runs, num, time_num, rounds, args.tiny), runs) for name in names]
        prefix = write(results, args.out, "_tiny" if args.tiny else "", rounds, time.perf_counter() - start,
                       command.strip())
    print(open(prefix + ".md").read())


if __name__ == "__main__":
    main()
