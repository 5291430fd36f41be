"""The `scoresde` command line: train, sample, likelihood, ablate, evaluate, fid-stats, configs.

    scoresde train --config digits_vp --workdir runs/digits [--config.training.n_iters=2000]
    scoresde sample --workdir runs/digits [--sampler pc --steps 500 --snr 0.16 --num 64]
    scoresde likelihood --workdir runs/digits --split test [--passes 5]
    scoresde ablate --workdir runs/digits | --target 8gaussians [--samplers ... --nfes ...]
    scoresde evaluate --workdir runs/digits [--num 2000 --sampler dpm_solver++]
    scoresde fid-stats --config vp/cifar10_ddpmpp_continuous --out stats.npz
    scoresde configs

Every mistake a user can make (a missing workdir or checkpoint, a data set that is
not prepared, a bad override, an unknown sampler) ends with a one-line cause and fix.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import signal
import sys
import time

# Arguments of the form --config.a.b=value are config overrides.
OVERRIDE_PREFIX = "--config."


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise SystemExit(f"scoresde: error: {message} (see {self.prog} --help)")


def _positive_int(what: str = ""):
    """An argparse type: an integer >= 1 (`what` says what it sets, for the message)."""

    def parse(text):
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < 1:
            raise argparse.ArgumentTypeError(f"expected a positive integer{what}, got {text!r}")
        return value

    return parse


def _comma_separated(kind, what: str):
    """An argparse type: a comma-separated list of `kind` values (positive ones for int)."""

    def parse(text):
        try:
            values = [kind(v) for v in text.split(",") if v.strip()]
        except ValueError:
            values = None
        if not values or (kind is int and min(values) < 1):
            raise argparse.ArgumentTypeError(f"expected comma-separated {what}, e.g. {_EXAMPLES[what]}; got {text!r}")
        return values

    return parse


_EXAMPLES = {"positive integers": "10,20,50", "numbers": "0.1,0.16"}
# likelihood / fid-stats splits (data.get_dataset: CelebA and LSUN read "validation" for "test").
SPLITS = ("train", "test", "eval", "validation")
# scoresde.likelihood.DIVERGENCES (not imported here: the parser stays quick; a test compares them).
DIVERGENCES = ("rademacher", "gaussian", "exact")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="scoresde", description="Score-based generative modelling with SDEs, on JAX.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("train", help="train (or resume) a score model")
    p.add_argument("--config", help="config name or path (omit to resume a workdir)")
    p.add_argument("--workdir", required=True)

    def sampling_args(p):
        p.add_argument("--sampler", default=None, help="sampler name (default: the config's sampling.method)")
        p.add_argument("--steps", type=_positive_int(" (the sampler's num_steps)"), default=None,
                       help="num_steps of the sampler")
        p.add_argument("--snr", type=float, default=None, help="Langevin signal-to-noise ratio (pc)")
        p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="other sampler options")
        p.add_argument("--seed", type=int, default=0)

    def conditioning_args(p):
        p.add_argument("--label", default=None,
                       help="class label(s), comma-separated, cycled over the samples (default: every class in turn)")
        p.add_argument("--text", default=None, help="a word to spell, for spelling-conditioned models (e.g. seven)")
        p.add_argument("--guidance", type=float, default=0.0,
                       help="classifier-free guidance weight w: (1 + w) s(x, t, y) - w s(x, t)")
        p.add_argument("--classifier", default=None,
                       help="workdir of a noise-conditional classifier: guide an unconditional model with it")
        p.add_argument("--classifier-scale", type=float, default=1.0,
                       help="classifier guidance scale gamma: s + gamma grad log p_t(y | x) (1 samples p(x | y))")

    p = sub.add_parser("sample", help="sample a trained model: .npz and a PNG grid")
    p.add_argument("--workdir", required=True)
    p.add_argument("--num", type=_positive_int(), default=64)
    p.add_argument("--out", default=None, help="output prefix (default: <workdir>/samples/<sampler>)")
    p.add_argument("--image", default=None, help="PNG to inpaint or colorize (with --inpaint / --colorize)")
    p.add_argument("--inpaint", default=None, metavar="MASK_PNG",
                   help="inpaint --image: white pixels of the mask are kept, black ones generated")
    p.add_argument("--colorize", action="store_true", help="colorize the grey levels of --image")
    p.add_argument("--impute-method", default="replace", help="replace (the reference's) or tmpd")
    sampling_args(p)
    conditioning_args(p)

    p = sub.add_parser("likelihood", help="bits/dim over a data split through the probability-flow ODE")
    p.add_argument("--workdir", required=True)
    p.add_argument("--split", default="test", choices=SPLITS)
    p.add_argument("--passes", type=_positive_int(), default=5, help="dequantization passes (the reference used 5)")
    p.add_argument("--batch", type=_positive_int(), default=None, help="default: eval.batch_size")
    p.add_argument("--limit", type=_positive_int(), default=None, help="use only the first N examples")
    p.add_argument("--divergence", default="rademacher", choices=DIVERGENCES,
                   help="Hutchinson probes (rademacher, gaussian) or the exact trace")
    p.add_argument("--rtol", type=float, default=1e-5, help="ODE tolerances (the reference's 1e-5)")
    p.add_argument("--atol", type=float, default=1e-5)
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("ablate", help="samplers x NFE (x snr) grid: CSV, markdown table, PNG plot")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--workdir")
    src.add_argument("--target", help="an analytic target: " + ", ".join(_toy_names()))
    p.add_argument("--samplers", default="euler_maruyama,ddim,edm_heun,dpm_solver++,dpm_solver")
    p.add_argument("--nfes", type=_comma_separated(int, "positive integers"), default=[10, 20, 50, 100],
                   help="comma-separated NFE budgets (default: 10,20,50,100)")
    p.add_argument("--snrs", type=_comma_separated(float, "numbers"), default=None,
                   help="comma-separated snr values, swept for pc samplers")
    p.add_argument("--num", type=_positive_int(), default=None, help="samples per run")
    p.add_argument("--sde", default="vpsde", help="with --target: vpsde, subvpsde, vesde, cosinevpsde")
    p.add_argument("--out", default=None, help="output prefix (default: <workdir>/ablation or ./ablation_<target>)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--guidance", type=_comma_separated(float, "numbers"), default=None,
                   help="comma-separated classifier-free guidance weights w to sweep (conditional models)")

    p = sub.add_parser("evaluate", help="FID/KID/IS (or FD-digits) of N samples; resumes")
    p.add_argument("--workdir", required=True)
    p.add_argument("--num", type=_positive_int(), default=None, help="number of samples (default: eval.num_samples)")
    p.add_argument("--chunk", type=_positive_int(), default=None, help="samples per chunk (default: eval.batch_size)")
    p.add_argument("--stats", default=None, help="dataset statistics .npz from fid-stats")
    p.add_argument("--weights", default=None, help="FID Inception weights .npz")
    sampling_args(p)

    p = sub.add_parser("fid-stats", help="precompute a data set's feature statistics")
    p.add_argument("--config", required=True)
    p.add_argument("--split", default="train", choices=SPLITS)
    p.add_argument("--out", required=True)
    p.add_argument("--weights", default=None, help="FID Inception weights .npz")

    sub.add_parser("configs", help="list the config names")
    return parser


def _toy_names():
    from scoresde.analytic import TOY_TARGETS

    return list(TOY_TARGETS)


# ----------------------------------------------------------------------------- helpers


def _split_overrides(argv):
    overrides, rest = [], []
    for arg in argv:
        if arg.startswith(OVERRIDE_PREFIX):
            overrides.append(arg[len(OVERRIDE_PREFIX) :])
        else:
            rest.append(arg)
    return overrides, rest


def _load_train_config(args, overrides):
    from scoresde import experiment

    saved = os.path.exists(experiment.config_path(args.workdir))
    if saved:
        # Resuming: the saved config is authoritative (overrides may still extend it, e.g. n_iters).
        config = experiment.load_config(args.workdir)
        if args.config:
            given = _get_config(args.config)
            for section in ("model", "data"):
                if given[section].to_json() != config[section].to_json():
                    raise experiment.UserError(
                        f"{args.workdir!r} holds a run of another config ({section} settings differ from "
                        f"{args.config!r}). Use a new --workdir, or omit --config to resume it."
                    )
        config.unlock()
    elif args.config:
        config = _get_config(args.config)
    else:
        raise experiment.UserError(
            f"No config: pass --config <name> to start a run in {args.workdir!r} (scoresde configs lists names)."
        )
    return _apply_overrides(config, overrides), saved


def _get_config(name):
    """configs.get_config; its ValueErrors (unknown, ambiguous, missing file) are the user's."""
    from scoresde import configs, experiment

    try:
        return configs.get_config(name)
    except ValueError as err:
        raise experiment.UserError(str(err)) from None


def _apply_overrides(config, overrides):
    """configs.apply_overrides; its ValueErrors (bad key, value or form) are the user's."""
    from scoresde import configs, experiment

    try:
        return configs.apply_overrides(config, overrides)
    except ValueError as err:
        raise experiment.UserError(str(err)) from None


def _sampler_options(args, config):
    """The sampler name and options from --sampler/--steps/--snr/--option and the config."""
    from scoresde.samplers import registry

    name = args.sampler or _config_sampler(config)
    options = {}
    if args.steps is not None:
        options["num_steps"] = args.steps
    if args.snr is not None:
        options["snr"] = args.snr
    for item in args.option:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"scoresde: error: --option takes KEY=VALUE, got {item!r}")
        options[key] = _parse_value(value)
    try:
        registry.check_options(name, options)
    except ValueError as err:
        raise SystemExit(f"scoresde: error: {err}") from None
    return name, options


def _config_sampler(config):
    return config.sampling.method


def _config_sampler_options(config, name):
    """The config's sampling.* settings that apply to sampler `name`: the predictor,
    corrector and snr of "pc", and the final denoising step of the PC family."""
    s = config.sampling
    if name == "pc":
        return {"predictor": s.predictor, "corrector": s.corrector, "snr": s.snr, "n_steps": s.n_steps_each,
                "denoise": s.noise_removal}
    if name in ("euler_maruyama", "reverse_diffusion", "ancestral"):
        return {"denoise": s.noise_removal}
    return {}


def _parse_value(text):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _run_sampler(key, sde, score_fn, shape, name, options):
    from scoresde.samplers import registry

    try:
        return registry.sample(key, sde, score_fn, shape, name, **options)
    except ValueError as err:
        raise SystemExit(f"scoresde: error: {err}") from err


def _class_labels(args, num_classes, num):
    """--label (cycled) or every class in turn, `(num,)`; checked against num_classes."""
    import numpy as np

    from scoresde.experiment import UserError

    if args.label is None:
        return np.arange(num) % num_classes
    try:
        labels = np.resize(np.array([int(v) for v in args.label.split(",")], np.int32), num)
    except ValueError:
        raise UserError(f"--label takes comma-separated integers, got {args.label!r}.") from None
    if labels.min() < 0 or labels.max() >= num_classes:
        raise UserError(f"--label values must lie in [0, {num_classes}), got {args.label!r}.")
    return labels


def _conditioned_score_fn(args, config, sde, score_fn, num, w=None):
    """The plain score_fn(x, t) that --label/--text/--guidance/--classifier ask for, and the
    class labels of the samples (None when unconditional or unknown)."""
    import numpy as np

    from scoresde import data, experiment
    from scoresde.samplers import guidance

    w = args.guidance if w is None else w
    table = experiment.condition_table(config)
    if args.classifier:
        if table is not None:
            raise experiment.UserError("--classifier guides an unconditional model; this one is conditional "
                                       "(use --guidance for classifier-free guidance).")
        cconfig, log_prob_fn, _ = experiment.load_classifier(args.classifier, sde=sde)
        labels = _class_labels(args, cconfig.model.num_classes, num)
        return guidance.classifier_guidance(score_fn, log_prob_fn, labels, args.classifier_scale), labels
    if table is None:
        if args.label is not None or args.text is not None or w:
            raise experiment.UserError(
                "This model is unconditional (training.condition='none'): train a conditional one "
                "(e.g. --config digits_vp_class) or guide it with --classifier <workdir>.")
        return score_fn, None
    if args.text is not None:
        if config.training.condition != "spelling":
            raise experiment.UserError("--text needs a spelling-conditioned model (digits_vp_spelling); use --label.")
        names = data.label_names(config.data.dataset)
        labels = np.full(num, names.index(args.text.lower())) if args.text.lower() in names else None
        try:
            y = data.spell([args.text] * num, config.model.context_length)
        except ValueError as err:
            raise experiment.UserError(str(err)) from None
    else:
        labels = _class_labels(args, len(table), num)
        y = experiment.condition_from_labels(config, labels)
    return (guidance.classifier_free(score_fn, y, w) if w else guidance.condition(score_fn, y)), labels


def _load_image(path, config, num):
    """A PNG resized to the model's data shape, repeated: `(num, H, W, C)` in [0, 1]."""
    import numpy as np
    from PIL import Image

    from scoresde import experiment

    if not os.path.exists(path):
        raise experiment.UserError(f"No image file {path!r}.")
    h, w, c = experiment.data_shape(config)
    img = Image.open(path).convert("L" if c == 1 else "RGB").resize((w, h), Image.BILINEAR)
    x = np.asarray(img, np.float32).reshape(h, w, c) / 255.0
    return np.repeat(x[None], num, axis=0)


def _impute(args, key, config, sde, score_fn, name, options):
    """--inpaint / --colorize: (original, input as shown, output), each `(num, H, W, C)` in [0, 1], and nfe."""
    import numpy as np

    from scoresde import data, experiment
    from scoresde.samplers import imputation

    if args.image is None:
        raise experiment.UserError("--inpaint and --colorize need --image <png>.")
    if not experiment.is_image_data(config):
        raise experiment.UserError("Inpainting and colorization need an image model; this config has 2-D points.")
    original = _load_image(args.image, config, args.num)
    to_model = data.get_data_scaler(config.data.get("centered", False))
    try:
        if args.colorize:
            if original.shape[-1] != 3:
                raise experiment.UserError("--colorize needs an RGB model; this one has 1 channel (use --inpaint).")
            shown = np.repeat(original.mean(-1, keepdims=True), 3, -1)  # the grey input
            x, nfe = imputation.colorize(key, sde, score_fn, to_model(shown), sampler=name, method=args.impute_method,
                                         **options)
        else:
            mask = (_load_image(args.inpaint, config, args.num) > 0.5).astype(np.float32)
            x, nfe = imputation.inpaint(key, sde, score_fn, to_model(original), mask, sampler=name,
                                        method=args.impute_method, **options)
            shown = original * mask + 0.5 * (1 - mask)  # unknown pixels grey
    except ValueError as err:
        raise experiment.UserError(str(err)) from None
    return original, shown, np.asarray(experiment.to_unit_range(x, config)), nfe


def _write_json(path, obj):
    """Write strict JSON atomically: NaN and infinities (e.g. the standard error of one
    example) become null."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(_jsonable(obj), f, indent=2, allow_nan=False)
    os.replace(tmp, path)
    return path


class _SignalRecorder:
    """The signals this process receives until `close()` that have a Python handler (SIGINT
    and SIGTERM while train.train runs), whoever handles them: the interpreter writes each
    one's number to a wakeup fd. Records nothing outside the main thread."""

    def __init__(self):
        self._fds, self._previous = None, -1
        r, w = os.pipe()
        os.set_blocking(r, False)
        os.set_blocking(w, False)
        try:
            self._previous = signal.set_wakeup_fd(w)
        except ValueError:  # not the main thread
            os.close(r)
            os.close(w)
            return
        self._fds = (r, w)

    def close(self) -> list[int]:
        """Stop recording; the signal numbers received, in order."""
        if self._fds is None:
            return []
        r, w = self._fds
        self._fds = None
        signal.set_wakeup_fd(self._previous)
        received = b""
        try:
            while chunk := os.read(r, 512):
                received += chunk
        except BlockingIOError:
            pass
        finally:
            os.close(r)
            os.close(w)
        return list(received)


# ----------------------------------------------------------------------------- commands


def cmd_train(args, overrides):
    import jax
    import numpy as np

    from scoresde import experiment, reporting, train
    from scoresde.samplers import guidance

    config, resumed = _load_train_config(args, overrides)
    sde, model = experiment.sde_from_config(config), experiment.model_from_config(config)
    kwargs = experiment.train_kwargs(config)  # checks the conditioning settings and the schedule
    experiment.check_train_kwargs(config, sde, model, kwargs)  # what train.train would reject
    train_iter = experiment.dataset_from_config(config, "train")
    # Only a config known to be valid is written (a mistake leaves no config.json behind).
    experiment.save_config(args.workdir, config)
    tb = reporting.TensorBoardWriter(os.path.join(args.workdir, "tensorboard")) if jax.process_index() == 0 else None
    shape = (config.training.snapshot_sampling_num if "snapshot_sampling_num" in config.training else 64,)
    shape = shape + experiment.data_shape(config)
    if shape[0] % jax.device_count():
        shape = (jax.device_count() * math.ceil(shape[0] / jax.device_count()),) + shape[1:]

    def on_log(step, metrics):
        if tb:
            tb.scalars(step, metrics)

    def on_snapshot(state, step):
        if not config.training.snapshot_sampling:
            return
        from scoresde import models

        score_fn = models.get_score_fn(
            sde, model, state.ema_params, continuous=config.training.continuous,
            parameterization=config.model.get("parameterization"),
        )
        table = experiment.condition_table(config)
        if table is not None:  # a column per class
            score_fn = guidance.condition(score_fn, table[np.arange(shape[0]) % len(table)])
        name = _config_sampler(config)
        x, nfe = _run_sampler(jax.random.PRNGKey(step), sde, score_fn, shape, name, _config_sampler_options(config, name))
        if jax.process_index() == 0:
            path = os.path.join(args.workdir, "samples", f"step_{step:08d}.png")
            x = np.asarray(experiment.to_unit_range(x, config))
            if table is not None and experiment.is_image_data(config):
                reporting.save_image_grid(x, path, nrow=len(table))
            else:
                reporting.save_samples_png(x, path, title=f"step {step}")
            print(f"samples at step {step} ({name}, NFE {nfe}): {path}", flush=True)
            if tb and experiment.is_image_data(config):
                tb.image(step, "samples", reporting.image_grid(experiment.to_unit_range(x, config)))

    print(("Resuming" if resumed else "Starting") + f" {args.workdir} ({config.get('name', 'config')})", flush=True)
    signals = _SignalRecorder()
    try:
        state = train.train(
            model, sde, train_iter, args.workdir, example_shape=experiment.data_shape(config),
            on_log=on_log, on_snapshot=on_snapshot, **kwargs,
        )
    except train.NonFiniteLossError as err:
        raise experiment.UserError(str(err)) from err
    finally:
        received = signals.close()
        if tb:
            tb.close()
    step = int(state.step)
    if step < kwargs["schedule"].last_step:  # stopped on request (SIGINT / SIGTERM), with a checkpoint
        if jax.process_index() == 0:
            print(f"Stopped at step {step}; resume with: scoresde train --workdir {shlex.quote(args.workdir)}",
                  file=sys.stderr, flush=True)
        stop = [s for s in received if s in (signal.SIGINT, signal.SIGTERM)]
        # The shell's convention for a death by a signal, though this is an orderly stop.
        raise SystemExit(128 + stop[0] if stop else 1)


def cmd_sample(args, overrides):
    import jax
    import numpy as np

    from scoresde import experiment, reporting

    config, sde, score_fn, step = experiment.load_score_fn(args.workdir)
    name, options = _sampler_options(args, config)
    if args.sampler is None:
        options = {**_config_sampler_options(config, name), **options}
    shape = (args.num,) + experiment.data_shape(config)
    key = jax.random.PRNGKey(args.seed)
    score_fn, labels = _conditioned_score_fn(args, config, sde, score_fn, args.num)
    start = time.perf_counter()
    if args.inpaint or args.colorize:
        original, shown, x, nfe = _impute(args, key, config, sde, score_fn, name, options)
    else:
        if args.image:
            raise experiment.UserError("--image is the input of --inpaint or --colorize; add one of them.")
        x, nfe = _run_sampler(key, sde, score_fn, shape, name, options)
        x = np.asarray(experiment.to_unit_range(x, config))
    wall = time.perf_counter() - start
    what = "colorize" if args.colorize else "inpaint" if args.inpaint else ""
    prefix = args.out or os.path.join(args.workdir, "samples", f"{what or name}_step{step}")
    os.makedirs(os.path.dirname(prefix) or ".", exist_ok=True)
    extra = {} if labels is None else {"labels": labels}
    np.savez(prefix + ".npz", samples=x, nfe=nfe, sampler=name, options=json.dumps(options), step=step,
             guidance=args.guidance, **extra)
    if what:
        # One row per sample: original | input | output.
        png = reporting.save_image_grid(np.stack([original, shown, x], 1).reshape((-1,) + x.shape[1:]),
                                        prefix + ".png", nrow=3)
    elif labels is not None and args.label is None and experiment.is_image_data(config):
        png = reporting.save_image_grid(x, prefix + ".png", nrow=int(labels.max()) + 1)  # a column per class
    else:
        png = reporting.save_samples_png(x, prefix + ".png", title=f"{name}, NFE {nfe}")
    done = {"inpaint": "inpainted ", "colorize": "colorized ", "": ""}[what]
    print(f"{args.num} {done}samples ({name}, NFE {nfe}, {wall:.1f} s) -> {prefix}.npz, {png}")
    if labels is not None and config.data.dataset == "digits" and not what:
        from scoresde.evaluation.digits import digits_accuracy

        print(f"accuracy of the bundled digits classifier on the requested labels: {digits_accuracy(x, labels):.3f}")


def cmd_likelihood(args, overrides):
    import jax
    import numpy as np

    from scoresde import experiment, likelihood

    config, sde, score_fn, step = experiment.load_score_fn(args.workdir)
    if not experiment.is_image_data(config):
        raise experiment.UserError("likelihood reports bits/dim of discrete image data; this config has 2-D points.")
    batch = args.batch or config.eval.batch_size
    data = experiment.dataset_from_config(
        _uncentered(config), args.split, batch,
        shuffle=False, num_epochs=1, drop_remainder=False,
    )
    images = np.concatenate([b["image"] for b in data])[: args.limit]
    num_bins = config.data.get("num_bins", 256)
    batch = min(batch, len(images))
    batch = max(batch - batch % jax.device_count(), jax.device_count())  # split over the devices (padded)
    report = likelihood.evaluate_bpd(
        jax.random.PRNGKey(args.seed), sde, score_fn, images, batch, num_bins=num_bins,
        centered=config.data.centered, num_passes=args.passes, divergence=args.divergence,
        rtol=args.rtol, atol=args.atol,
    )
    report.update(split=args.split, step=step, divergence=args.divergence, rtol=args.rtol, atol=args.atol,
                  workdir=args.workdir)
    os.makedirs(os.path.join(args.workdir, "eval"), exist_ok=True)
    path = _write_json(os.path.join(args.workdir, "eval", f"bpd_{args.split}_step{step}.json"), report)
    spread = report["bpd_stderr"]
    spread = f" ± {spread:.4f}" if math.isfinite(spread) else " (one example: no standard error)"
    print(f"{args.split} bits/dim: {report['bpd']:.4f}{spread} "
          f"(passes: {', '.join(f'{v:.4f}' for v in report['bpd_per_pass'])}) -> {path}")


def _uncentered(config):
    """The same data settings, but values in [0, 1] (bits_per_dim does the scaling)."""
    config = config.copy_and_resolve_references()
    config.data.centered = False
    config.data.uniform_dequantization = False
    return config


def cmd_ablate(args, overrides):
    import jax

    from scoresde import ablation, analytic, experiment, sde_lib
    from scoresde.samplers import registry

    samplers = [s for s in args.samplers.split(",") if s]
    for s in samplers:
        if s not in registry.SAMPLERS:
            raise SystemExit(f"scoresde: error: unknown sampler {s!r}; valid: {', '.join(registry.SAMPLERS)}")
    nfes = args.nfes
    configs = []
    for s in samplers:
        if args.snrs and "snr" in registry.sampler_options(s):
            configs += [(s, {"snr": v}) for v in args.snrs]
        else:
            configs.append((s, {}))
    key = jax.random.PRNGKey(args.seed)
    if args.target:
        if args.target not in _toy_names():
            raise SystemExit(f"scoresde: error: unknown target {args.target!r}; valid: {', '.join(_toy_names())}")
        target = analytic.toy_target(args.target)
        if not isinstance(target, analytic.GaussianMixture):
            raise SystemExit(
                f"scoresde: error: target {args.target!r} has no exact score; use one of: "
                + ", ".join(n for n in _toy_names() if isinstance(analytic.toy_target(n), analytic.GaussianMixture))
            )
        sde = sde_lib.get_sde(args.sde)
        score_fn, shape = target.score_fn(sde), (args.num or 4096, target.dim)
        quality, metric = ablation.exact_target_quality(target, jax.random.PRNGKey(1)), "fd_modes"
        prefix = args.out or f"ablation_{args.target}"
        title = f"{args.target} ({args.sde}), exact score"
        notes = "Exact score of the target; fd_modes: per-mode Frechet distance to the exact components."
    else:
        config, sde, score_fn, step = experiment.load_score_fn(args.workdir)
        shape = (args.num or 512,) + experiment.data_shape(config)
        if experiment.is_image_data(config):
            quality, metric, notes = _image_quality(config, shape[0])
        else:
            quality, metric, notes = _toy_quality(config.data.dataset.removeprefix("toy:"), shape[0])
        prefix = args.out or os.path.join(args.workdir, "ablation")
        title = f"{config.data.dataset} ({config.training.sde}), step {step}"
    if args.guidance is None:
        rows = ablation.run_grid(key, sde, score_fn, shape, configs, quality, nfes=nfes)
    else:
        if args.target:
            raise SystemExit("scoresde: error: --guidance needs a conditional model (--workdir).")
        cond = argparse.Namespace(label=None, text=None, classifier=None)
        _, labels = _conditioned_score_fn(cond, config, sde, score_fn, shape[0], w=0.0)
        if config.data.dataset == "digits":
            image_quality = quality
            from scoresde.evaluation.digits import digits_accuracy

            quality = lambda x: {**image_quality(x), "accuracy": digits_accuracy(  # noqa: E731
                experiment.to_unit_range(x, config), labels)}
            notes += (" accuracy: fraction of samples the bundled digits classifier (98.3% on real test digits) "
                      "assigns to the requested class.")
        rows = []
        for w in args.guidance:
            guided, _ = _conditioned_score_fn(cond, config, sde, score_fn, shape[0], w=w)
            rows += [{"guidance": w, **row} for row in ablation.run_grid(key, sde, guided, shape, configs, quality, nfes=nfes)]
        title += ", classifier-free guidance"
    if not rows:
        raise experiment.UserError("Every run of the grid was skipped (see the reasons above); "
                                   "change --samplers or --nfes.")
    files = ablation.write_results(rows, prefix, metric, title, notes)
    print(open(prefix + ".md").read())
    print("wrote " + ", ".join(files))


def _toy_quality(name, num):
    """Exact per-mode quality for mixture toys; sliced W2 to fresh exact samples otherwise."""
    import jax

    from scoresde import ablation, analytic

    target = analytic.toy_target(name)
    if isinstance(target, analytic.GaussianMixture):
        return ablation.exact_target_quality(target, jax.random.PRNGKey(1)), "fd_modes", (
            "fd_modes: per-mode Frechet distance to the exact components of the target."
        )
    ref = target.sample(jax.random.PRNGKey(1), num)
    return (lambda x: {"sw": ablation.sliced_wasserstein(jax.random.PRNGKey(2), x, ref)}), "sw", (
        "sw: sliced W2 distance to exact samples of the target (of the same size)."
    )


def _image_quality(config, num):
    """Quality of image samples against held-out data, in a named feature space."""
    import numpy as np

    from scoresde import experiment
    from scoresde.evaluation import feature_spaces

    test = experiment.dataset_from_config(_uncentered(config), "test", 256, shuffle=False, num_epochs=1, drop_remainder=False)
    held_out = np.concatenate([b["image"] for b in test])
    if config.data.dataset == "digits":
        space = "digits_classifier"
        ref = feature_spaces.compute_stats(held_out, space)

        def quality(x):
            images = np.asarray(experiment.to_unit_range(x, config))
            if not np.all(np.isfinite(images)):
                return {"fd_digits": float("inf")}
            return {"fd_digits": feature_spaces.fd_from_stats(feature_spaces.compute_stats(images, space), ref)["fd"]}

        note = ("fd_digits: Frechet distance to the held-out test split in the bundled digits classifier's "
                "64-d feature space (FD-digits; not an FID).")
        return quality, "fd_digits", note
    from scoresde.ablation import sliced_wasserstein
    import jax

    ref = held_out[:num]

    def quality(x):
        images = np.asarray(experiment.to_unit_range(x, config))[: len(ref)]
        return {"sw_pixels": sliced_wasserstein(jax.random.PRNGKey(0), images, ref[: len(images)])}

    note = "sw_pixels: sliced W2 distance in pixel space to held-out test images (an interim, pixel-space metric)."
    return quality, "sw_pixels", note


def cmd_evaluate(args, overrides):
    import jax
    import numpy as np
    from tqdm.auto import tqdm

    from scoresde import experiment
    from scoresde.evaluation import feature_spaces, metrics

    config, sde, score_fn, step = experiment.load_score_fn(args.workdir)
    if not experiment.is_image_data(config):
        raise experiment.UserError("evaluate computes image metrics; this config has 2-D points (use ablate).")
    name, options = _sampler_options(args, config)
    if args.sampler is None:
        options = {**_config_sampler_options(config, name), **options}
    space = "digits_classifier" if config.data.dataset == "digits" else "inception_v3_fid"
    num = args.num or config.eval.num_samples
    chunk = args.chunk or config.eval.batch_size
    chunk = max(chunk - chunk % jax.device_count(), jax.device_count())  # split over the devices
    run_dir = os.path.join(args.workdir, "eval", f"{name}_step{step}")
    os.makedirs(run_dir, exist_ok=True)
    if args.stats:
        try:
            reference = metrics.load_stats(args.stats)
        except (FileNotFoundError, ValueError) as err:  # no file, or not a stats file
            raise experiment.UserError(str(err)) from None
        if reference.feature_space != space:
            raise experiment.UserError(
                f"{args.stats!r} holds {reference.feature_space} statistics; {config.data.dataset} samples are "
                f"compared in {space} (scoresde fid-stats --config <this config> writes those)."
            )
    elif space == "digits_classifier":
        test = experiment.dataset_from_config(_uncentered(config), "test", 256, shuffle=False, num_epochs=1, drop_remainder=False)
        reference = np.concatenate([b["image"] for b in test])
    else:
        raise experiment.UserError(
            "FID needs dataset statistics: run scoresde fid-stats --config <name> --out stats.npz, then pass --stats."
        )
    shape = (chunk,) + experiment.data_shape(config)
    num_chunks = math.ceil(num / chunk)
    # Chunks already on disk are kept: an interrupted evaluation resumes where it stopped.
    for i in tqdm(range(num_chunks), desc="samples"):
        path = os.path.join(run_dir, f"chunk_{i:05d}.npz")
        if os.path.exists(path):
            continue
        x, nfe = _run_sampler(jax.random.fold_in(jax.random.PRNGKey(args.seed), i), sde, score_fn, shape, name, options)
        tmp = path + ".tmp.npz"
        np.savez(tmp, samples=np.asarray(experiment.to_unit_range(x, config)), nfe=nfe)
        os.replace(tmp, path)
    chunks = (np.load(os.path.join(run_dir, f"chunk_{i:05d}.npz"))["samples"] for i in range(num_chunks))
    samples = np.concatenate(list(chunks))[:num]
    result = feature_spaces.evaluate(samples, reference, space, weights=args.weights)
    result.update(sampler=name, options=options, num_samples=int(len(samples)), step=step)
    path = _write_json(os.path.join(run_dir, "report.json"), _jsonable(result))
    print(json.dumps(_jsonable(result), indent=2))
    print("wrote", path)


def _jsonable(obj):
    import numpy as np

    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None  # JSON has no NaN or infinity
    return obj


def cmd_fid_stats(args, overrides):
    from scoresde import experiment
    from scoresde.evaluation import feature_spaces, metrics

    config = _apply_overrides(_get_config(args.config), overrides)
    space = "digits_classifier" if config.data.dataset == "digits" else "inception_v3_fid"
    data = experiment.dataset_from_config(_uncentered(config), args.split, config.eval.batch_size, shuffle=False,
                                          num_epochs=1, drop_remainder=False)
    stats = feature_spaces.compute_stats((b["image"] for b in data), space, weights=args.weights)
    metrics.save_stats(args.out, stats)
    print(f"{space} statistics of {config.data.dataset}/{args.split} ({stats.count} images) -> {args.out}")


def cmd_configs(args, overrides):
    from scoresde import configs

    print("\n".join(configs.list_configs()))


COMMANDS = {
    "train": cmd_train,
    "sample": cmd_sample,
    "likelihood": cmd_likelihood,
    "ablate": cmd_ablate,
    "evaluate": cmd_evaluate,
    "fid-stats": cmd_fid_stats,
    "configs": cmd_configs,
}


def main(argv=None):
    import logging

    logging.getLogger("absl").setLevel(logging.ERROR)  # orbax's read-only notices
    from scoresde.experiment import UserError

    overrides, rest = _split_overrides(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(rest)
    if overrides and args.command not in ("train", "fid-stats"):
        raise SystemExit(f"scoresde: error: config overrides apply to train and fid-stats only, got {overrides[0]!r}")
    try:
        COMMANDS[args.command](args, overrides)
    except UserError as err:
        # User mistakes (bad configs and overrides too: their ValueErrors are converted where
        # they are made); any other exception is a bug and keeps its traceback.
        raise SystemExit(f"scoresde: error: {err}") from None
    except KeyboardInterrupt:
        raise SystemExit("scoresde: interrupted") from None


if __name__ == "__main__":
    main()
