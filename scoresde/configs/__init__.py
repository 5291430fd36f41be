"""Experiment configs (`ml_collections.ConfigDict`): score_sde's, and CPU-sized ones.

    from scoresde import configs
    configs.list_configs()                                  # every name
    config = configs.get_config("vp/cifar10_ddpmpp_continuous")
    config = configs.get_config("digits_vp")                # short names, if unambiguous
    config = configs.get_config("path/to/my_config.py")     # any file defining get_config()
    configs.apply_overrides(config, ["training.batch_size=64", "model.ch_mult=(1, 2)"])
    configs.validate(config)                                # names and network fields check out

The files mirror the reference's `configs/` (vp/, subvp/, ve/, vp/ddpm/ and the
`default_*_configs.py` they start from), with the same hyperparameters; the few
mistakes of the reference fixed here carry a `# FIX(reference):` comment and are
listed in scoresde/configs/README.md. Configs come back locked: assigning to a key
that does not exist raises instead of silently adding it.

Names are file paths below this package without `.py` ("ve/cifar10_ncsnpp_continuous").
A name may be shortened to its trailing components ("cifar10_ncsnpp_deep_continuous",
"ddpm/cifar10") when exactly one config ends that way; the reference's own spelling
("configs/vp/cifar10_ddpmpp_continuous.py") works too.
"""

from __future__ import annotations

import ast
import difflib
import importlib
import importlib.util
import os
from typing import Any, Iterable

import ml_collections
from ml_collections import config_dict

__all__ = ["apply_overrides", "get_config", "list_configs", "resolve_name", "validate"]

CONFIG_DIR = os.path.dirname(os.path.abspath(__file__))

# config.model keys that configure something other than the network: the SDE
# (sigma_*, beta_*, num_scales), the EMA, the registry name and the output parameterization.
NON_NETWORK_MODEL_KEYS = frozenset(
    {"name", "parameterization", "ema_rate", "sigma_min", "sigma_max", "num_scales", "beta_min", "beta_max",
     "sigma_data"}
)
# Conditioning settings every config gets (`get_config` adds those a config file lacks):
# what the run trains, what it conditions on, and the networks' conditioning fields.
CONDITIONING_DEFAULTS = {
    "training.objective": "score",  # or "classifier": a noise-conditional classifier for guidance
    "training.condition": "none",  # or "class" (labels), "spelling" (tokens of the label's name),
                                   # "text_embedding" (precomputed embeddings stored with the images)
                                   # or "low_res" (super-resolution: the batch's own downscaled images)
    "training.p_uncond": 0.1,  # condition dropout, for classifier-free guidance
    "model.num_classes": 0,  # > 0: class-conditional network
    "model.context_vocab_size": 0,  # > 0: cross-attention on token sequences
    "model.context_length": 8,
    "model.context_dim": 64,
    "model.context_embedding_dim": 0,  # > 0: cross-attention on embeddings (B, L, context_embedding_dim)
    "model.sr_factor": 0,  # > 0: super-resolution network, x concatenated with the upsampled low-res image
}
# Memory options every config gets: gradient accumulation over micro-batches, and for the
# NCSN++/DDPM++ networks gradient checkpointing per residual block and mixed precision.
MEMORY_DEFAULTS = {
    "training.micro_batches": 1,  # > 1: accumulate gradients over this many slices of each batch
    "model.remat": False,  # recompute each residual block in the backward pass
    "model.compute_dtype": "float32",  # "bfloat16": compute in bf16, parameters and optimizer in float32
}
# Training-loss settings every config gets (`losses.get_objective`): the loss of a score model
# and its options, and EDM's sigma_data (of the 'edm' parameterization and the edm loss's weighting).
LOSS_DEFAULTS = {
    "training.loss": "dsm",  # or "edm", "flow_matching", "v"
    "training.min_snr_gamma": 0.0,  # > 0: min-SNR-gamma weighting (Hang et al. 2023) of the dsm or v loss
    "training.t_sampling": "uniform",  # or "logit_normal": t = eps + (T - eps) sigmoid(N(0, 1)) (not edm)
    "training.p_mean": -1.2,  # the edm loss's ln sigma ~ N(p_mean, p_std^2)
    "training.p_std": 1.2,
    "model.sigma_data": 0.5,
}
# Latent diffusion settings every score or classifier config gets (`scoresde.latent`): with
# data.autoencoder set, the model is trained on that autoencoder's latents of the data.
LATENT_DEFAULTS = {
    "data.autoencoder": "",  # the workdir of a trained autoencoder (training.objective='autoencoder'); "" = pixels
    "data.autoencoder_step": -1,  # its checkpoint; -1: its newest when the run starts (then recorded)
    "data.latent_scale": 0.0,  # latents are multiplied by it; 0: 1 / std of the encoded data (then recorded)
}
OBJECTIVES = ("score", "classifier", "autoencoder")
CONDITIONS = ("none", "class", "spelling", "text_embedding", "low_res")
OPTIMIZERS = ("Adam",)  # optim.optimizer: the reference's only choice (`experiment.train_kwargs`)
# config.model keys of the default_*_configs files, shared by configs whose networks may not
# read them all (the DDPM network has no embedding_type or fourier_scale, nor conditioning).
DEFAULT_MODEL_KEYS = frozenset(
    {"dropout", "embedding_type", "fourier_scale"}
    | {k.split(".")[1] for k in {**CONDITIONING_DEFAULTS, **MEMORY_DEFAULTS, **LOSS_DEFAULTS} if k.startswith("model.")}
)
# Keys whose value may be None besides those holding None (checked by path, so that a config
# read back from JSON, where placeholders are plain values, keeps them).
NULLABLE_KEYS = frozenset({"model.parameterization"})
SAMPLING_METHODS = ("pc", "ode")


# ----------------------------------------------------------------------------- names


def _is_config_file(filename: str) -> bool:
    return filename.endswith(".py") and not filename.startswith(("_", "default_"))


def list_configs() -> list[str]:
    """Every config name, e.g. 'digits_vp', 'subvp/cifar10_ddpm_continuous', 'vp/ddpm/cifar10'."""
    names = []
    for root, dirs, files in os.walk(CONFIG_DIR):
        dirs[:] = sorted(d for d in dirs if not d.startswith(("_", ".")))
        rel = os.path.relpath(root, CONFIG_DIR)
        for f in files:
            if _is_config_file(f):
                names.append(f[:-3] if rel == "." else f"{rel}/{f[:-3]}".replace(os.sep, "/"))
    return sorted(names)


def _normalize(name: str) -> str:
    name = name.strip().replace("\\", "/")
    for prefix in ("scoresde/configs/", "configs/", "./"):
        if name.startswith(prefix):
            name = name[len(prefix) :]
    if name.endswith(".py"):
        name = name[:-3]
    if "/" not in name and "." in name:  # a dotted module path: vp.cifar10_ddpmpp_continuous
        name = name.replace(".", "/")
    return name.strip("/")


def resolve_name(name: str) -> str:
    """The full config name for a name or a unique trailing part of one; ValueError otherwise."""
    names = list_configs()
    key = _normalize(name)
    if key in names:
        return key
    matches = [n for n in names if n.endswith("/" + key)]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise ValueError(
            f"Config name {name!r} is ambiguous; it could be: {', '.join(matches)}. Pass one of these full names."
        )
    # Close matches, among full names and their last component.
    by_base: dict[str, list[str]] = {}
    for n in names:
        by_base.setdefault(n.rsplit("/", 1)[-1], []).append(n)
    close = difflib.get_close_matches(key, names, n=5, cutoff=0.6)
    for base in difflib.get_close_matches(key.rsplit("/", 1)[-1], list(by_base), n=5, cutoff=0.6):
        close += [n for n in by_base[base] if n not in close]
    hint = f" Did you mean: {', '.join(close[:5])}?" if close else ""
    raise ValueError(
        f"Unknown config {name!r}.{hint} List the names with `scoresde configs` "
        "(or scoresde.configs.list_configs()), or pass the path of a .py file defining get_config()."
    )


# ----------------------------------------------------------------------------- loading


def _load_file(path: str) -> ml_collections.ConfigDict:
    module_name = "_scoresde_config_" + "".join(c if c.isalnum() else "_" for c in os.path.abspath(path))
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ValueError(f"Cannot load {path!r} as a Python file.")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not callable(getattr(module, "get_config", None)):
        raise ValueError(f"{path!r} defines no get_config() function.")
    return module.get_config()


def get_config(name_or_path: str, lock: bool = True) -> ml_collections.ConfigDict:
    """A fresh config, by name (see `list_configs`) or from a .py file defining `get_config()`
    (the file is executed as Python code: use only config files you trust).

    The top-level `name` field is set to the config's full name (or the file path), and the
    config is locked (new keys cannot be added; existing ones can be changed, type-checked).
    """
    if not isinstance(name_or_path, str) or not name_or_path.strip():
        raise ValueError(f"A config name or path is required, got {name_or_path!r}.")
    # Only a name ending in .py is a file; anything else is a built-in name, so that a file of
    # that name in the working directory cannot shadow it.
    if name_or_path.endswith(".py") and os.path.isfile(name_or_path):
        config, name = _load_file(name_or_path), name_or_path
    else:
        try:
            name = resolve_name(name_or_path)
        except ValueError as err:
            if name_or_path.strip().endswith(".py"):
                raise ValueError(
                    f"No such config file {name_or_path!r}, and no config named {_normalize(name_or_path)!r}; "
                    "list the names with `scoresde configs`."
                ) from None
            raise
        module = importlib.import_module(f"{__name__}.{name.replace('/', '.')}")
        config = module.get_config()
    if isinstance(config, dict):
        config = ml_collections.ConfigDict(config)
    if not isinstance(config, ml_collections.ConfigDict):
        raise ValueError(f"get_config() of {name_or_path!r} returned a {type(config).__name__}, not a ConfigDict.")
    if "name" not in config:
        config.name = name
    if config.get("training", {}).get("objective") == "autoencoder":  # no SDE, no condition; reads pixels
        defaults = dict(MEMORY_DEFAULTS)
    else:
        defaults = {**CONDITIONING_DEFAULTS, **MEMORY_DEFAULTS, **LOSS_DEFAULTS, **LATENT_DEFAULTS}
    for path, value in defaults.items():
        section, key = path.split(".")
        if section in config and key not in config[section]:
            config[section][key] = value
    if lock:
        config.lock()
    return config


# ----------------------------------------------------------------------------- overrides


class _Unparsed:
    pass


_UNPARSED = _Unparsed()


def _literal(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return _UNPARSED


def _type_name(value_or_type) -> str:
    t = value_or_type if isinstance(value_or_type, type) else type(value_or_type)
    return {bool: "bool", int: "int", float: "float", str: "str", tuple: "tuple", list: "list"}.get(t, t.__name__)


def _leaf_paths(node, prefix="") -> Iterable[str]:
    for k in node.keys():
        v = node[k]
        path = f"{prefix}{k}"
        if isinstance(v, ml_collections.ConfigDict):
            yield from _leaf_paths(v, path + ".")
        else:
            yield path


def _unknown_key(config, parts, i) -> ValueError:
    """The error for parts[i] missing below parts[:i], with the closest keys as suggestions."""
    node = config
    for p in parts[:i]:
        node = node[p]
    here = ".".join(parts[:i])
    full = ".".join(parts)
    keys = list(node.keys())
    close = difflib.get_close_matches(parts[i], keys, n=3, cutoff=0.6)
    suggestions = [".".join(parts[:i] + [c] + parts[i + 1 :]) for c in close]
    if not suggestions:
        # The same (or a close) leaf name elsewhere, e.g. training.lr -> optim.lr.
        leaves = list(_leaf_paths(config))
        last = parts[-1]
        suggestions = [p for p in leaves if p.rsplit(".", 1)[-1] == last]
        if not suggestions:
            lasts = difflib.get_close_matches(last, [p.rsplit(".", 1)[-1] for p in leaves], n=3, cutoff=0.75)
            suggestions = [p for p in leaves if p.rsplit(".", 1)[-1] in lasts]
    if suggestions:
        return ValueError(f"unknown key config.{full}; did you mean {' or '.join(suggestions[:3])}?")
    where = f"config.{here}" if here else "config"
    return ValueError(f"unknown key config.{full}; the keys of {where} are: {', '.join(sorted(keys))}.")


def _is_nullable(node, key: str, path: str) -> bool:
    if path in NULLABLE_KEYS or node[key] is None:
        return True
    field = getattr(node, "_fields", {}).get(key)
    return isinstance(field, config_dict.FieldReference)


def _parse_bool(text: str):
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    return _UNPARSED


def _parse_scalar_like(text: str, expected: type, path: str):
    """Parse `text` as a value of type `expected` (bool, int, float or str); ValueError if it is not."""
    if expected is bool:
        value = _parse_bool(text)
        if value is _UNPARSED:
            raise ValueError(f"config.{path}: expected bool (True or False), got {text!r}.")
        return value
    if expected is int:
        value = _literal(text)
        if isinstance(value, float) and value.is_integer() and "e" in text.lower():
            value = int(value)  # 1e6 for an int field
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"config.{path}: expected int, got {text!r}.")
        return value
    if expected is float:
        value = _literal(text)
        if value is _UNPARSED:
            try:
                value = float(text)  # inf, nan
            except ValueError:
                value = _UNPARSED
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"config.{path}: expected float, got {text!r}.")
        return float(value)
    if expected is str:
        stripped = text.strip()
        if len(stripped) >= 2 and stripped[0] == stripped[-1] and stripped[0] in "'\"":
            value = _literal(stripped)
            if isinstance(value, str):
                return value
        return text
    raise TypeError(expected)


def _parse_sequence(text: str, current, path: str):
    container = list if isinstance(current, list) else tuple
    value = _literal(text.strip())
    if value is _UNPARSED or not isinstance(value, (tuple, list)):
        example = "(16,)" if len(current) <= 1 else "(" + ", ".join(map(repr, current)) + ")"
        raise ValueError(f"config.{path}: expected a {_type_name(container)}, e.g. {example}; got {text!r}.")
    elem_types = {type(v) for v in current}
    elem_type = elem_types.pop() if len(elem_types) == 1 else None
    out = []
    for v in value:
        if elem_type is None:
            if not isinstance(v, (bool, int, float, str)):
                raise ValueError(
                    f"config.{path}: expected a {_type_name(container)} of numbers or strings, got {text!r}."
                )
        elif elem_type is float and isinstance(v, int) and not isinstance(v, bool):
            v = float(v)
        elif type(v) is not elem_type:
            raise ValueError(
                f"config.{path}: expected a {_type_name(container)} of {_type_name(elem_type)}, got {text!r}."
            )
        out.append(v)
    return container(out)


def parse_value(text: str, node, key: str, path: str):
    """Parse override text for `node[key]` (at dotted `path`), checked against its type."""
    current = node[key]
    if isinstance(current, ml_collections.ConfigDict):
        example = f"{path}.{next(iter(current.keys()), 'x')}=..."
        raise ValueError(f"config.{path} is a section; set its fields instead, e.g. {example}")
    if text.strip() in ("None", "null"):
        if not _is_nullable(node, key, path):
            raise ValueError(f"config.{path} cannot be None (expected {_type_name(current)}).")
        return None
    declared = node.get_type(key)
    if current is None and declared is type(None):
        # An untyped None: any literal, else the text as a string.
        value = _literal(text.strip())
        return text if value is _UNPARSED else (tuple(value) if isinstance(value, list) else value)
    expected = declared if current is None else type(current)
    if expected in (bool, int, float, str):
        return _parse_scalar_like(text, expected, path)
    if expected in (tuple, list):
        return _parse_sequence(text, current if current is not None else (), path)
    value = _literal(text.strip())
    if not isinstance(value, expected):
        raise ValueError(f"config.{path}: expected {_type_name(expected)}, got {text!r}.")
    return value


def _choices(path: str):
    """The valid values of an enumerated key, or None when the key is free (or unknown here)."""
    try:
        if path == "training.sde":
            from scoresde.sde_lib import SDES

            return tuple(SDES)
        if path == "model.name":
            from scoresde.models import model_names

            return tuple(model_names())
        if path == "model.parameterization":
            from scoresde.models import PARAMETERIZATIONS

            return (None,) + tuple(PARAMETERIZATIONS)
        if path == "sampling.predictor":
            from scoresde.samplers.pc import PREDICTORS

            return tuple(PREDICTORS)
        if path == "sampling.corrector":
            from scoresde.samplers.pc import CORRECTORS

            return tuple(CORRECTORS)
        if path == "training.objective":
            return OBJECTIVES
        if path == "training.condition":
            return CONDITIONS
        if path in ("training.loss", "training.t_sampling"):
            from scoresde.losses import LOSSES, T_SAMPLINGS

            return LOSSES if path == "training.loss" else T_SAMPLINGS
        if path == "optim.optimizer":
            return OPTIMIZERS
        if path == "sampling.method":
            from scoresde.samplers.registry import SAMPLERS

            return SAMPLING_METHODS + tuple(s for s in SAMPLERS if s not in SAMPLING_METHODS)
    except ImportError:
        return None
    return None


def _check_choice(path: str, value):
    choices = _choices(path)
    if choices is None:
        return
    probe = value.lower() if isinstance(value, str) and path == "training.sde" else value
    if probe not in choices:
        shown = ", ".join("None" if c is None else str(c) for c in choices)
        close = difflib.get_close_matches(str(value), [c for c in choices if isinstance(c, str)], n=1)
        hint = f"; did you mean {close[0]!r}?" if close else "."
        raise ValueError(f"config.{path}: unknown value {value!r} (valid: {shown}){hint}")


def apply_overrides(config: ml_collections.ConfigDict, overrides: Iterable[str]) -> ml_collections.ConfigDict:
    """Apply "a.b.c=value" overrides in place (and return the config).

    Values are Python literals, checked against the field's type: int fields take
    integers (1e6 too), float fields numbers, bool fields True/False, str fields any
    text (quotes optional: model.name=ddpm), tuple fields tuples or lists
    (model.ch_mult=(1,2), model.attn_resolutions=()), and None is allowed where the
    field may be None (model.parameterization). Unknown keys fail with the closest
    existing key; enumerated fields (training.sde, model.name, sampling.predictor,
    sampling.corrector, sampling.method, model.parameterization, training.loss,
    training.t_sampling, optim.optimizer) must
    name a valid choice.
    """
    if isinstance(overrides, str):
        overrides = [overrides]
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        for prefix in ("--config.", "config."):
            if key.startswith(prefix):
                key = key[len(prefix) :]
        if not sep or not key:
            raise ValueError(f"override {item!r} is not of the form key=value (e.g. training.batch_size=64).")
        parts = key.split(".")
        node = config
        for i, part in enumerate(parts):
            if not isinstance(node, ml_collections.ConfigDict):
                parent = ".".join(parts[:i])
                raise ValueError(
                    f"unknown key config.{key}: config.{parent} is a value ({_type_name(node)}), not a section."
                )
            if part not in node:
                raise _unknown_key(config, parts, i)
            if i < len(parts) - 1:
                node = node[part]
        last = parts[-1]
        value = parse_value(text, node, last, key)
        _check_choice(key, value)
        try:
            setattr(node, last, value)
        except TypeError:
            with node.ignore_type():
                setattr(node, last, value)
    return config


# ----------------------------------------------------------------------------- validation


def _dataset_ok(name: str) -> bool:
    from scoresde import analytic, data

    toy = name[4:] if name.startswith("toy:") else name
    if name in data.TFDS_NAMES or name.startswith("lsun/") or name in ("digits", "digits_color", "photos") or toy in analytic.TOY_TARGETS:
        return True
    # A folder of images or an .npz/.npy file (it need not exist yet).
    return "/" in name or os.sep in name or name.endswith((".npz", ".npy"))


def validate(config: ml_collections.ConfigDict) -> None:
    """Check that a config's names are known and its model section matches its network.

    Raises ValueError listing every problem: an unknown training.sde, model.name,
    sampling predictor/corrector/method, optimizer, parameterization or data set; a config.model key
    the network does not read (a typo, or a leftover of another architecture); a network
    field absent from config.model and config.data (the module default would be used silently).
    """
    import dataclasses

    from scoresde.models.registry import _MODELS

    problems = []
    paths = ("training.sde", "model.name", "sampling.method", "sampling.predictor", "sampling.corrector",
             "optim.optimizer", "training.objective", "training.condition")
    if config.training.get("objective") == "autoencoder":  # no SDE, nothing to sample, no condition
        paths = ("model.name", "optim.optimizer", "training.objective")
    for path in paths:
        section, key = path.split(".")
        if key not in config[section]:
            problems.append(f"config.{path} is missing")
            continue
        try:
            _check_choice(path, config[section][key])
        except ValueError as e:
            problems.append(str(e))
    for path in ("model.parameterization", "training.loss", "training.t_sampling"):
        section, key = path.split(".")
        try:
            _check_choice(path, config[section].get(key, LOSS_DEFAULTS.get(path)))
        except ValueError as e:
            problems.append(str(e))
    if not _dataset_ok(config.data.dataset):
        problems.append(f"config.data.dataset: unknown data set {config.data.dataset!r}")
    name = config.model.get("name")
    if name in _MODELS:
        fields = {f.name for f in dataclasses.fields(_MODELS[name])} - {"parent", "name"}
        extra = set(config.model.keys()) - fields - NON_NETWORK_MODEL_KEYS - DEFAULT_MODEL_KEYS
        for k in sorted(extra):
            close = difflib.get_close_matches(k, sorted(fields), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            problems.append(f"config.model.{k} is not read by the {name!r} network{hint}")
        for path, default in MEMORY_DEFAULTS.items():
            section, k = path.split(".")
            if section == "model" and k not in fields and config.model.get(k, default) != default:
                problems.append(f"config.model.{k}={config.model[k]!r}: the {name!r} network has no such option")
        for k in sorted(fields - set(config.model.keys()) - set(config.data.keys())):
            problems.append(
                f"the {name!r} network's field {k!r} is missing from config.model (its default would be used)"
            )
    if problems:
        raise ValueError("Invalid config " + repr(config.get("name", "")) + ":\n  " + "\n  ".join(problems))
