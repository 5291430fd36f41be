"""From an experiment config to the toolkit's objects, and from a workdir back to them.

This is the edge where configs live: the core functions (sde_lib, models, losses,
train, samplers, likelihood) take explicit arguments, and this module reads the
`ml_collections` config (the reference's layout) to build them.

A workdir holds `config.json` (the resolved config the run was started with),
`checkpoints/` and `checkpoints-meta/`, `metrics.jsonl`, `tensorboard/`, `samples/`.

A latent config (`data.autoencoder`, `scoresde.latent`) trains on an autoencoder's latents:
`data_shape` is the latent shape and `to_unit_range`, where samples become images, decodes.

What the `scoresde` commands do is here as one call each, with explicit arguments:
`train_workdir`, `sample_workdir` (conditioning, guidance, inpainting, colorization, super-resolution;
conditional super-resolution models and cascades through `upsample_workdir`) with `save_samples`, `likelihood_report`; `ablation.ablate_workdir` / `ablate_target`
and `evaluation.evaluate_workdir` / `dataset_stats` are the others.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from scoresde import data, losses, models, sde_lib
from scoresde import workdir as workdir_lib
from scoresde.errors import UserError
from scoresde.models.registry import model_kwargs
from scoresde.score import SIGMA_DATA
from scoresde.workdir import config_path, load_config, save_config


# ----------------------------------------------------------------------------- config -> objects


def sde_from_config(config) -> sde_lib.SDE | None:
    """training.sde with the model's noise parameters and N = model.num_scales (None for an
    autoencoder, which has no SDE)."""
    if config.training.get("objective", "score") == "autoencoder":
        return None
    name, m = config.training.sde.lower(), config.model
    try:  # the SDEs check their parameters (beta_min < beta_max, N >= 1, ...)
        if name in ("vpsde", "subvpsde"):
            return sde_lib.get_sde(name, beta_min=m.beta_min, beta_max=m.beta_max, N=m.num_scales)
        if name == "vesde":
            return sde_lib.VESDE(sigma_min=m.sigma_min, sigma_max=m.sigma_max, N=m.num_scales)
        if name == "cosinevpsde":
            return sde_lib.CosineVPSDE(N=m.num_scales)
        if name == "rectified_flow":
            return sde_lib.RectifiedFlow(N=m.num_scales)
        if name == "edm":  # sigma(t) = t on [0, sigma_max], sampled down to sigma_min
            return sde_lib.EDMPath(sigma_min=m.sigma_min, sigma_max=m.sigma_max, N=m.num_scales)
    except ValueError as err:
        raise UserError(f"config.model ({config.training.sde}): {err}") from None
    raise UserError(f"Unknown training.sde {config.training.sde!r}; valid: {', '.join(sde_lib.SDES)}.")


def _tuplify(value):
    return tuple(_tuplify(v) for v in value) if isinstance(value, (list, tuple)) else value


def model_from_config(config):
    """The registered network `model.name`, its fields filled from config.model, then config.data."""
    name = config.model.name
    if name not in models.model_names():
        raise UserError(f"Unknown model.name {name!r}; valid: {', '.join(models.model_names())}.")
    kwargs = model_kwargs(name, config.data, config.model)  # model settings win over data's
    return models.get_model(name, **{k: _tuplify(v) for k, v in kwargs.items()})


def dataset_from_config(config, split: str, batch_size: int | None = None, *, unit_range: bool = False, **kwargs):
    """`data.get_dataset` with the config's data settings. A missing data set is a UserError.

    unit_range: images as they are, in [0, 1]: not centered, not dequantized, not flipped
    (what bits/dim and the sample-quality metrics read, as the reference's evaluation)."""
    d = config.data
    try:
        return data.get_dataset(
            d.dataset,
            split,
            batch_size or config.training.batch_size,
            image_size=d.get("image_size"),
            centered=d.get("centered", False) and not unit_range,
            random_flip=d.get("random_flip") if split == "train" and not unit_range else False,
            uniform_dequantization=d.get("uniform_dequantization", False) and not unit_range,
            num_channels=None if d.get("dim") else d.get("num_channels"),  # image folders convert
            seed=config.seed,
            **kwargs,
        )
    except (data.DatasetNotPreparedError, FileNotFoundError) as err:
        hint = (" A text-embedding model reads an .npz or image folder holding text embeddings (for the digits, "
                "python experiments/text_digits.py writes one)." if d.dataset.endswith(".npz")
                and config.training.get("condition") == "text_embedding" else "")
        raise UserError(str(err) + hint) from err
    except ValueError as err:  # get_dataset's checks of the name, split, batch size and files
        raise UserError(str(err)) from None


def data_shape(config) -> tuple[int, ...]:
    """The shape of one example the model sees: (image_size, image_size, num_channels), (dim,)
    for 2-D toys, or a latent model's latent shape (`latent.latent_shape`)."""
    from scoresde import latent

    d = config.data
    if "dim" in d and d.dim:
        return (d.dim,)
    if latent.is_latent(config):
        return latent.latent_shape(config)
    return (d.image_size, d.image_size, d.num_channels)


def is_image_data(config) -> bool:
    return len(data_shape(config)) == 3


def condition_kind(config) -> str:
    """training.condition ('none', 'class', 'spelling', 'text_embedding' or 'low_res'), checked
    against the objective and, for text embeddings, the network (UserError)."""
    kind = config.training.get("condition", "none")
    if kind == "none":
        return kind
    if config.training.get("objective", "score") != "score":
        raise UserError("training.condition applies to score models; a classifier reads the labels already.")
    if kind == "text_embedding" and not config.model.get("context_embedding_dim", 0):
        raise UserError("training.condition='text_embedding' needs cross-attention on embeddings: set "
                        "--config.model.context_embedding_dim=E, the width of the stored text embeddings.")
    return kind


def condition_table(config):
    """What a label-conditional model reads for each class label: `(num_classes,)` labels for
    training.condition='class', `(num_classes, L)` tokens of the class names for 'spelling';
    None for an unconditional model and for one conditioned on text embeddings (they come
    with the data, not from labels). Checks that the network can read it."""
    kind, m = condition_kind(config), config.model
    if kind in ("none", "text_embedding", "low_res"):
        return None
    try:
        names = data.label_names(config.data.dataset)
    except ValueError as err:
        raise UserError(f"training.condition={kind!r} needs class labels: {err}") from None
    if kind == "class":
        if m.get("num_classes", 0) != len(names):
            raise UserError(
                f"training.condition='class' needs model.num_classes={len(names)} ({config.data.dataset} has "
                f"{len(names)} classes); set --config.model.num_classes={len(names)}."
            )
        return jnp.arange(len(names), dtype=jnp.int32)
    if kind == "spelling":
        if m.get("context_vocab_size", 0) < data.SPELLING_VOCAB_SIZE:
            raise UserError(
                "training.condition='spelling' needs cross-attention on characters: set "
                f"--config.model.context_vocab_size={data.SPELLING_VOCAB_SIZE}."
            )
        try:
            return jnp.asarray(data.spell(names, m.context_length))
        except ValueError as err:
            raise UserError(f"{err} Raise model.context_length.") from None
    raise UserError(f"Unknown training.condition {kind!r}; valid: none, class, spelling, text_embedding, low_res.")


def low_res_from_config(config):
    """The low-resolution condition of a super-resolution config (training.condition='low_res'):
    a `conditioning.LowResolution` with factor model.sr_factor and noise augmentation
    data.sr_noise_aug (a std in [0, 1] pixel units, as --sigma-y; doubled for centered data);
    None for other configs. Checks that the settings agree and the network can take it."""
    from scoresde.conditioning import LowResolution

    kind, m = condition_kind(config), config.model
    factor, noise = m.get("sr_factor", 0), config.data.get("sr_noise_aug", 0.0)
    if kind != "low_res":
        if factor:
            raise UserError(f"model.sr_factor={factor} makes a super-resolution network: set "
                            "--config.training.condition=low_res (or model.sr_factor=0).")
        return None
    if not is_image_data(config):
        raise UserError("training.condition='low_res' (super-resolution) needs image data; this config has 2-D points.")
    if m.name not in models.model_names() or "sr_factor" not in models.model_fields(m.name):
        raise UserError(f"training.condition='low_res' needs a network that reads a low-resolution image "
                        f"(ncsnpp, ddpmpp); the {m.name!r} network does not.")
    size = config.data.image_size
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1 or size % factor:
        raise UserError(f"training.condition='low_res' needs model.sr_factor, an integer >= 1 dividing "
                        f"data.image_size={size}; got {factor!r}.")
    if isinstance(noise, bool) or not (isinstance(noise, (int, float)) and math.isfinite(noise) and 0 <= noise <= 1):
        raise UserError(f"data.sr_noise_aug (the std of the low-resolution images' noise augmentation, in [0, 1] "
                        f"pixel units) must be a number in [0, 1], got {noise!r}.")
    return LowResolution(factor, float(noise) * (2.0 if config.data.get("centered", False) else 1.0))


def condition_from_labels(config, labels):
    """The model's condition for class labels `(B,)` (see `condition_table`)."""
    table = condition_table(config)
    if table is None:
        if condition_kind(config) == "text_embedding":
            raise UserError(f"This model is conditioned on text embeddings; it takes no labels. {_TEXT_HINT}")
        raise UserError("This model is unconditional (training.condition='none'); it takes no labels.")
    labels = jnp.asarray(labels, jnp.int32)
    if labels.min() < 0 or labels.max() >= len(table):
        raise UserError(f"Class labels must lie in [0, {len(table)}), got {labels.min()}..{labels.max()}.")
    return table[labels]


def sampler_from_config(config) -> tuple[str, dict]:
    """The config's sampler, `sampling.method` (any name of `samplers.registry`), and the
    sampling.* settings that apply to it: the predictor, corrector, snr and corrector
    steps of "pc", and the final denoising step of the PC family."""
    name, s = config.sampling.method, config.sampling
    if name == "pc":
        return name, {"predictor": s.predictor, "corrector": s.corrector, "snr": s.snr, "n_steps": s.n_steps_each,
                      "denoise": s.noise_removal}
    if name in ("euler_maruyama", "reverse_diffusion", "ancestral"):
        return name, {"denoise": s.noise_removal}
    return name, {}


def resolve_sampler(config, sampler: str | None = None, options: dict | None = None) -> tuple[str, dict]:
    """The sampler to sample a config's model with and its options: `sampler` (default: the
    config's, with the config's settings for it, `sampler_from_config`) with `options` over
    them, checked by `registry.check_options` (a UserError if wrong)."""
    from scoresde.samplers import registry

    name, defaults = sampler_from_config(config) if sampler is None else (sampler, {})
    options = {**defaults, **(options or {})}
    try:
        registry.check_options(name, options)
    except ValueError as err:
        raise UserError(str(err)) from None
    return name, options


def run_sampler(key, sde, score, shape, sampler: str, options: dict):
    """`registry.sample`; its ValueErrors (settings the sampler cannot run), an adaptive
    solver's step limit and non-finite samples are UserErrors, so that nothing non-finite is
    ever written."""
    from scoresde.samplers import registry

    return _checked_samples(lambda: registry.sample(key, sde, score, shape, sampler, **options), sampler, options)


def run_upsampler(key, sde, score, low, low_res, sampler: str, options: dict):
    """`samplers.cascade.upsample` of low-resolution images low (the model's data space) with a
    super-resolution score model, its errors and non-finite samples UserErrors as `run_sampler`'s."""
    from scoresde.samplers import cascade

    return _checked_samples(lambda: cascade.upsample(key, sde, score, low, low_res, sampler, **options), sampler,
                            options)


def _checked_samples(draw, sampler: str, options: dict):
    """(x, nfe) of `draw()`, with its errors and non-finite samples as UserErrors."""
    from scoresde.samplers.adaptive_sde import SDESolveError
    from scoresde.samplers.ode import ODESolveError

    try:
        x, nfe = draw()
    except (ValueError, ODESolveError, SDESolveError) as err:  # settings, or an adaptive solve's step limit
        raise UserError(str(err)) from err
    bad = int(jnp.sum(~jnp.isfinite(x)))
    if bad:
        raise UserError(f"{sampler} {options} produced {bad} non-finite values in {x.size}: the model or the "
                        "sampler's settings broke down; nothing was written.")
    return x, nfe


def class_labels(num_classes: int, num: int, labels=None) -> np.ndarray:
    """`(num,)` class labels: `labels` cycled, or every class in turn; checked against num_classes."""
    if labels is None:
        return np.arange(num) % num_classes
    given = np.asarray(labels, np.int32).ravel()
    if given.size == 0 or given.min() < 0 or given.max() >= num_classes:
        raise UserError(f"Class labels (--label) must lie in [0, {num_classes}), got {given.tolist()}.")
    return np.resize(given, num)


_TEXT_HINT = ("Pass them as an .npz with 'text_embeddings' (n, L, E) and optionally 'text_mask' (n, L): "
              "--condition-file (Python: condition=).")


def load_condition(source, dim: int, num: int | None = None) -> np.ndarray:
    """Text embeddings to sample a text-embedding model with: `(n, L, E)` float32, padding
    folded in (`conditioning.embedding_condition`), cycled over `num` samples if given.

    source: an .npz file holding `text_embeddings` (n, L, E) and optionally `text_mask`
    (n, L), as a data set stores them; an array (n, L, E) or (L, E); or a pair (embeddings,
    mask). E must be the model's context_embedding_dim `dim`. An all-zero row is the null
    condition. Mistakes are UserErrors.
    """
    from scoresde.conditioning import embedding_condition

    try:
        if isinstance(source, (str, os.PathLike)):
            if not os.path.isfile(source):
                raise UserError(f"No condition file {str(source)!r}.")
            try:
                f = np.load(source, allow_pickle=False)
            except (OSError, ValueError) as err:
                raise UserError(f"{str(source)!r} is not an .npz file that can be read "
                                f"({type(err).__name__}).") from None
            if not hasattr(f, "files"):
                raise UserError(f"{str(source)!r} holds one array; an .npz of named arrays is needed. {_TEXT_HINT}")
            with f:
                y = data.read_text_embeddings(f, str(source))
            if y is None:
                raise UserError(f"{str(source)!r} holds no '{data.TEXT_EMBEDDINGS_KEY}' array. {_TEXT_HINT}")
        else:
            embeddings, mask = source if isinstance(source, tuple) else (source, None)
            y = embedding_condition(embeddings, mask)
    except ValueError as err:
        raise UserError(str(err)) from None
    y = y[None] if y.ndim == 2 else y
    if y.shape[-1] != dim:
        raise UserError(f"The model reads embeddings of width {dim} (model.context_embedding_dim); the condition's "
                        f"are {y.shape[-1]} wide.")
    return y if num is None else y[np.arange(num) % len(y)]


def conditioned_score(config, sde, score, num: int, *, labels=None, text: str | None = None, condition=None,
                      guidance: float = 0.0, classifier: str | None = None, classifier_scale: float = 1.0):
    """The score model that samples `num` samples of a config's model as asked, and their
    class labels `(num,)` (None when unconditional or unknown).

    A label-conditional model (training.condition 'class' or 'spelling') samples `labels`
    (cycled; default every class in turn) or, for a spelling model, the word `text`; a
    text-embedding model samples the embeddings `condition` (`load_condition`: cycled); both
    with classifier-free guidance of weight `guidance` (0: the conditional score). An
    unconditional model is guided by the noise-conditional classifier in the workdir
    `classifier`, with scale `classifier_scale`, towards `labels`; without one it is
    returned as is (and takes no labels, text, condition or guidance).
    """
    from scoresde.samplers import guidance as guide

    kind = condition_kind(config)
    if condition is not None and kind != "text_embedding":
        raise UserError("--condition-file gives text embeddings to a text-embedding model (training.condition="
                        "'text_embedding'); this one " + ("is unconditional." if kind == "none" else "takes --label."))
    if classifier:
        if kind != "none":
            raise UserError("--classifier guides an unconditional model; this one is conditional "
                            "(use --guidance for classifier-free guidance).")
        cconfig, log_prob_fn, _ = load_classifier(classifier, sde=sde, model_config=config)
        labels = class_labels(cconfig.model.num_classes, num, labels)
        return guide.classifier_guidance(score, log_prob_fn, labels, classifier_scale), labels
    if kind == "none":
        if labels is not None or text is not None or guidance:
            raise UserError(
                "This model is unconditional (training.condition='none'): train a conditional one "
                "(e.g. --config digits_vp_class) or guide it with --classifier <workdir>.")
        return score, None
    if kind == "text_embedding":
        if labels is not None or text is not None:
            raise UserError(f"This model is conditioned on text embeddings, not on --label or --text. {_TEXT_HINT}")
        if condition is None:
            raise UserError(f"This model is conditioned on text embeddings: give them to sample it. {_TEXT_HINT}")
        y = load_condition(condition, config.model.context_embedding_dim, num)
        return (guide.classifier_free(score, y, guidance) if guidance else guide.condition(score, y)), None
    table = condition_table(config)
    if text is not None:
        if config.training.condition != "spelling":
            raise UserError("--text needs a spelling-conditioned model (digits_vp_spelling); use --label.")
        names = data.label_names(config.data.dataset)
        labels = np.full(num, names.index(text.lower())) if text.lower() in names else None
        try:
            y = data.spell([text] * num, config.model.context_length)
        except ValueError as err:
            raise UserError(str(err)) from None
    else:
        labels = class_labels(len(table), num, labels)
        y = condition_from_labels(config, labels)
    return (guide.classifier_free(score, y, guidance) if guidance else guide.condition(score, y)), labels


def train_kwargs(config) -> dict:
    """The keyword arguments of `train.train` from training.*, optim.*, model.ema_rate and
    seed: the optimizer and its learning rate, the schedule, the objective and its loss
    settings. Checks the conditioning settings and the schedule (UserError)."""
    from scoresde import configs, train

    t, o = config.training, config.optim
    table, kind, low_res = condition_table(config), condition_kind(config), low_res_from_config(config)
    condition = (lambda batch: batch[data.TEXT_EMBEDDING]) if kind == "text_embedding" else (
        None if table is None else (lambda batch: table[batch["label"]]))
    objective = t.get("objective", "score")
    if (objective == "autoencoder") != (config.model.name == "autoencoder"):
        raise UserError("training.objective='autoencoder' and model.name='autoencoder' go together "
                        f"(got {objective!r} and {config.model.name!r}).")
    if objective == "autoencoder":  # no SDE: no time labels
        loss_kwargs = dict(kl_weight=t.kl_weight, reconstruction=t.reconstruction)
    else:
        loss_kwargs = dict(continuous=t.continuous)
    if objective == "score":
        loss_kwargs.update(
            reduce_mean=t.reduce_mean,
            likelihood_weighting=t.likelihood_weighting,
            parameterization=config.model.get("parameterization"),
            condition=condition,
            p_uncond=0.0 if low_res else t.get("p_uncond", 0.0),  # a low-resolution image has no null condition
            low_res=low_res,
            loss=t.get("loss", "dsm"),
            min_snr_gamma=t.get("min_snr_gamma", 0.0),
            t_sampling=t.get("t_sampling", "uniform"),
            sigma_data=config.model.get("sigma_data", SIGMA_DATA),
            p_mean=t.get("p_mean", losses.EDM_P_MEAN),
            p_std=t.get("p_std", losses.EDM_P_STD),
        )
    elif t.get("loss", "dsm") != "dsm":
        raise UserError(f"training.loss={t.loss!r} applies to score models, not to a {objective}.")
    try:
        schedule = train.Schedule(
            n_iters=t.n_iters, n_jitted_steps=t.n_jitted_steps, log_freq=t.log_freq, eval_freq=t.eval_freq,
            snapshot_freq=t.snapshot_freq, snapshot_freq_for_preemption=t.snapshot_freq_for_preemption,
        )
    except ValueError as err:
        raise UserError(str(err)) from None
    if o.optimizer not in configs.OPTIMIZERS:  # the reference's only choice too
        raise UserError(f"optim.optimizer={o.optimizer!r}: the only optimizer is 'Adam' (with optim.weight_decay "
                        "for decoupled weight decay).")
    return dict(
        optimizer=train.get_optimizer(o.lr, o.warmup, o.grad_clip, o.beta1, o.eps, weight_decay=o.weight_decay),
        lr_schedule=train.learning_rate_schedule(o.lr, o.warmup),
        schedule=schedule,
        objective=objective,
        loss_kwargs=loss_kwargs,
        ema_rate=config.model.ema_rate,
        micro_batches=t.get("micro_batches", 1),
        seed=config.seed,
    )


def abstract_train_state(config, sde=None, model=None, kwargs=None):
    """The structure, shapes, dtypes and (replicated) shardings of the config's train state,
    as `jax.ShapeDtypeStruct`s: a checkpoint's restore target, traced without computing
    (or compiling) the initialization."""
    from scoresde import parallel, train

    sde = sde_from_config(config) if sde is None else sde
    model = model_from_config(config) if model is None else model
    kwargs = train_kwargs(config) if kwargs is None else kwargs
    shapes = jax.eval_shape(
        lambda: train.init_train_state(
            model, sde, jax.random.PRNGKey(kwargs["seed"]), data_shape(config), kwargs["optimizer"],
            kwargs["loss_kwargs"].get("continuous", True),
        )
    )
    replicated = parallel.replicated()
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated), shapes)


def check_train_kwargs(config, sde, model, kwargs: dict):
    """What `train.train` would reject, checked before anything is written (`train_kwargs`
    checked the schedule): the batch size against the devices, the objective and its loss
    settings, and that the network can be built for the data shape. Raises UserError."""
    from scoresde import train

    batch, devices = config.training.batch_size, jax.device_count()
    if batch % devices:
        raise UserError(
            f"training.batch_size={batch} must be a multiple of the number of devices ({devices})."
        )
    micro = kwargs["micro_batches"]
    if not (isinstance(micro, int) and micro >= 1) or batch % micro:
        raise UserError(f"training.micro_batches={micro!r} must be an integer >= 1 dividing training.batch_size={batch}.")
    try:
        loss_fn = train.objective_loss_fn(sde, model, kwargs["objective"], True, **kwargs["loss_kwargs"])
        train.make_train_step(loss_fn, kwargs["optimizer"], 0.0, micro)
    except ValueError as err:  # the objective's name, the losses' checks of the settings, accumulation
        raise UserError(f"config.training: {err}") from None
    try:
        abstract_train_state(config, sde, model, kwargs)
    except ValueError as err:  # the networks' checks of their fields (a traced init, nothing computed)
        raise UserError(f"The {config.model.name!r} network cannot be built from config.model: {err}") from None


# ----------------------------------------------------------------------------- workdirs


def load_ema_params(workdir: str, config, step: int | None = None):
    """The EMA parameters of the newest checkpoint that restores (or of the given step) in
    `workdir`, and its step. Unreadable newer checkpoints are passed over with one line each."""
    from scoresde import checkpoints

    def note(bad_step, kind, err):
        print(f"Checkpoint {bad_step} ({kind}) in {workdir} does not restore ({type(err).__name__}); "
              "using an older one.", file=sys.stderr, flush=True)

    with checkpoints.CheckpointManager(workdir, async_save=False, read_only=True) as manager:
        if manager.latest() is None:
            raise UserError(
                f"{workdir!r} has no checkpoint yet. Train first: scoresde train --workdir {workdir} "
                "(it resumes from config.json)."
            )
        # Shapes only: building the real initial state would compile the network's init.
        target = abstract_train_state(config)
        try:
            if step is None:
                state = manager.restore_newest(target, on_unreadable=note)[0]
            else:
                state, _ = manager.restore(target, step=step)
        except checkpoints.UnreadableCheckpoints as err:
            raise UserError(str(err)) from None
        except Exception as err:
            raise UserError(f"Checkpoint {step} in {workdir} does not restore: {type(err).__name__}") from None
    return state.ema_params, int(state.step)


def load_score_fn(workdir: str, step: int | None = None, *, low_res_ok: bool = False):
    """(config, sde, score_fn, step) for the EMA model of a trained workdir.

    A conditional model's score_fn is `score_fn(x, t, y=None)` (`condition_from_labels`).
    A super-resolution model (which needs a low-resolution image y) is a UserError unless
    `low_res_ok`: what samples or evaluates a model without a condition cannot use it.
    """
    config = load_config(workdir)
    objective = config.training.get("objective", "score")
    if objective == "autoencoder":
        raise UserError(f"{workdir!r} holds an autoencoder, not a score model: train one on its latents with "
                        f"--config.data.autoencoder={workdir} (e.g. --config digits_ldm).")
    if objective != "score":
        raise UserError(f"{workdir!r} holds a {objective}, not a score model.")
    if not low_res_ok and low_res_from_config(config) is not None:
        raise UserError(f"{workdir!r} holds a super-resolution model (training.condition='low_res'), which samples "
                        "given low-resolution images: scoresde sample --workdir <it> --upsample LOW_PNG, or "
                        "--base-workdir BASE for a cascade.")
    sde, model = sde_from_config(config), model_from_config(config)
    params, step = load_ema_params(workdir, config, step)
    return config, sde, network_score(config, sde, model, params), step


def network_score(config, sde, model, params) -> models.NetworkScore:
    """The score model of a config's network with `params` (its parameterization and time labels)."""
    return models.get_score_fn(
        sde, model, params, train=False, continuous=config.training.continuous,
        parameterization=config.model.get("parameterization"), sigma_data=config.model.get("sigma_data", SIGMA_DATA),
    )


def to_unit_range(x, config):
    """Model-space samples to [0, 1] images (clipped), or unchanged 2-D points; a latent
    model's samples are decoded to images (`latent.to_images`)."""
    from scoresde import latent

    if latent.is_latent(config):
        return latent.to_images(x, config)
    if not is_image_data(config):
        return x
    x = (x + 1.0) / 2.0 if config.data.get("centered", False) else x
    return jnp.clip(x, 0.0, 1.0)


def latent_space(config) -> str:
    """Where a model works: "" (pixels), or "latents of <autoencoder workdir> at step <S>"."""
    from scoresde import latent

    if not latent.is_latent(config):
        return ""
    return f"latents of {os.path.abspath(latent.autoencoder_workdir(config))} at step {config.data.autoencoder_step}"


def load_classifier(workdir: str, step: int | None = None, sde: sde_lib.SDE | None = None, model_config=None):
    """(config, log_prob_fn, step) for the EMA noise-conditional classifier of a workdir,
    `log_prob_fn(x, t) -> (B, num_classes)`; with `sde` (and `model_config`), check it was
    trained for that SDE (and on the same data space: pixels or the same latents)."""
    from scoresde.models.classifier import get_classifier_log_prob_fn

    config = load_config(workdir)
    if config.training.get("objective", "score") != "classifier":
        raise UserError(f"{workdir!r} holds a score model, not a classifier (training.objective='classifier').")
    if sde is not None and sde_from_config(config) != sde:
        raise UserError(f"The classifier in {workdir!r} was trained for another SDE ({config.training.sde}, "
                        f"{sde_from_config(config)}) than the model's ({sde}).")
    if model_config is not None and latent_space(config) != latent_space(model_config):
        raise UserError(f"The classifier in {workdir!r} reads {latent_space(config) or 'pixels'}, the model "
                        f"{latent_space(model_config) or 'pixels'}: train the classifier on the model's data "
                        "(the same data.autoencoder).")
    sde, model = sde_from_config(config), model_from_config(config)
    params, step = load_ema_params(workdir, config, step)
    return config, get_classifier_log_prob_fn(sde, model, params, continuous=config.training.continuous), step


# ----------------------------------------------------------------------------- configs by name


def _as_config(config):
    """A config given by name or path (`configs.get_config`; its ValueErrors are UserErrors), or as is."""
    from scoresde import configs

    if not isinstance(config, str):
        return config
    try:
        return configs.get_config(config)
    except ValueError as err:
        raise UserError(str(err)) from None


def get_config(config, overrides=()) -> ml_collections.ConfigDict:
    """A config by name or path (or a ConfigDict) with `overrides` ("a.b=value", as
    `configs.apply_overrides`) applied; their mistakes are UserErrors."""
    from scoresde import configs

    try:
        return configs.apply_overrides(_as_config(config), overrides)
    except ValueError as err:
        raise UserError(str(err)) from None


# What a resumed run may not change: the checkpoints hold a network of that architecture,
# trained on that data, for that SDE and objective. (Memory options change no parameter.)
FIXED_ON_RESUME = ("model.", "data.", "training.sde", "training.continuous", "training.objective",
                   "training.condition")
FREE_ON_RESUME = ("model.remat", "model.compute_dtype", "model.ema_rate")
# data settings a latent run resolves and records in config.json when it starts (`latent`), and
# their unresolved values in a config.
RECORDED_AT_START = {"autoencoder_step": -1, "latent_scale": 0.0}


def train_config(workdir: str, config=None, overrides=()) -> tuple[ml_collections.ConfigDict, bool]:
    """The config to train `workdir` with, and whether it resumes a run there.

    A workdir with a config.json resumes with it (`config`, if given, must have the same
    model and data settings); otherwise `config` (a name, a path or a ConfigDict) starts a
    run. `overrides` apply either way (e.g. a larger training.n_iters to train further).
    On resume, a change the existing checkpoints cannot follow is a UserError naming the
    field (`FIXED_ON_RESUME`, or anything that changes the train state's structure).
    """
    resumed = os.path.exists(config_path(workdir))
    if resumed:
        saved = load_config(workdir)
        if config is not None:
            given = _as_config(config)
            for section in ("model", "data"):
                ours, theirs = json.loads(given[section].to_json()), json.loads(saved[section].to_json())
                for key, unset in RECORDED_AT_START.items():  # what the run recorded, not a difference
                    if section == "data" and ours.get(key) == unset and key in theirs:
                        ours[key] = theirs[key]
                if ours != theirs:
                    name = config if isinstance(config, str) else config.get("name", "the given config")
                    raise UserError(
                        f"{workdir!r} holds a run of another config ({section} settings differ from "
                        f"{name!r}). Use a new --workdir, or omit --config to resume it."
                    )
        saved.unlock()
        config = get_config(saved, overrides)
        check_resume(workdir, load_config(workdir), config)
        return config, True
    if config is None:
        raise UserError(
            f"No config: pass --config <name> to start a run in {workdir!r} (scoresde configs lists names)."
        )
    return get_config(config, overrides), False


def check_resume(workdir: str, saved, config):
    """UserError unless the checkpoints of `saved` can go on training under `config`."""
    changed = workdir_lib.changes(saved, config)
    fixed = [k for k in changed if k.startswith(FIXED_ON_RESUME) and k not in FREE_ON_RESUME]
    if fixed:
        old, new = changed[fixed[0]]
        raise UserError(f"Cannot change {fixed[0]} ({old!r} -> {new!r}) when resuming {workdir!r}: its checkpoints "
                        "were made with the old value. Train into a new --workdir instead.")
    if changed:
        def state(c):
            return jax.tree.map(lambda s: (s.shape, s.dtype), abstract_train_state(c))

        before = state(saved)
        if state(config) != before:
            culprits = [k for k in changed if state(_with(saved, k, changed[k][1])) != before] or list(changed)
            raise UserError(f"Changing {', '.join(culprits)} when resuming {workdir!r} changes the train state "
                            "its checkpoints hold (the optimizer's state, say). Train into a new --workdir instead.")


def _with(config, key: str, value):
    """A copy of `config` with one flat key set (for finding which change matters)."""
    copy = ml_collections.ConfigDict(config.to_dict())
    try:
        copy.update_from_flattened_dict({key: value})
    except (KeyError, TypeError, ValueError):
        pass
    return copy


def eval_images(config, split: str, batch_size: int | None = None):
    """The images of a split, in order, one pass, as batches `(B, H, W, C)` in [0, 1] (not
    centered, dequantized or flipped; batch_size default eval.batch_size)."""
    batches = dataset_from_config(config, split, batch_size or config.eval.batch_size, unit_range=True,
                                  shuffle=False, num_epochs=1, drop_remainder=False)
    return (b["image"] for b in batches)


# ----------------------------------------------------------------------------- what the commands do


def snapshot_hook(config, sde, model, workdir: str, tb=None, verbose: bool = True):
    """`train.train`'s `on_snapshot` for a config, or None when training.snapshot_sampling is
    off: samples of the EMA model with the config's sampler (a column per class for a
    label-conditional model; the null condition of a text-embedding model) saved as
    `samples/step_XXXXXXXX.png` and, with a `reporting.TensorBoardWriter` `tb`, as the
    TensorBoard image "samples". A super-resolution model super-resolves the first test
    images' low-resolution copies instead: rows of input (nearest) | output | original."""
    from scoresde import reporting
    from scoresde.samplers import guidance, operators

    if not config.training.snapshot_sampling:
        return None
    num = config.training.get("snapshot_sampling_num", 64)
    num = jax.device_count() * math.ceil(num / jax.device_count())  # split over the devices
    shape = (num,) + data_shape(config)
    table, low_res = condition_table(config), low_res_from_config(config)
    name, options = sampler_from_config(config)
    nrow = len(table) if table is not None and is_image_data(config) else None
    if low_res is not None:
        high = next(iter(eval_images(config, "test", num)))
        pool = operators.average_pool(low_res.factor)
        low = pool.A(data.get_data_scaler(config.data.get("centered", False))(jnp.asarray(high)))
        shown = np.asarray(pool.pinv(pool.A(jnp.asarray(high))))
        nrow = 24  # eight (input, output, original) triples per row

    def on_snapshot(state, step):
        score = network_score(config, sde, model, state.ema_params)
        if table is not None:  # a column per class
            score = guidance.condition(score, table[np.arange(num) % len(table)])
        try:
            if low_res is None:
                x, nfe = run_sampler(jax.random.PRNGKey(step), sde, score, shape, name, options)
            else:
                x, nfe = run_upsampler(jax.random.PRNGKey(step), sde, score, low, low_res, name, options)
        except UserError as err:  # an early, unstable model: no grid, but training goes on
            if verbose and jax.process_index() == 0:
                print(f"samples at step {step}: none written: {err}", flush=True)
            return
        if jax.process_index() != 0:
            return
        x = np.asarray(to_unit_range(x, config))
        if low_res is not None:  # rows of input | output | original
            x = np.stack([shown, x, high], 1).reshape((-1,) + x.shape[1:])
        path = os.path.join(workdir, "samples", f"step_{step:08d}.png")
        if nrow:
            reporting.save_image_grid(x, path, nrow=nrow)
        else:
            reporting.save_samples_png(x, path, title=f"step {step}")
        if verbose:
            print(f"samples at step {step} ({name}, NFE {nfe}): {path}", flush=True)
        if tb is not None and is_image_data(config):
            tb.image(step, "samples", reporting.image_grid(x, nrow))  # x is in [0, 1] already

    return on_snapshot


def check_text_embeddings(config, train_iter):
    """UserError unless a text-embedding model's training data carry text embeddings
    ("text_embedding" of an in-memory source) of the network's width."""
    if condition_kind(config) != "text_embedding":
        return
    stored = getattr(getattr(train_iter, "source", None), "extras", {}).get(data.TEXT_EMBEDDING)
    if stored is None:
        raise UserError(
            f"training.condition='text_embedding' reads text embeddings stored with the images, and "
            f"{config.data.dataset!r} has none: use an .npz with '{data.TEXT_EMBEDDINGS_KEY}' (N, L, E) (and "
            f"optionally '{data.TEXT_MASK_KEY}' (N, L)), or an image folder with a '{data.TEXT_SIDECAR}' sidecar.")
    if stored.shape[-1] != config.model.context_embedding_dim:
        raise UserError(f"The text embeddings of {config.data.dataset!r} are {stored.shape[-1]} wide; set "
                        f"--config.model.context_embedding_dim={stored.shape[-1]} (it is "
                        f"{config.model.context_embedding_dim}).")


def train_workdir(workdir: str, config=None, overrides=(), verbose: bool = True):
    """Train (or resume) the run in `workdir`: `train_config` picks the config, every
    setting is checked before config.json is written, then `train.train` runs with
    TensorBoard scalars and sample snapshots (`snapshot_hook`; an autoencoder's:
    reconstruction reports, `autoencoder.snapshot_hook`). A latent config (data.autoencoder)
    trains on the autoencoder's latents, encoded once and cached (`latent.prepare`).

    Returns (state, stopped): the final `train.TrainState`, and whether training stopped on
    request (SIGINT / SIGTERM, with a checkpoint) before its last step. A non-finite loss is
    a UserError (the checkpoints before it stay).
    """
    from scoresde import autoencoder, checkpoints, latent, reporting, train

    config, resumed = train_config(workdir, config, overrides)
    if latent.is_latent(config):
        config = latent.resolve_step(config)  # the autoencoder's checkpoint, recorded in config.json
    sde, model = sde_from_config(config), model_from_config(config)
    kwargs = train_kwargs(config)  # checks the conditioning settings and the schedule
    check_train_kwargs(config, sde, model, kwargs)  # what train.train would reject
    if latent.is_latent(config):
        if condition_kind(config) in ("text_embedding", "low_res"):
            raise UserError(f"training.condition={condition_kind(config)!r} reads the pixel data set; a latent model "
                            "(data.autoencoder) takes class labels, spelling or no condition.")
    else:
        train_iter = dataset_from_config(config, "train")
        found = tuple(getattr(train_iter, "element_shape", None) or data_shape(config))
        if found != tuple(data_shape(config)):
            raise UserError(f"The data {config.data.dataset!r} has examples of shape {found}, the model expects "
                            f"{data_shape(config)} (data.image_size, data.num_channels); nothing was written.")
        check_text_embeddings(config, train_iter)
    is_main = jax.process_index() == 0
    with workdir_lib.Lock(workdir, "train", enabled=is_main):
        if latent.is_latent(config):  # encoded once (cached in the workdir); the scale, recorded
            config, train_iter = latent.prepare(workdir, config, verbose)
        # Only a config known to be valid is written (a mistake leaves no config.json behind).
        previous = load_config(workdir) if resumed else None
        changed = workdir_lib.changes(previous, config) if resumed else {}
        if is_main:
            save_config(workdir, config)
            workdir_lib.record(workdir, "resume" if resumed else "start", changes=changed,
                               **({} if resumed else {"config": config.get("name", "")}))
        tb = reporting.TensorBoardWriter(os.path.join(workdir, "tensorboard")) if is_main else None
        if verbose:
            print(("Resuming" if resumed else "Starting") + f" {workdir} ({config.get('name', 'config')})"
                  + "".join(f"; {k}: {a!r} -> {b!r}" for k, (a, b) in changed.items()), flush=True)
        try:
            state = train.train(
                model, sde, train_iter, workdir, example_shape=data_shape(config),
                on_start=None if tb is None else tb.start, on_log=None if tb is None else tb.scalars,
                on_snapshot=(autoencoder.snapshot_hook(config, model, workdir, tb, verbose)
                             if autoencoder.is_autoencoder(config) else snapshot_hook(config, sde, model, workdir, tb, verbose)),
                progress=verbose, **kwargs,
            )
        except checkpoints.UnreadableCheckpoints as err:
            raise UserError(str(err)) from None
        except train.NonFiniteLossError as err:
            if changed and is_main:  # the changes made it diverge: config.json goes back to what it was
                save_config(workdir, previous)
                workdir_lib.record(workdir, "revert", changes={k: [b, a] for k, (a, b) in changed.items()},
                                   reason="non-finite loss")
                raise UserError(f"{err} config.json is back to its settings before this resume "
                                f"({', '.join(changed)} reverted).") from err
            raise UserError(str(err)) from err
        finally:
            if tb is not None:
                tb.close()
    return state, int(state.step) < kwargs["schedule"].last_step


def load_image(source, shape: tuple[int, int, int], num: int) -> np.ndarray:
    """An image repeated `num` times, `(num, H, W, C)` in [0, 1] for the data shape (H, W, C):
    an image file (PNG, ...) resized to it (saying so on stderr), or an array `(H, W, C)` / `(num, H, W, C)` in [0, 1]."""
    if isinstance(source, (str, os.PathLike)):
        from PIL import Image

        if not os.path.isfile(source):
            raise UserError(f"No image file {str(source)!r}.")
        h, w, c = shape
        try:
            img = Image.open(source)
            img.load()
        except OSError as err:  # PIL's UnidentifiedImageError too
            raise UserError(f"{str(source)!r} is not an image that can be read ({type(err).__name__}).") from None
        if img.size != (w, h):
            print(f"{source}: {img.size[0]}x{img.size[1]} resized to the model's {w}x{h}.", file=sys.stderr, flush=True)
        img = img.convert("L" if c == 1 else "RGB").resize((w, h), Image.BILINEAR)
        source = np.asarray(img, np.float32).reshape(shape) / 255.0
    try:
        return np.array(np.broadcast_to(np.asarray(source, np.float32), (num,) + tuple(shape)))
    except ValueError:
        raise UserError(f"An image of shape {tuple(shape)} is needed, got {np.shape(source)}.") from None


def load_low_res(source, shape: tuple[int, int, int], num: int, factor: int | None = None) -> tuple[np.ndarray, int]:
    """A low-resolution image for super-resolution to the data shape (H, W, C), repeated `num`
    times, `(num, H/f, W/f, C)` in [0, 1], and the factor f: an image file (PNG, ...) read at
    its own size, or an array `(h, w, C)` / `(num, h, w, C)` in [0, 1]. Its size must divide
    the model's by one integer factor, or by `factor` when given (a UserError otherwise)."""
    h_model, w_model, c = shape
    if isinstance(source, (str, os.PathLike)):
        from PIL import Image

        if not os.path.isfile(source):
            raise UserError(f"No image file {str(source)!r}.")
        try:
            img = Image.open(source)
            img.load()
        except OSError as err:
            raise UserError(f"{str(source)!r} is not an image that can be read ({type(err).__name__}).") from None
        name = str(source)
        pixels = np.asarray(img.convert("L" if c == 1 else "RGB"), np.float32)
        source = pixels.reshape(img.size[1], img.size[0], c) / 255.0
    else:
        name = "The low-resolution image"
    source = np.asarray(source, np.float32)
    if source.ndim not in (3, 4) or source.shape[-1] != c:
        raise UserError(f"A low-resolution image (h, w, {c}) is needed, got shape {source.shape}.")
    h, w = source.shape[-3:-1]
    if factor is not None and (h * factor, w * factor) != (h_model, w_model):
        raise UserError(f"{name} is {w}x{h}; this super-resolution model upsamples {w_model // factor}x"
                        f"{h_model // factor} images to {w_model}x{h_model} (model.sr_factor {factor}).")
    if h_model % h or w_model % w or h_model // h != w_model // w:
        raise UserError(f"{name} is {w}x{h}; its size must divide the model's {w_model}x{h_model} by one integer "
                        f"factor (e.g. {w_model // 2}x{h_model // 2} for 2x).")
    try:
        return np.array(np.broadcast_to(source, (num, h, w, c))), h_model // h
    except ValueError:
        raise UserError(f"{num} low-resolution images are needed, got shape {source.shape}.") from None


def impute(key, config, sde, score, num: int, image, *, mask=None, colorize: bool = False, upsample=None,
           sigma_y: float = 0.0, sampler: str = "pc", options: dict | None = None, method: str = "replace"):
    """Inpaint `image` where `mask` (1: known, 0: generated) is 0, colorize its grey levels, or
    super-resolve the low-resolution image `upsample` (`load_low_res`; y's noise std sigma_y in
    [0, 1] pixel units), `num` times with a config's model (`samplers.imputation`: any
    sampler, method "replace" or "tmpd"). image and mask: image files or arrays in [0, 1]
    (`load_image`).

    Returns (original (None for super-resolution), input as shown: unknown pixels grey, the
    grey image, or the low-resolution image upsampled nearest, output), each `(num, H, W, C)`
    in [0, 1], and nfe.
    """
    from scoresde.samplers import imputation

    if not is_image_data(config):
        raise UserError("Inpainting, colorization and super-resolution need an image model; this config has 2-D "
                        "points.")
    if latent_space(config):
        raise UserError("Inpainting, colorization and super-resolution act on pixels; this model samples an "
                        "autoencoder's latents (data.autoencoder). Use a pixel-space model.")
    centered = config.data.get("centered", False)
    to_model = data.get_data_scaler(centered)
    options = options or {}
    try:
        if upsample is not None:
            low, factor = load_low_res(upsample, data_shape(config), num)
            sigma_model = sigma_y * (2.0 if centered else 1.0)  # [0, 1] pixels -> the model's data space
            x, nfe = imputation.super_resolve(key, sde, score, to_model(low), factor, sigma_model, sampler=sampler,
                                              method=method, **options)
            return None, np.repeat(np.repeat(low, factor, 1), factor, 2), np.asarray(to_unit_range(x, config)), nfe
        original = load_image(image, data_shape(config), num)
        if colorize:
            if original.shape[-1] != 3:
                raise UserError("--colorize needs an RGB model; this one has 1 channel (use --inpaint).")
            shown = np.repeat(original.mean(-1, keepdims=True), 3, -1)  # the grey input
            x, nfe = imputation.colorize(key, sde, score, to_model(shown), sampler=sampler, method=method, **options)
        else:
            if mask is None:
                raise UserError("Inpainting needs a mask (1 where the image is known).")
            mask = (load_image(mask, data_shape(config), num) > 0.5).astype(np.float32)
            x, nfe = imputation.inpaint(key, sde, score, to_model(original), mask, sampler=sampler, method=method,
                                        **options)
            shown = original * mask + 0.5 * (1 - mask)  # unknown pixels grey
    except ValueError as err:
        raise UserError(str(err)) from None
    return original, shown, np.asarray(to_unit_range(x, config)), nfe


@dataclasses.dataclass
class Samples:
    """What `sample_workdir` made: samples `(num, ...)` (images in [0, 1], or 2-D points),
    how, and for imputation its inputs (`original`, `shown`: `(num, H, W, C)`; no original
    for super-resolution)."""

    samples: np.ndarray
    nfe: int
    sampler: str
    options: dict
    step: int
    wall_s: float
    labels: np.ndarray | None = None  # the class of each sample
    guidance: float = 0.0
    columns: int = 0  # every class (or given condition) in turn: a grid with a column for each; 0: a plain grid
    task: str = ""  # "inpaint", "colorize", "upsample", "cascade", or "" (sampling)
    original: np.ndarray | None = None
    shown: np.ndarray | None = None
    accuracy: float | None = None  # digits: the bundled classifier's accuracy on the labels


# Copies of the samples a sampler holds at once (state, score, noise, temporaries): a bound
# for refusing a --num that cannot fit, not a promise that a smaller one does.
SAMPLER_COPIES = 16


def check_sample_memory(config, num: int):
    """UserError if `num` samples of the config's shape cannot fit in the device's memory
    (the host's on CPU) at `SAMPLER_COPIES` copies, with the largest number that can."""
    per_sample = math.prod(data_shape(config)) * 4 * SAMPLER_COPIES
    limit = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    stats = jax.devices()[0].memory_stats() or {}
    limit = min(limit, stats.get("bytes_limit", limit))
    if num * per_sample > limit:
        raise UserError(f"{num} samples need about {num * per_sample / 2**30:.0f} GiB, more than this machine's "
                        f"{limit / 2**30:.0f} GiB: at most {limit // per_sample} fit in one call. Sample in several "
                        "calls with different seeds, or use evaluate, which samples in chunks.")


def sample_workdir(
    workdir: str,
    num: int = 64,
    *,
    sampler: str | None = None,
    options: dict | None = None,
    seed: int = 0,
    labels=None,
    text: str | None = None,
    condition=None,
    guidance: float = 0.0,
    classifier: str | None = None,
    classifier_scale: float = 1.0,
    image=None,
    mask=None,
    colorize: bool = False,
    upsample=None,
    sigma_y: float = 0.0,
    impute_method: str = "replace",
    base_workdir: str | None = None,
    step: int | None = None,
) -> Samples:
    """`num` samples of the EMA model of a trained workdir (latest checkpoint, or `step`).

    sampler, options: a registry sampler and its options (default: the config's sampling
    settings, `resolve_sampler`). labels, text, condition (text embeddings: a file or arrays,
    `load_condition`), guidance, classifier, classifier_scale: the condition and guidance
    (`conditioned_score`). image with a mask, or with colorize:
    inpaint or colorize that image instead; upsample: super-resolve that low-resolution
    image (noise std sigma_y) (`impute`, method `impute_method`). A super-resolution workdir
    (training.condition='low_res') upsamples `upsample`, or the samples of `base_workdir`
    (a cascade; the condition and guidance apply to the base), with its own model
    (`upsample_workdir`). The files: `save_samples`.
    """
    config = load_config(workdir)
    check_sample_memory(config, num)
    if low_res_from_config(config) is not None:
        if image is not None or mask is not None or colorize or sigma_y or impute_method != "replace":
            raise UserError(f"{workdir!r} holds a super-resolution model: it takes --upsample LOW_PNG or "
                            "--base-workdir BASE, not --image, --inpaint, --colorize, --sigma-y or --impute-method "
                            "(those are for unconditional models).")
        return upsample_workdir(workdir, num, upsample=upsample, base_workdir=base_workdir, sampler=sampler,
                                options=options, seed=seed, step=step, labels=labels, text=text, guidance=guidance,
                                classifier=classifier, classifier_scale=classifier_scale)
    if base_workdir is not None:
        raise UserError(f"--base-workdir feeds a super-resolution model (training.condition='low_res'); {workdir!r} "
                        f"holds none (training.condition={config.training.get('condition', 'none')!r}).")
    config, sde, score, step = load_score_fn(workdir, step)
    name, options = resolve_sampler(config, sampler, options)
    key = jax.random.PRNGKey(seed)
    score, sample_labels = conditioned_score(config, sde, score, num, labels=labels, text=text, condition=condition,
                                             guidance=guidance, classifier=classifier,
                                             classifier_scale=classifier_scale)
    imputed, accuracy = {}, None
    start = time.perf_counter()
    if mask is not None or colorize or upsample is not None:
        original, shown, x, nfe = impute(key, config, sde, score, num, image, mask=mask, colorize=colorize,
                                         upsample=upsample, sigma_y=sigma_y, sampler=name, options=options,
                                         method=impute_method)
        task = "upsample" if upsample is not None else "colorize" if colorize else "inpaint"
        imputed = dict(task=task, original=original, shown=shown)
        if not np.all(np.isfinite(x)):
            raise UserError(f"{task} with {name} ({impute_method}) produced non-finite values: the model or the "
                            "method broke down (TMPD is the less stable one); nothing was written.")
    else:
        x, nfe = run_sampler(key, sde, score, (num,) + data_shape(config), name, options)
        x = np.asarray(to_unit_range(x, config))
    wall = time.perf_counter() - start
    if sample_labels is not None and config.data.dataset == "digits" and not imputed:
        from scoresde.evaluation.digits import digits_accuracy

        accuracy = digits_accuracy(x, sample_labels)
    columns = 0
    if is_image_data(config) and not imputed:
        if sample_labels is not None and labels is None:  # every class in turn
            columns = int(sample_labels.max()) + 1
        elif condition is not None:  # every given condition in turn
            columns = min(num, len(load_condition(condition, config.model.context_embedding_dim)))
    return Samples(x, nfe, name, options, step, wall, sample_labels, guidance, columns, accuracy=accuracy, **imputed)


def upsample_workdir(workdir: str, num: int = 64, *, upsample=None, base_workdir: str | None = None,
                     sampler: str | None = None, options: dict | None = None, seed: int = 0,
                     step: int | None = None, **base_condition) -> Samples:
    """`num` high-resolution samples of the super-resolution model in `workdir` given either the
    low-resolution image(s) `upsample` (a file or an array in [0, 1], `load_low_res`; its size
    must be the model's divided by model.sr_factor) or, for a cascade, `num` samples of the
    model in `base_workdir` (`sample_workdir` with `base_condition`: labels, text, guidance,
    classifier, classifier_scale). sampler and options apply to both stages, each with its own
    config's defaults. The noise augmentation the model was trained with is added to the
    low-resolution images (`samplers.cascade.upsample`). The result's `shown` is the
    low-resolution input upsampled nearest, its nfe that of both stages."""
    config = load_config(workdir)
    check_sample_memory(config, num)
    low_res = low_res_from_config(config)
    if low_res is None:
        raise UserError(f"{workdir!r} holds no super-resolution model (training.condition='low_res'); super-resolve "
                        "with an unconditional model through sample_workdir(upsample=...).")
    if (upsample is None) == (base_workdir is None):
        raise UserError(f"{workdir!r} holds a super-resolution model: give it the low-resolution image to upsample "
                        "(--upsample LOW_PNG) or a base model to sample them from (--base-workdir BASE), one of the two.")
    if base_workdir is None and any(v for v in base_condition.values() if v not in (None, 1.0)):
        raise UserError("--label, --text, --guidance and --classifier condition the base model of a cascade "
                        "(--base-workdir); a super-resolution model takes only the low-resolution image.")
    h, w, c = data_shape(config)
    f = low_res.factor
    if base_workdir is not None:
        base_shape = data_shape(load_config(base_workdir))
        if tuple(base_shape) != (h // f, w // f, c):
            raise UserError(f"The base model in {base_workdir!r} makes {base_shape} images; the super-resolution "
                            f"model in {workdir!r} upsamples {(h // f, w // f, c)} ones (sr_factor {f}).")
    else:
        low, _ = load_low_res(upsample, (h, w, c), num, f)
    config, sde, score, step = load_score_fn(workdir, step, low_res_ok=True)
    name, sr_options = resolve_sampler(config, sampler, options)
    start, base, nfe_base = time.perf_counter(), None, 0
    if base_workdir is not None:
        base = sample_workdir(base_workdir, num, sampler=sampler, options=options, seed=seed, **base_condition)
        low, nfe_base = base.samples, base.nfe
    key = jax.random.fold_in(jax.random.PRNGKey(seed), 1)  # the base stage's is PRNGKey(seed)
    to_model = data.get_data_scaler(config.data.get("centered", False))
    x, nfe = run_upsampler(key, sde, score, to_model(jnp.asarray(low)), low_res, name, sr_options)
    shown = np.repeat(np.repeat(low, f, 1), f, 2)
    return Samples(np.asarray(to_unit_range(x, config)), nfe_base + nfe, name, sr_options, step,
                   time.perf_counter() - start, labels=None if base is None else base.labels,
                   task="upsample" if base is None else "cascade", shown=shown)


def save_samples(result: Samples, prefix: str) -> str:
    """Write `<prefix>.npz` (samples, nfe, sampler, options as JSON, step, guidance, labels)
    and a PNG: a grid (a column per class or condition when each was sampled in turn; rows of original |
    input | output for imputation, input | output for super-resolution) or a scatter plot of
    2-D points. Returns the PNG's path."""
    from scoresde import reporting

    os.makedirs(os.path.dirname(prefix) or ".", exist_ok=True)
    x = result.samples
    extra = {} if result.labels is None else {"labels": result.labels}
    np.savez(prefix + ".npz", samples=x, nfe=result.nfe, sampler=result.sampler, options=json.dumps(result.options),
             step=result.step, guidance=result.guidance, **extra)
    if result.task:  # one row per sample: original | input | output (no original for super-resolution)
        columns = [c for c in (result.original, result.shown, x) if c is not None]
        grid = np.stack(columns, 1).reshape((-1,) + x.shape[1:])
        return reporting.save_image_grid(grid, prefix + ".png", nrow=len(columns))
    if result.columns > 1:
        return reporting.save_image_grid(x, prefix + ".png", nrow=result.columns)
    return reporting.save_samples_png(x, prefix + ".png", title=f"{result.sampler}, NFE {result.nfe}")


def likelihood_report(
    workdir: str,
    split: str | None = None,
    *,
    passes: int = 5,
    batch: int | None = None,
    limit: int | None = None,
    divergence: str = "rademacher",
    method: str | None = None,
    num_steps: int | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    time_variable: str | None = None,
    error_norm: str | None = None,
    seed: int = 0,
    out: str | None = None,
) -> tuple[dict, str]:
    """Bits/dim of a split (default eval.bpd_dataset) under a trained workdir's EMA model
    (`likelihood.evaluate_bpd`, `passes` dequantization passes, batches of `batch`, default
    eval.batch_size; only the first `limit` examples with a limit), written as JSON to `out`
    (default `<workdir>/eval/bpd_<split>_step<step>.json`; its folder is checked writable
    first). The solver settings go to `likelihood.log_likelihood`: by default
    `likelihood.REPORT_METHOD` with `REPORT_STEPS` steps; an adaptive method's defaults are
    rtol = atol = 1e-5 (the reference's) in sigma with the max norm. `num_steps` goes with
    the fixed-step methods only, the tolerances, time variable and error norm with the
    adaptive ones only. Returns the report, with the split, step and every setting, and the
    path written."""
    from scoresde import likelihood, reporting

    method = method or likelihood.REPORT_METHOD
    adaptive = dict(rtol=rtol, atol=atol, time_variable=time_variable, error_norm=error_norm)
    if method in likelihood.EXPONENTIAL_METHODS:
        if given := [name for name, value in adaptive.items() if value is not None]:
            raise UserError(f"{', '.join(given)} set an adaptive method's solve; the fixed-step {method} takes a number "
                            f"of steps (default {likelihood.REPORT_STEPS}). For tolerances choose an adaptive method, "
                            "e.g. dopri5.")
        solver = dict(method=method, num_steps=likelihood.REPORT_STEPS if num_steps is None else num_steps)
    elif num_steps is not None:
        raise UserError(f"A number of steps goes with the fixed-step methods ({', '.join(likelihood.EXPONENTIAL_METHODS)}); "
                        f"{method} is adaptive and takes tolerances.")
    else:
        defaults = dict(rtol=1e-5, atol=1e-5, time_variable="sigma", error_norm="max")
        solver = dict(method=method, **{k: defaults[k] if v is None else v for k, v in adaptive.items()})
    if latent_space(load_config(workdir)):
        raise UserError("likelihood reports bits/dim of pixels; this model's density is over an autoencoder's "
                        "latents (data.autoencoder), which has no pixel likelihood here.")
    config, sde, score, step = load_score_fn(workdir)
    if not is_image_data(config):
        raise UserError("likelihood reports bits/dim of discrete image data; this config has 2-D points.")
    split = split or config.eval.bpd_dataset
    out = out or os.path.join(workdir, "eval", f"bpd_{split}_step{step}.json")
    workdir_lib.check_writable(os.path.dirname(os.path.abspath(out)))
    batch = batch or config.eval.batch_size
    images = np.concatenate(list(eval_images(config, split, batch)))[:limit]
    batch = min(batch, len(images))
    batch = max(batch - batch % jax.device_count(), jax.device_count())  # split over the devices (padded)
    report = likelihood.evaluate_bpd(
        jax.random.PRNGKey(seed), sde, score, images, batch, num_bins=config.data.get("num_bins", 256),
        centered=config.data.centered, num_passes=passes, divergence=divergence, **solver,
    )
    settings = {**dict.fromkeys([*adaptive, "num_steps"]), **solver}  # those that do not apply: None
    report.update(split=split, step=step, divergence=divergence, workdir=workdir, **settings)
    if not all(math.isfinite(v) for v in [report["bpd"], *report["bpd_per_pass"]]):
        raise UserError(f"Non-finite bits/dim {report['bpd']} (per pass {report['bpd_per_pass']}): the model "
                        "or the ODE solve broke down; nothing was written.")
    return report, reporting.write_json(out, report)
