"""CPU-sized: a small DiT (Peebles & Xie, 2023) on the 8 x 8 digits with the continuous VP SDE.

`digits_vp` (data, schedule, sampling) with its U-Net replaced by `scoresde.models.DiT`:
patch 2 (16 tokens), width 128, 4 blocks of 4 heads (1.27M parameters).
"""

import ml_collections
from ml_collections import config_dict

from scoresde.configs.digits_vp import get_config as get_digits_vp


def get_config():
  config = get_digits_vp()
  unet = config.model
  # model: DiT's fields only; the SDE and EMA settings as digits_vp's
  config.model = model = ml_collections.ConfigDict()
  model.name = 'dit'
  model.parameterization = config_dict.placeholder(str)  # None = the reference's choice (eps for VP)
  for key in ('sigma_min', 'sigma_max', 'num_scales', 'beta_min', 'beta_max', 'ema_rate'):
    model[key] = unet[key]
  model.hidden_size = 128
  model.depth = 4
  model.num_heads = 4
  model.patch_size = 2
  model.mlp_ratio = 4.
  return config
