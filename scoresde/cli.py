"""The `scoresde` command line: train, sample, likelihood, ablate, evaluate, fid-stats, configs.

    scoresde train --config digits_vp --workdir runs/digits [--config.training.n_iters=2000]
    scoresde train --config digits_ae --workdir runs/digits_ae         # an autoencoder (latent diffusion)
    scoresde train --config digits_ldm --workdir runs/ldm --config.data.autoencoder=runs/digits_ae
    scoresde sample --workdir runs/digits [--sampler pc --steps 500 --snr 0.16 --num 64]
    scoresde sample --workdir runs/digits --upsample low.png [--impute-method tmpd --sigma-y 0.02]
    scoresde sample --workdir runs/digits_sr --upsample low.png | --base-workdir runs/digits4
    scoresde sample --workdir runs/text --condition-file emb.npz --guidance 2
    scoresde likelihood --workdir runs/digits --split test [--passes 5]
    scoresde ablate --workdir runs/digits | --target 8gaussians [--samplers ... --nfes ...]
    scoresde evaluate --workdir runs/digits [--num 2000 --sampler dpm_solver++]   # an autoencoder: reconstructions
    scoresde fid-stats --config vp/cifar10_ddpmpp_continuous --out stats.npz
    scoresde configs

Each command parses its arguments, makes one or two library calls and prints: the same
calls work from Python (`experiment.train_workdir`, `experiment.sample_workdir`,
`experiment.likelihood_report`, `ablation.ablate_workdir` / `ablate_target`,
`evaluation.evaluate_workdir`, `evaluation.dataset_stats`).

On Linux with jemalloc installed (`apt install libjemalloc2`), every command but `configs`
first re-runs itself once under it (`rerun_with_jemalloc`: XLA:CPU's temporaries are then
reused instead of page-faulted in afresh at every step); `LD_PRELOAD=` keeps glibc's malloc.

Every mistake a user can make (a missing workdir or checkpoint, a data set that is
not prepared, a bad override, an unknown sampler) ends with a one-line cause and fix.
"""

from __future__ import annotations

import argparse
import errno
import json
import math
import os
import shlex
import signal
import sys

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


def _real(minimum: float = 0.0, strict: bool = False):
    """An argparse type: a finite number >= minimum (> minimum if strict)."""
    bound = f"{'>' if strict else '>='} {minimum:g}"

    def parse(text):
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and (value > minimum if strict else value >= minimum)):
            raise argparse.ArgumentTypeError(f"expected a finite number {bound}, got {text!r}")
        return value

    return parse


def _seed(text):
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"expected an integer seed in [0, 2**32), got {text!r}")
    return value


def _comma_separated(kind, what: str):
    """An argparse type: a comma-separated list of `kind` values (positive ones for int)."""

    def parse(text):
        try:
            values = [kind(v.strip()) for v in text.split(",") if v.strip()]
        except ValueError:
            values = None
        if kind is float and values and not all(math.isfinite(v) and v >= 0 for v in values):
            values = None
        if not values or (kind is int and min(values) < 1):
            raise argparse.ArgumentTypeError(f"expected comma-separated {what}, e.g. {_EXAMPLES[what]}; got {text!r}")
        return values

    return parse


_EXAMPLES = {"positive integers": "10,20,50", "numbers >= 0": "0.1,0.16", "sampler names": "ddim,dpm_solver++"}
# likelihood / fid-stats splits (data.get_dataset: CelebA and LSUN read "validation" for "test").
SPLITS = ("train", "test", "eval", "validation")
# scoresde.likelihood.DIVERGENCES (not imported here: the parser stays quick; a test compares them).
DIVERGENCES = ("rademacher", "gaussian", "exact")
# The adaptive ones of scoresde.samplers.ode.METHODS, its TIME_VARIABLES and ERROR_NORMS, likewise.
ADAPTIVE_METHODS = ("tsit5", "dopri5", "bosh3", "dopri8")
# scoresde.likelihood.EXPONENTIAL_METHODS: fixed-step exponential integrators in log-SNR.
EXPONENTIAL_METHODS = ("dpm_solver_2m", "dpm_solver_3m")
TIME_VARIABLES = ("t", "log_snr", "sigma")
ERROR_NORMS = ("max", "rms")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="scoresde", description="Score-based generative modelling with SDEs, on JAX.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("train", help="train (or resume) a score model, a classifier or an autoencoder")
    p.add_argument("--config", help="config name (scoresde configs), or a .py file defining get_config(), which is "
                   "executed as Python: only trusted files (omit to resume a workdir)")
    p.add_argument("--workdir", required=True)

    def sampling_args(p):
        p.add_argument("--sampler", default=None, help="sampler name (default: the config's sampling.method)")
        p.add_argument("--steps", type=_positive_int(" (the sampler's num_steps)"), default=None,
                       help="num_steps of the sampler")
        p.add_argument("--snr", type=_real(), default=None, help="Langevin signal-to-noise ratio (pc)")
        p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="other sampler options")
        p.add_argument("--seed", type=_seed, default=0)

    def conditioning_args(p):
        p.add_argument("--label", default=None,
                       help="class label(s), comma-separated, cycled over the samples (default: every class in turn)")
        p.add_argument("--text", default=None, help="a word to spell, for spelling-conditioned models (e.g. seven)")
        p.add_argument("--condition-file", default=None, metavar="EMB_NPZ",
                       help="text embeddings for text-embedding models: an .npz with text_embeddings (n, L, E) and "
                       "optionally text_mask (n, L), cycled over the samples (a column per embedding)")
        p.add_argument("--guidance", type=_real(), default=0.0,
                       help="classifier-free guidance weight w: (1 + w) s(x, t, y) - w s(x, t)")
        p.add_argument("--classifier", default=None,
                       help="workdir of a noise-conditional classifier: guide an unconditional model with it")
        p.add_argument("--classifier-scale", type=_real(), default=1.0,
                       help="classifier guidance scale gamma: s + gamma grad log p_t(y | x) (1 samples p(x | y))")

    p = sub.add_parser("sample", help="sample a trained model: .npz and a PNG grid")
    p.add_argument("--workdir", required=True)
    p.add_argument("--num", type=_positive_int(), default=64)
    p.add_argument("--out", default=None, help="output prefix (default: <workdir>/samples/<sampler>)")
    p.add_argument("--image", default=None, help="PNG to inpaint or colorize (with --inpaint / --colorize)")
    p.add_argument("--inpaint", default=None, metavar="MASK_PNG",
                   help="inpaint --image: white pixels of the mask are kept, black ones generated")
    p.add_argument("--colorize", action="store_true", help="colorize the grey levels of --image")
    p.add_argument("--upsample", default=None, metavar="LOW_PNG",
                   help="super-resolve a low-resolution PNG: with a super-resolution model (training.condition="
                   "low_res) of its size times model.sr_factor; with an unconditional one, of any size dividing the "
                   "model's (an inverse problem: average pooling); grid of input (nearest) | output")
    p.add_argument("--base-workdir", default=None, metavar="BASE",
                   help="a cascade: sample --num low-resolution images from the model in BASE (with --label etc.), "
                   "then super-resolve them with the super-resolution model of --workdir")
    p.add_argument("--sigma-y", type=_real(), default=0.0,
                   help="noise std of the --upsample pixels, in [0, 1] units (default 0: exact)")
    p.add_argument("--impute-method", default="replace", help="replace (the reference's) or tmpd")
    sampling_args(p)
    conditioning_args(p)

    p = sub.add_parser("likelihood", help="bits/dim over a data split through the probability-flow ODE")
    p.add_argument("--workdir", required=True)
    p.add_argument("--split", default=None, choices=SPLITS, help="default: the config's eval.bpd_dataset")
    p.add_argument("--passes", type=_positive_int(), default=5, help="dequantization passes (the reference used 5)")
    p.add_argument("--batch", type=_positive_int(), default=None, help="default: eval.batch_size")
    p.add_argument("--limit", type=_positive_int(), default=None, help="use only the first N examples")
    p.add_argument("--divergence", default="rademacher", choices=DIVERGENCES,
                   help="Hutchinson probes (rademacher, gaussian) or the exact trace")
    p.add_argument("--method", default=None, choices=ADAPTIVE_METHODS + EXPONENTIAL_METHODS,
                   help="a fixed-step exponential integrator in log-SNR (default dpm_solver_3m, 256 steps), or an "
                        "adaptive Runge-Kutta pair (with --rtol, --atol)")
    p.add_argument("--steps", type=_positive_int(" (the steps of a fixed-step --method)"), default=None,
                   help="steps of dpm_solver_2m / dpm_solver_3m (NFE = steps + 1; default 256)")
    p.add_argument("--rtol", type=_real(strict=True), default=None,
                   help="an adaptive --method's tolerances (default: the reference's 1e-5)")
    p.add_argument("--atol", type=_real(strict=True), default=None)
    p.add_argument("--time-variable", default=None, choices=TIME_VARIABLES,
                   help="an adaptive --method's variable: t, sigma = sigma(t)/s(t) (default), or log sigma")
    p.add_argument("--error-norm", default=None, choices=ERROR_NORMS,
                   help="an adaptive --method's norm: max (default) binds every example's log p; rms: the "
                        "reference's norm over the whole state")
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--out", default=None, help="report .json (default: <workdir>/eval/bpd_<split>_step<step>.json)")

    p = sub.add_parser("ablate", help="samplers x NFE (x snr) grid: CSV, markdown table, PNG plot")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--workdir")
    src.add_argument("--target", help="an analytic target: " + ", ".join(_toy_names()))
    p.add_argument("--samplers", type=_comma_separated(str, "sampler names"), default=None,
                   help="comma-separated sampler names (default: euler_maruyama,ddim,edm_heun,dpm_solver++,dpm_solver)")
    p.add_argument("--nfes", type=_comma_separated(int, "positive integers"), default=None,
                   help="comma-separated NFE budgets (default: 10,20,50,100)")
    p.add_argument("--snrs", type=_comma_separated(float, "numbers >= 0"), default=None,
                   help="comma-separated snr values, swept for pc samplers")
    p.add_argument("--num", type=_positive_int(), default=None, help="samples per run (default: 4096 with --target, else 512)")
    p.add_argument("--sde", default="vpsde", help="with --target: vpsde, subvpsde, vesde, cosinevpsde, rectified_flow, edm")
    p.add_argument("--out", default=None, help="output prefix (default: <workdir>/ablation or ./ablation_<target>)")
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--guidance", type=_comma_separated(float, "numbers >= 0"), default=None,
                   help="comma-separated classifier-free guidance weights w to sweep (conditional models)")
    p.add_argument("--learn-timesteps", type=_positive_int(" (calibration latents)"), default=None, metavar="B",
                   help="also run samplers with a timesteps option on grids fitted to the score (LD3) from B "
                   "calibration latents; the grids are in the CSV")

    p = sub.add_parser("evaluate", help="FID/KID/IS (or FD-digits) of N samples, resumes; an autoencoder's "
                       "reconstruction error on the test split")
    p.add_argument("--workdir", required=True)
    p.add_argument("--num", type=_positive_int(), default=None, help="number of samples (default: eval.num_samples)")
    p.add_argument("--chunk", type=_positive_int(), default=None, help="samples per chunk (default: eval.batch_size)")
    p.add_argument("--stats", default=None, help="dataset statistics .npz from fid-stats")
    p.add_argument("--weights", default=None, help="FID Inception weights .npz")
    p.add_argument("--out", default=None, help="folder for the sample chunks and report.json (default: <workdir>/eval)")
    sampling_args(p)

    p = sub.add_parser("fid-stats", help="precompute a data set's feature statistics")
    p.add_argument("--config", required=True, help="config name, or a trusted .py file (executed)")
    p.add_argument("--split", default="train", choices=SPLITS)
    p.add_argument("--out", required=True)
    p.add_argument("--weights", default=None, help="FID Inception weights .npz")

    sub.add_parser("configs", help="list the config names")
    return parser


def _toy_names():
    from scoresde.analytic import TOY_TARGETS

    return list(TOY_TARGETS)


# ----------------------------------------------------------------------------- parsing


def _split_overrides(argv):
    overrides, rest = [], []
    for arg in argv:
        if arg.startswith(OVERRIDE_PREFIX):
            overrides.append(arg[len(OVERRIDE_PREFIX) :])
        else:
            rest.append(arg)
    return overrides, rest


def _sampler_options(args) -> dict:
    """The sampler options of --steps/--snr/--option KEY=VALUE (the library checks them)."""
    options = {}
    if args.steps is not None:
        options["num_steps"] = args.steps
    if args.snr is not None:
        options["snr"] = args.snr
    for item in args.option:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"scoresde: error: --option takes KEY=VALUE, got {item!r}")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def _labels(text):
    """--label: comma-separated class labels, or None."""
    from scoresde.experiment import UserError

    if text is None:
        return None
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise UserError(f"--label takes comma-separated integers, got {text!r}.") from None


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

    from scoresde import experiment

    signals = _SignalRecorder()
    try:
        state, stopped = experiment.train_workdir(args.workdir, args.config, overrides)
    finally:
        received = signals.close()
    if stopped:  # on request (SIGINT / SIGTERM), with a checkpoint
        if jax.process_index() == 0:
            print(f"Stopped at step {int(state.step)}; resume with: scoresde train --workdir {shlex.quote(args.workdir)}",
                  file=sys.stderr, flush=True)
        stop = [s for s in received if s in (signal.SIGINT, signal.SIGTERM)]
        # The shell's convention for a death by a signal, though this is an orderly stop.
        raise SystemExit(128 + stop[0] if stop else 1)


def cmd_sample(args, overrides):
    from scoresde import experiment
    from scoresde.workdir import check_writable

    if args.upsample and (args.image or args.inpaint or args.colorize):
        raise experiment.UserError("--upsample takes the low-resolution image itself; leave out --image, --inpaint "
                                   "and --colorize.")
    if args.sigma_y and not args.upsample:
        raise experiment.UserError("--sigma-y is the noise of the --upsample image; add --upsample <png>.")
    if args.image and not (args.inpaint or args.colorize):
        raise experiment.UserError("--image is the input of --inpaint or --colorize; add one of them.")
    if (args.inpaint or args.colorize) and args.image is None:
        raise experiment.UserError("--inpaint and --colorize need --image <png>.")
    experiment.load_config(args.workdir)  # a missing workdir is reported as such, and not created
    check_writable(os.path.dirname(os.path.abspath(args.out)) if args.out else os.path.join(args.workdir, "samples"))
    result = experiment.sample_workdir(
        args.workdir, args.num, sampler=args.sampler, options=_sampler_options(args), seed=args.seed,
        labels=_labels(args.label), text=args.text, condition=args.condition_file, guidance=args.guidance,
        classifier=args.classifier,
        classifier_scale=args.classifier_scale, image=args.image, mask=args.inpaint, colorize=args.colorize,
        upsample=args.upsample, sigma_y=args.sigma_y, impute_method=args.impute_method,
        base_workdir=args.base_workdir,
    )
    prefix = args.out or os.path.join(args.workdir, "samples", f"{result.task or result.sampler}_step{result.step}")
    png = experiment.save_samples(result, prefix)
    done = {"inpaint": "inpainted ", "colorize": "colorized ", "upsample": "upsampled ", "cascade": "cascaded ",
            "": ""}[result.task]
    print(f"{args.num} {done}samples ({result.sampler}, NFE {result.nfe}, {result.wall_s:.1f} s) -> {prefix}.npz, {png}")
    if result.accuracy is not None:
        print(f"accuracy of the bundled digits classifier on the requested labels: {result.accuracy:.3f}")


def cmd_likelihood(args, overrides):
    from scoresde import experiment

    report, path = experiment.likelihood_report(
        args.workdir, args.split, passes=args.passes, batch=args.batch, limit=args.limit,
        divergence=args.divergence, rtol=args.rtol, atol=args.atol, method=args.method, num_steps=args.steps,
        time_variable=args.time_variable, error_norm=args.error_norm, seed=args.seed, out=args.out,
    )
    spread = report["bpd_stderr"]
    spread = f" ± {spread:.4f}" if math.isfinite(spread) else " (one example: no standard error)"
    print(f"{report['split']} bits/dim: {report['bpd']:.4f}{spread} "
          f"(passes: {', '.join(f'{v:.4f}' for v in report['bpd_per_pass'])}) -> {path}")


def cmd_ablate(args, overrides):
    from scoresde import ablation
    from scoresde.workdir import check_writable, load_config

    grid = (args.samplers or ablation.DEFAULT_SAMPLERS, args.nfes or ablation.DEFAULT_NFES)
    if args.target and args.guidance is not None:
        raise SystemExit("scoresde: error: --guidance needs a conditional model (--workdir).")
    prefix = args.out or (f"ablation_{args.target}" if args.target else os.path.join(args.workdir, "ablation"))
    if args.workdir:
        load_config(args.workdir)  # a missing workdir is reported as such, and not created
    check_writable(os.path.dirname(os.path.abspath(prefix)))
    if args.target:
        result = ablation.ablate_target(args.target, *grid, snrs=args.snrs, sde=args.sde, num=args.num,
                                        seed=args.seed, learn_timesteps=args.learn_timesteps)
    else:
        result = ablation.ablate_workdir(args.workdir, *grid, snrs=args.snrs, num=args.num, seed=args.seed,
                                         guidance=args.guidance, learn_timesteps=args.learn_timesteps)
    files = ablation.write_results(result.rows, prefix, result.metric, result.title, result.notes)
    print(open(prefix + ".md").read())
    print("wrote " + ", ".join(files))


def cmd_evaluate(args, overrides):
    from scoresde.evaluation import evaluate_workdir

    result, path = evaluate_workdir(
        args.workdir, args.num, chunk=args.chunk, sampler=args.sampler, options=_sampler_options(args),
        seed=args.seed, stats=args.stats, weights=args.weights, out=args.out,
    )
    print(json.dumps(result, indent=2))
    print("wrote", path)


def cmd_fid_stats(args, overrides):
    from scoresde import experiment
    from scoresde.evaluation import dataset_stats, metrics

    config = experiment.get_config(args.config, overrides)
    stats = dataset_stats(config, args.split, weights=args.weights)
    metrics.save_stats(args.out, stats)
    print(f"{stats.feature_space} statistics of {config.data.dataset}/{args.split} ({stats.count} images) -> {args.out}")


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


# glibc's malloc maps blocks of 32 MiB and more from the kernel and unmaps them when freed.
# XLA:CPU allocates each call's temporaries afresh (one block of about 535 MiB for a DDPM++
# train step at nf 32, batch 16), so under glibc every step faults all of it in again, 4 KiB
# at a time: about 137,000 page faults per step. jemalloc, told to keep what is freed,
# reuses it (experiments/results/bench_train_vs_reference.md).
JEMALLOC_PATHS = ("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2", "/usr/lib/aarch64-linux-gnu/libjemalloc.so.2",
                  "/usr/lib64/libjemalloc.so.2", "/usr/local/lib/libjemalloc.so.2")
JEMALLOC_CONF = "dirty_decay_ms:-1,muzzy_decay_ms:-1"  # never hand freed pages back to the kernel


def jemalloc_env(environ, candidates=None) -> dict | None:
    """The environment to run this command in with jemalloc (`LD_PRELOAD`, and `MALLOC_CONF`
    unless set) from the first existing path of `candidates` (default `JEMALLOC_PATHS`); None
    where there is none or `LD_PRELOAD` is set already (by this re-run, or by the user:
    `LD_PRELOAD=` keeps glibc)."""
    candidates = JEMALLOC_PATHS if candidates is None else candidates
    library = next((path for path in candidates if os.path.isfile(path)), None)
    if library is None or "LD_PRELOAD" in environ:
        return None
    return {"MALLOC_CONF": JEMALLOC_CONF, **environ, "LD_PRELOAD": library}


def rerun_with_jemalloc(candidates=None):
    """Re-execute this process's command line (the same pid, arguments and streams) under
    `jemalloc_env`, if that changes anything (Linux only; not for a program read from stdin,
    which is used up); returns otherwise, also if the re-execution fails. An allocator is
    chosen when a process starts, so it cannot be swapped from within: only the command
    line's entry points (`run`, `python -m scoresde`) call this, never `main` itself."""
    if not sys.platform.startswith("linux") or not sys.executable or sys.orig_argv[1:2] == ["-"]:
        return
    env = jemalloc_env(os.environ, candidates)
    if env is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
        except OSError:
            return  # carry on under this process's allocator


# The machine's state, not a bug: a full disk, a read-only or forbidden path.
_ENVIRONMENT_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


def main(argv=None, rerun_under_jemalloc: bool = False):
    """Run one command (`argv`, default sys.argv[1:]); `rerun_under_jemalloc` (the entry
    points' choice) first re-runs the process under jemalloc, see `rerun_with_jemalloc`."""
    import logging

    logging.getLogger("absl").setLevel(logging.ERROR)  # orbax's read-only notices
    overrides, rest = _split_overrides(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(rest)
    if overrides and args.command not in ("train", "fid-stats"):
        raise SystemExit(f"scoresde: error: config overrides apply to train and fid-stats only, got {overrides[0]!r}")
    if rerun_under_jemalloc and args.command != "configs":  # about to compute
        rerun_with_jemalloc()
    from scoresde.experiment import UserError
    try:
        COMMANDS[args.command](args, overrides)
    except UserError as err:
        # User mistakes (bad configs and overrides too: their ValueErrors are converted where
        # they are made); any other exception is a bug and keeps its traceback.
        raise SystemExit(f"scoresde: error: {err}") from None
    except OSError as err:
        if err.errno not in _ENVIRONMENT_ERRNOS:
            raise
        where = f" ({err.filename})" if err.filename else ""
        raise SystemExit(f"scoresde: error: {err.strerror}{where}; files written before it are whole "
                         "(every write is atomic).") from None
    except KeyboardInterrupt:
        raise SystemExit("scoresde: interrupted") from None


def run():
    """The `scoresde` program: `main` on sys.argv, under jemalloc where installed."""
    main(rerun_under_jemalloc=True)


if __name__ == "__main__":
    run()
