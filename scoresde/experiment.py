"""From an experiment config to the toolkit's objects, and from a workdir back to them.

This is the edge where configs live: the core functions (sde_lib, models, losses,
train, samplers, likelihood) take explicit arguments, and this module reads the
`ml_collections` config (the reference's layout) to build them.

A workdir holds `config.json` (the resolved config the run was started with),
`checkpoints/` and `checkpoints-meta/`, `metrics.jsonl`, `tensorboard/`, `samples/`.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import ml_collections

from scoresde import data, models, sde_lib
from scoresde.models.registry import model_kwargs


class UserError(Exception):
    """A mistake the user can fix: the CLI prints its one-line message, no traceback."""


# ----------------------------------------------------------------------------- config -> objects


def sde_from_config(config) -> sde_lib.SDE:
    """training.sde with the model's noise parameters and N = model.num_scales."""
    name, m = config.training.sde.lower(), config.model
    try:  # the SDEs check their parameters (beta_min < beta_max, N >= 1, ...)
        if name in ("vpsde", "subvpsde"):
            return sde_lib.get_sde(name, beta_min=m.beta_min, beta_max=m.beta_max, N=m.num_scales)
        if name == "vesde":
            return sde_lib.VESDE(sigma_min=m.sigma_min, sigma_max=m.sigma_max, N=m.num_scales)
        if name == "cosinevpsde":
            return sde_lib.CosineVPSDE(N=m.num_scales)
    except ValueError as err:
        raise UserError(f"config.model ({config.training.sde}): {err}") from None
    raise UserError(f"Unknown training.sde {config.training.sde!r}; valid: vpsde, subvpsde, vesde, cosinevpsde.")


def _tuplify(value):
    return tuple(_tuplify(v) for v in value) if isinstance(value, (list, tuple)) else value


def model_from_config(config):
    """The registered network `model.name`, its fields filled from config.model, then config.data."""
    name = config.model.name
    if name not in models.model_names():
        raise UserError(f"Unknown model.name {name!r}; valid: {', '.join(models.model_names())}.")
    kwargs = model_kwargs(name, config.data, config.model)  # model settings win over data's
    return models.get_model(name, **{k: _tuplify(v) for k, v in kwargs.items()})


def dataset_from_config(config, split: str, batch_size: int | None = None, **kwargs):
    """`data.get_dataset` with the config's data settings. A missing data set is a UserError."""
    d = config.data
    try:
        return data.get_dataset(
            d.dataset,
            split,
            batch_size or config.training.batch_size,
            image_size=d.get("image_size"),
            centered=d.get("centered", False),
            random_flip=d.get("random_flip") if split == "train" else False,
            uniform_dequantization=d.get("uniform_dequantization", False),
            seed=config.seed,
            **kwargs,
        )
    except (data.DatasetNotPreparedError, FileNotFoundError) as err:
        raise UserError(str(err)) from err
    except ValueError as err:  # get_dataset's checks of the name, split, batch size and files
        raise UserError(str(err)) from None


def data_shape(config) -> tuple[int, ...]:
    """The shape of one example: (image_size, image_size, num_channels), or (dim,) for 2-D toys."""
    d = config.data
    if "dim" in d and d.dim:
        return (d.dim,)
    return (d.image_size, d.image_size, d.num_channels)


def is_image_data(config) -> bool:
    return len(data_shape(config)) == 3


def condition_table(config):
    """What a conditional model reads for each class label: `(num_classes,)` labels for
    training.condition='class', `(num_classes, L)` tokens of the class names for 'spelling';
    None for an unconditional model. Checks that the network can read it."""
    kind, m = config.training.get("condition", "none"), config.model
    if kind == "none":
        return None
    if config.training.get("objective", "score") != "score":
        raise UserError("training.condition applies to score models; a classifier reads the labels already.")
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
    raise UserError(f"Unknown training.condition {kind!r}; valid: none, class, spelling.")


def condition_from_labels(config, labels):
    """The model's condition for class labels `(B,)` (see `condition_table`)."""
    table = condition_table(config)
    if table is None:
        raise UserError("This model is unconditional (training.condition='none'); it takes no labels.")
    labels = jnp.asarray(labels, jnp.int32)
    if labels.min() < 0 or labels.max() >= len(table):
        raise UserError(f"Class labels must lie in [0, {len(table)}), got {labels.min()}..{labels.max()}.")
    return table[labels]


def train_kwargs(config) -> dict:
    """The keyword arguments of `train.train` from training.*, optim.*, model.ema_rate and
    seed: the optimizer and its learning rate, the schedule, the objective and its loss
    settings. Checks the conditioning settings and the schedule (UserError)."""
    from scoresde import train

    t, o = config.training, config.optim
    table = condition_table(config)
    objective = t.get("objective", "score")
    loss_kwargs = dict(continuous=t.continuous)
    if objective == "score":
        loss_kwargs.update(
            reduce_mean=t.reduce_mean,
            likelihood_weighting=t.likelihood_weighting,
            parameterization=config.model.get("parameterization"),
            condition=None if table is None else (lambda batch: table[batch["label"]]),
            p_uncond=t.get("p_uncond", 0.0),
        )
    try:
        schedule = train.Schedule(
            n_iters=t.n_iters, n_jitted_steps=t.n_jitted_steps, log_freq=t.log_freq, eval_freq=t.eval_freq,
            snapshot_freq=t.snapshot_freq, snapshot_freq_for_preemption=t.snapshot_freq_for_preemption,
        )
    except ValueError as err:
        raise UserError(str(err)) from None
    return dict(
        optimizer=train.get_optimizer(o.lr, o.warmup, o.grad_clip, o.beta1, o.eps, weight_decay=o.weight_decay),
        lr_schedule=train.learning_rate_schedule(o.lr, o.warmup),
        schedule=schedule,
        objective=objective,
        loss_kwargs=loss_kwargs,
        ema_rate=config.model.ema_rate,
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
            kwargs["loss_kwargs"]["continuous"],
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
    try:
        train.objective_loss_fn(sde, model, kwargs["objective"], True, **kwargs["loss_kwargs"])
    except ValueError as err:  # the objective's name and the losses' checks of the settings
        raise UserError(f"config.training: {err}") from None
    try:
        abstract_train_state(config, sde, model, kwargs)
    except ValueError as err:  # the networks' checks of their fields (a traced init, nothing computed)
        raise UserError(f"The {config.model.name!r} network cannot be built from config.model: {err}") from None


# ----------------------------------------------------------------------------- workdirs


def config_path(workdir: str) -> str:
    return os.path.join(workdir, "config.json")


def save_config(workdir: str, config):
    os.makedirs(workdir, exist_ok=True)
    tmp = config_path(workdir) + ".tmp"
    with open(tmp, "w") as f:
        f.write(config.to_json(indent=2))
    os.replace(tmp, config_path(workdir))


def load_config(workdir: str) -> ml_collections.ConfigDict:
    if not os.path.isdir(workdir):
        raise UserError(f"No workdir {workdir!r}. Train first: scoresde train --config <name> --workdir {workdir}")
    if not os.path.exists(config_path(workdir)):
        raise UserError(f"{workdir!r} has no config.json: it is not a scoresde workdir (train into it first).")
    with open(config_path(workdir)) as f:
        config = ml_collections.ConfigDict(json.load(f))
    config.lock()
    return config


def load_ema_params(workdir: str, config, step: int | None = None):
    """The EMA parameters of the latest (or given) checkpoint in `workdir`, and its step."""
    from scoresde import checkpoints

    with checkpoints.CheckpointManager(workdir, async_save=False, read_only=True) as manager:
        if manager.latest() is None:
            raise UserError(
                f"{workdir!r} has no checkpoint yet. Train first: scoresde train --workdir {workdir} "
                "(it resumes from config.json)."
            )
        # Shapes only: building the real initial state would compile the network's init.
        state, _ = manager.restore(abstract_train_state(config), step=step)
    return state.ema_params, int(state.step)


def load_score_fn(workdir: str, step: int | None = None):
    """(config, sde, score_fn, step) for the EMA model of a trained workdir.

    A conditional model's score_fn is `score_fn(x, t, y=None)` (`condition_from_labels`).
    """
    config = load_config(workdir)
    if config.training.get("objective", "score") != "score":
        raise UserError(f"{workdir!r} holds a {config.training.objective}, not a score model.")
    sde, model = sde_from_config(config), model_from_config(config)
    params, step = load_ema_params(workdir, config, step)
    score_fn = models.get_score_fn(
        sde, model, params, train=False, continuous=config.training.continuous,
        parameterization=config.model.get("parameterization"),
    )
    return config, sde, score_fn, step


def to_unit_range(x, config):
    """Model-space samples to [0, 1] images (clipped), or unchanged 2-D points."""
    if not is_image_data(config):
        return x
    x = (x + 1.0) / 2.0 if config.data.get("centered", False) else x
    return jnp.clip(x, 0.0, 1.0)


def load_classifier(workdir: str, step: int | None = None, sde: sde_lib.SDE | None = None):
    """(config, log_prob_fn, step) for the EMA noise-conditional classifier of a workdir,
    `log_prob_fn(x, t) -> (B, num_classes)`; with `sde`, check it was trained for that SDE."""
    from scoresde.models.classifier import get_classifier_log_prob_fn

    config = load_config(workdir)
    if config.training.get("objective", "score") != "classifier":
        raise UserError(f"{workdir!r} holds a score model, not a classifier (training.objective='classifier').")
    if sde is not None and sde_from_config(config) != sde:
        raise UserError(f"The classifier in {workdir!r} was trained for another SDE ({config.training.sde}, "
                        f"{sde_from_config(config)}) than the model's ({sde}).")
    sde, model = sde_from_config(config), model_from_config(config)
    params, step = load_ema_params(workdir, config, step)
    return config, get_classifier_log_prob_fn(sde, model, params, continuous=config.training.continuous), step
