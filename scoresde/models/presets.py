"""The CIFAR-10 network hyperparameters of score_sde's configs, as module keyword arguments.

Keys are the reference config files (`configs/<key>.py`); each value holds the
config's `model.name` under "name" and every network field, named exactly as the
config's `model.*` / `data.*` entries, with the values of `configs/default_cifar10_configs.py`
overridden by the file. sub-VP configs use the VP networks. So a config maps onto a
network 1:1: `get_model(p["name"], **model_kwargs(p["name"], p))`, or simply `build(key)`.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn

from scoresde.models.registry import get_model, model_kwargs

# configs/default_cifar10_configs.py
_DEFAULTS = dict(
    sigma_min=0.01, sigma_max=50.0, num_scales=1000, dropout=0.1, embedding_type="fourier", centered=False
)

# The model sections shared by NCSN++ and DDPM++ (configs/{vp,ve}/cifar10_*pp*_continuous.py).
_NCSNPP_COMMON = dict(
    name="ncsnpp",
    normalization="GroupNorm",
    nonlinearity="swish",
    nf=128,
    ch_mult=(1, 2, 2, 2),
    num_res_blocks=4,
    attn_resolutions=(16,),
    resamp_with_conv=True,
    conditional=True,
    fir_kernel=(1, 3, 3, 1),
    skip_rescale=True,
    resblock_type="biggan",
    progressive="none",
    progressive_combine="sum",
    attention_type="ddpm",
    init_scale=0.0,
    fourier_scale=16,
    conv_size=3,
)

DDPMPP_CONTINUOUS = {
    **_DEFAULTS,
    **_NCSNPP_COMMON,
    "scale_by_sigma": False,
    "fir": False,
    "progressive_input": "none",
    "embedding_type": "positional",
    "centered": True,
}

NCSNPP_CONTINUOUS = {
    **_DEFAULTS,
    **_NCSNPP_COMMON,
    "scale_by_sigma": True,
    "fir": True,
    "progressive_input": "residual",
}

DDPM = {
    **_DEFAULTS,
    "name": "ddpm",
    "scale_by_sigma": False,
    "normalization": "GroupNorm",
    "nonlinearity": "swish",
    "nf": 128,
    "ch_mult": (1, 2, 2, 2),
    "num_res_blocks": 2,
    "attn_resolutions": (16,),
    "resamp_with_conv": True,
    "conditional": True,
    "centered": True,
}

CIFAR10: dict[str, dict[str, Any]] = {
    "vp/cifar10_ddpmpp_continuous": DDPMPP_CONTINUOUS,
    "vp/cifar10_ddpmpp_deep_continuous": {**DDPMPP_CONTINUOUS, "num_res_blocks": 8},
    "subvp/cifar10_ddpmpp_continuous": DDPMPP_CONTINUOUS,
    "subvp/cifar10_ddpmpp_deep_continuous": {**DDPMPP_CONTINUOUS, "num_res_blocks": 8},
    "ve/cifar10_ncsnpp_continuous": NCSNPP_CONTINUOUS,
    "ve/cifar10_ncsnpp_deep_continuous": {**NCSNPP_CONTINUOUS, "num_res_blocks": 8},
    "vp/ddpm/cifar10": DDPM,
    "vp/ddpm/cifar10_continuous": DDPM,
}

# Parameter counts of these networks at 32 x 32 x 3 (`count_params(param_shapes(...))`);
# tests/test_models.py checks them and where they come from.
CIFAR10_PARAM_COUNTS = {
    "vp/cifar10_ddpmpp_continuous": 61_804_419,
    "vp/cifar10_ddpmpp_deep_continuous": 106_632_579,
    "ve/cifar10_ncsnpp_continuous": 62_758_915,
    "ve/cifar10_ncsnpp_deep_continuous": 107_587_075,
    "vp/ddpm/cifar10": 35_218_947,
}


def build(key: str) -> nn.Module:
    """The network of CIFAR-10 config `key` (e.g. "ve/cifar10_ncsnpp_continuous")."""
    if key not in CIFAR10:
        raise ValueError(f"Unknown CIFAR-10 preset {key!r}; valid: {', '.join(CIFAR10)}.")
    preset = CIFAR10[key]
    return get_model(preset["name"], **model_kwargs(preset["name"], preset))
