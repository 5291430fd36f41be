"""CPU-sized super-resolution on `photos` (16 x 16 RGB crops from 8 x 8 ones): `photos_vp`'s
network conditioned on the 2 x 2 block means of each crop, as `digits_sr` on digits.

    scoresde train --config photos_sr --workdir runs/photos_sr
    scoresde sample --workdir runs/photos_sr --upsample low8x8.png
"""

from scoresde.configs.photos_vp import get_config as get_photos_vp


def get_config():
  config = get_photos_vp()
  config.training.condition = 'low_res'
  config.training.p_uncond = 0.
  config.model.sr_factor = 2
  config.data.sr_noise_aug = 0.02
  return config
