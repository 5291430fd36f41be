"""Conditional generation on the bundled 8x8 digits, on CPU: class conditioning with
classifier-free guidance, cross-attention on the label's spelling and on a text encoder's
embeddings of the label's name, classifier guidance (VP and VE), inpainting, and
colorization (of digits tinted in six colours).

Trains (or resumes; a finished run is skipped) with the CLI, then measures each model
with the bundled digits classifier (98.3% on real test digits): `accuracy` is the
fraction of samples it assigns to the requested class, `fd_digits` the Frechet distance
to the held-out test digits in its feature space.

    python experiments/conditional_digits.py [--runs runs/conditional] [--out experiments/results] [--only-text]

Writes <out>/conditional_digits.{csv,md,png}, <out>/conditional_digits_accuracy.png,
<out>/inpaint_digits.md, <out>/colorize_digits.md, <out>/text_digits{.csv,.md,.png,_samples.png} and
docs/conditional_digits.png, docs/inpaint_digits.png, docs/colorize_digits.png.
--only-text trains and measures only the text-embedding model (`digits_vp_text` on the
embeddings of experiments/text_digits.py's toy encoder): <out>/text_digits*.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np

from scoresde import ablation, experiment, reporting
from scoresde.data import DIGIT_COLORS, digits_color_split, digits_split, get_data_scaler
from scoresde.evaluation import feature_spaces
from scoresde.evaluation.digits import digits_accuracy as accuracy
from scoresde.samplers import guidance, imputation
from text_digits import write_digits_text

CONFIGS = ["digits_vp_class", "digits_vp_classifier", "digits_ve", "digits_ve_classifier", "digits_vp_spelling",
           "digits_vp_color"]
TEXT = "digits_vp_text"
WEIGHTS = (0.0, 1.0, 3.0)
SCALES = (1.0, 2.0, 4.0)
PER_CLASS = 50
SAMPLERS = [("dpm_solver++", {"num_steps": 20}), ("euler_maruyama", {"num_steps": 100})]
NOTES = (
    "{num} samples per row ({per_class} per class). accuracy: fraction the bundled digits classifier "
    "(98.3% on real test digits) assigns to the requested class; fd_digits: Frechet distance to the "
    "held-out test digits in its 64-d feature space (real test vs train digits: 1.73). scale: the "
    "classifier-free weight w, or the classifier guidance scale gamma (gamma = 1 + w). Machine: {machine}."
)


def train(runs, name, overrides=()):
    """Train (or resume; a finished run is skipped) the config `name` in <runs>/<name> with the CLI."""
    workdir = os.path.join(runs, name)
    cmd = [sys.executable, "-m", "scoresde", "train", "--workdir", workdir]
    if not os.path.exists(experiment.config_path(workdir)):
        cmd += ["--config", name, *overrides]
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def train_text(runs) -> str:
    """digits_vp_text on the digits with the toy encoder's embeddings of their names
    (<runs>/digits_text.npz); returns the file of the ten names' embeddings."""
    dataset, names = write_digits_text(os.path.join(runs, "digits_text.npz"))
    train(runs, TEXT, [f"--config.data.dataset={dataset}"])
    return names


def quality(config, labels, ref):
    """Samples -> their accuracy on `labels` and FD-digits to the reference statistics."""
    def measure(x):
        images = np.asarray(experiment.to_unit_range(x, config))
        if not np.all(np.isfinite(images)):
            return {"accuracy": float("nan"), "fd_digits": float("inf")}
        stats = feature_spaces.compute_stats(images, "digits_classifier")
        return {"accuracy": accuracy(images, labels), "fd_digits": feature_spaces.fd_from_stats(stats, ref)["fd"]}

    return measure


def text_embedding(args, names, labels, ref):
    """Classifier-free guidance of the text-embedding model, sampling each label's name's
    embeddings: <out>/text_digits.{csv,md,png} and text_digits_samples.png (samples at each weight)."""
    config, sde, score_fn, step = experiment.load_score_fn(os.path.join(args.runs, TEXT))
    y = experiment.load_condition(names, config.model.context_embedding_dim)[labels]  # the names in label order
    num, rows, panels = len(labels), [], {}
    key = jax.random.PRNGKey(0)
    for w in WEIGHTS:
        guided = guidance.classifier_free(score_fn, y, w) if w else guidance.condition(score_fn, y)
        grid = ablation.run_grid(key, sde, guided, (num,) + experiment.data_shape(config), SAMPLERS,
                                 quality(config, labels, ref))
        rows += [{"method": "cfg, cross-attention on text embeddings", "sde": "vp", "scale": w, **r} for r in grid]
        panels[f"{TEXT} w={w:g}"], _ = guidance_sample(key, sde, guided, config, num)
    notes = NOTES.format(num=num, per_class=PER_CLASS, machine=machine()) + (
        f" Model: {TEXT} (step {step}), trained on the digits with the toy encoder's "
        "embeddings of each label's name (experiments/text_digits.py: a fixed random 32-d embedding per character, "
        "a sequence of up to 5 with its padding mask); sampled with the ten names' embeddings.")
    ablation.write_results(rows, os.path.join(args.out, "text_digits"), "fd_digits",
                           "Text-embedding conditioned digits: guidance weight vs accuracy and FD", notes)
    save_panels(panels, os.path.join(args.out, "text_digits_samples.png"))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default="runs/conditional")
    parser.add_argument("--out", default="experiments/results")
    parser.add_argument("--docs", default="docs")
    parser.add_argument("--only-text", action="store_true", help="only the text-embedding model")
    args = parser.parse_args()
    names = train_text(args.runs)
    if not args.only_text:
        for name in CONFIGS:
            train(args.runs, name)

    test_images, test_labels = held_out()
    ref = feature_spaces.compute_stats(test_images, "digits_classifier")
    labels = np.repeat(np.arange(10), PER_CLASS)
    num = len(labels)
    os.makedirs(args.out, exist_ok=True)
    text_embedding(args, names, labels, ref)
    if args.only_text:
        return

    rows, panels = [], {}
    key = jax.random.PRNGKey(0)

    # Classifier-free guidance: class embedding, and cross-attention on the spelling.
    for name, method in (("digits_vp_class", "cfg, class embedding"), ("digits_vp_spelling", "cfg, cross-attention on the spelling")):
        config, sde, score_fn, _ = experiment.load_score_fn(os.path.join(args.runs, name))
        y = experiment.condition_from_labels(config, labels)
        for w in WEIGHTS:
            guided = guidance.classifier_free(score_fn, y, w) if w else guidance.condition(score_fn, y)
            grid = ablation.run_grid(key, sde, guided, (num,) + experiment.data_shape(config), SAMPLERS,
                                     quality(config, labels, ref))
            rows += [{"method": method, "sde": "vp", "scale": w, **r} for r in grid]
            x, _ = guidance_sample(key, sde, guided, config, num)
            panels[f"{name} w={w:g}"] = x

    # Classifier guidance of unconditional models, VP and VE: s + gamma grad log p_t(y | x).
    # The VP model is the class model's unconditional half s(x, t, None).
    for sde_name in ("vp", "ve"):
        config, sde, score_fn = unconditional(args.runs, sde_name)
        _, log_prob_fn, _ = experiment.load_classifier(os.path.join(args.runs, f"digits_{sde_name}_classifier"))
        for scale in SCALES:
            guided = guidance.classifier_guidance(score_fn, log_prob_fn, jnp.asarray(labels), scale)
            grid = ablation.run_grid(key, sde, guided, (num,) + experiment.data_shape(config), SAMPLERS,
                                     quality(config, labels, ref))
            rows += [{"method": "classifier guidance", "sde": sde_name, "scale": scale, **r} for r in grid]
            x, _ = guidance_sample(key, sde, guided, config, num)
            panels[f"digits_{sde_name} classifier gamma={scale:g}"] = x
        unguided = ablation.run_grid(key, sde, score_fn, (num,) + experiment.data_shape(config), SAMPLERS[:1],
                                     quality(config, labels, ref))
        rows += [{"method": "unconditional (chance 0.1)", "sde": sde_name, "scale": 0.0, **r} for r in unguided]

    notes = NOTES.format(num=num, per_class=PER_CLASS, machine=machine())
    ablation.write_results(rows, os.path.join(args.out, "conditional_digits"), "fd_digits",
                           "Conditional digits: guidance weight vs accuracy and FD", notes)
    plot_accuracy(rows, os.path.join(args.out, "conditional_digits_accuracy.png"))
    for name, x in panels.items():
        reporting.save_image_grid(x.reshape(10, PER_CLASS, 8, 8, 1)[:, :8].transpose(1, 0, 2, 3, 4).reshape(-1, 8, 8, 1),
                                  os.path.join(args.runs, "panels", name.replace(" ", "_") + ".png"), nrow=10)
    save_panels(panels, os.path.join(args.docs, "conditional_digits.png"))
    inpaint(args, test_images, test_labels)
    colorize(args)


def unconditional(runs, sde_name):
    """(config, sde, score_fn(x, t)): digits_ve, or the null condition of digits_vp_class."""
    if sde_name == "ve":
        config, sde, score_fn, _ = experiment.load_score_fn(os.path.join(runs, "digits_ve"))
        return config, sde, score_fn
    config, sde, score_fn, _ = experiment.load_score_fn(os.path.join(runs, "digits_vp_class"))
    return config, sde, lambda x, t: score_fn(x, t, None)


def held_out():
    _, _, images, labels = digits_split()
    return images, labels


def guidance_sample(key, sde, score_fn, config, num):
    from scoresde.samplers import sample

    x, nfe = sample(key, sde, score_fn, (num,) + experiment.data_shape(config), "dpm_solver++", num_steps=20)
    return np.asarray(experiment.to_unit_range(x, config)), nfe


def plot_accuracy(rows, path):
    """Accuracy and FD-digits against the guidance scale, a line per method, SDE and sampler."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    lines = {}
    for r in rows:
        if not r["method"].startswith("unconditional"):
            lines.setdefault(f"{r['method']} ({r['sde']}), {r['sampler']}", []).append((r["scale"], r["accuracy"], r["fd_digits"]))
    for label, pts in lines.items():
        pts.sort()
        axes[0].plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
        axes[1].plot([p[0] for p in pts], [p[2] for p in pts], marker="o", label=label)
    axes[0].set(xlabel="guidance scale (w, or gamma)", ylabel="accuracy (bundled digits classifier)")
    axes[1].set(xlabel="guidance scale (w, or gamma)", ylabel="FD-digits (lower is better)", yscale="log")
    axes[0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def save_panels(panels, path):
    """Side-by-side grids (8 samples per class, a column per class), titled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(panels)
    cols = 3
    fig, axes = plt.subplots(-(-len(names) // cols), cols, figsize=(3.4 * cols, 3.0 * -(-len(names) // cols)))
    for ax, name in zip(axes.ravel(), names):
        x = panels[name].reshape(10, PER_CLASS, 8, 8, 1)[:, :8].transpose(1, 0, 2, 3, 4).reshape(-1, 8, 8, 1)
        ax.imshow(reporting.image_grid(x, nrow=10), cmap="gray")
        ax.set_title(name, fontsize=8)
    for ax in axes.ravel():
        ax.axis("off")
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def inpaint(args, test_images, test_labels):
    """Right half of 100 test digits hidden, then filled in: the classifier's accuracy on
    the result against the true labels, and the RMSE on the hidden pixels."""
    config, sde, cond_score_fn, _ = experiment.load_score_fn(os.path.join(args.runs, "digits_vp_class"))
    images, labels = test_images[:100], test_labels[:100]
    mask = np.ones_like(images)
    mask[:, :, 4:] = 0.0
    data = get_data_scaler(config.data.centered)(images)
    lines = ["| method | sampler | accuracy | rmse_hidden |", "|---|---|---|---|"]
    lines.append(f"| original digits | - | {accuracy(images, labels):.3f} | 0 |")
    blank = images * mask + 0.5 * (1 - mask)
    lines.append(f"| hidden half grey | - | {accuracy(blank, labels):.3f} | {rmse(blank, images, mask):.3f} |")
    shown = {}
    runs = [
        ("replace, unconditional", "pc", {}, lambda x, t: cond_score_fn(x, t, None)),
        ("replace, unconditional", "dpm_solver++", {"num_steps": 50}, lambda x, t: cond_score_fn(x, t, None)),
        ("replace, true label (w = 0)", "pc", {}, guidance.condition(cond_score_fn, jnp.asarray(labels))),
    ]
    for method, sampler, opts, score_fn in runs:
        x, nfe = imputation.inpaint(jax.random.PRNGKey(0), sde, score_fn, data, mask, sampler=sampler, method="replace",
                                    **opts)
        x = np.asarray(experiment.to_unit_range(x, config))
        lines.append(f"| {method} | {sampler} (NFE {nfe}) | {accuracy(x, labels):.3f} | {rmse(x, images, mask):.3f} |")
        shown.setdefault(sampler, x)
    with open(os.path.join(args.out, "inpaint_digits.md"), "w") as f:
        f.write("# Inpainting the right half of 100 test digits (digits_vp_class)\n\n"
                "accuracy: the bundled digits classifier's accuracy on the result against the true labels; "
                "rmse_hidden: RMSE on the hidden pixels (values in [0, 1]). Unconditional: the class model's "
                f"null condition s(x, t, None). Machine: {machine()}.\n\n" + "\n".join(lines) + "\n")
    print("\n".join(lines))
    rows = np.stack([images, blank, shown["pc"], shown["dpm_solver++"]], 1)[:16].reshape(-1, 8, 8, 1)
    reporting.save_image_grid(rows, os.path.join(args.docs, "inpaint_digits.png"), nrow=8)


def palette_match(images, threshold=0.95):
    """Fraction of digits whose stroke colour (the mean RGB of pixels brighter than 0.2 in
    grey) has cosine similarity > threshold to one of the six colours of digits_color."""
    gray = images.mean(-1)
    stroke = gray > 0.2 / 3
    colors = np.stack([(img[m]).mean(0) if m.any() else np.ones(3) for img, m in zip(images, stroke)])
    palette = DIGIT_COLORS / np.linalg.norm(DIGIT_COLORS, axis=1, keepdims=True)
    cos = (colors / np.linalg.norm(colors, axis=1, keepdims=True)) @ palette.T
    return float(np.mean(cos.max(1) > threshold))


def colorize(args):
    """Grey versions of 100 coloured test digits, colorized by digits_vp_color."""
    config, sde, score_fn, _ = experiment.load_score_fn(os.path.join(args.runs, "digits_vp_color"))
    _, _, images, _ = digits_color_split(0)
    images = images[:100]
    gray = np.repeat(images.mean(-1, keepdims=True), 3, -1)
    to_model = get_data_scaler(config.data.centered)
    lines = ["| images | palette_match | grey_error |", "|---|---|---|"]
    lines.append(f"| original coloured digits | {palette_match(images):.2f} | 0 |")
    lines.append(f"| grey input | {palette_match(gray):.2f} | 0 |")
    shown = {}
    for sampler, opts in (("pc", {}), ("dpm_solver++", {"num_steps": 50})):
        x, nfe = imputation.colorize(jax.random.PRNGKey(0), sde, score_fn, to_model(gray), sampler=sampler, **opts)
        x = np.asarray(experiment.to_unit_range(x, config))
        grey_error = float(np.abs(x.mean(-1) - gray[..., 0]).max())
        lines.append(f"| colorized, {sampler} (NFE {nfe}) | {palette_match(x):.2f} | {grey_error:.2g} |")
        shown[sampler] = x
    with open(os.path.join(args.out, "colorize_digits.md"), "w") as f:
        f.write("# Colorizing 100 grey test digits (digits_vp_color)\n\n"
                "palette_match: fraction of digits whose stroke colour is within cosine 0.95 of one of the six "
                "colours of the training set (a clean colour, not a muddy average); grey_error: max |mean RGB - "
                "grey input| (the known component, kept exactly up to clipping to [0, 1]). "
                f"Machine: {machine()}.\n\n" + "\n".join(lines) + "\n")
    print("\n".join(lines))
    rows = np.stack([images, gray, shown["pc"], shown["dpm_solver++"]], 1)[:16].reshape(-1, 8, 8, 3)
    reporting.save_image_grid(rows, os.path.join(args.docs, "colorize_digits.png"), nrow=8)


def machine():
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__}"


def rmse(x, truth, mask):
    hidden = 1 - mask
    return float(np.sqrt(np.sum(((x - truth) * hidden) ** 2) / np.sum(hidden)))


if __name__ == "__main__":
    main()
