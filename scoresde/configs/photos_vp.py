"""CPU-sized RGB: `digits_vp`'s small DDPM++ U-Net on `photos`, 16 x 16 crops of scikit-learn's
two sample photographs (test crops from a quarter of each photo's 32 x 32 tiles, training
crops from the rest), with random flips. The unconditional model of experiments/super_resolution.py's inverse-problem
method; at `--config.data.image_size=8` (block means of the same crops), the base of a cascade
with `photos_sr`.
"""

from scoresde.configs.digits_vp import get_config as get_digits_vp


def get_config():
  config = get_digits_vp()
  data = config.data
  data.dataset = 'photos'
  data.image_size = 16
  data.num_channels = 3
  data.num_bins = 256
  data.random_flip = True
  config.model.ch_mult = (1, 2, 2)  # resolutions 16, 8, 4
  config.training.batch_size = 64
  config.eval.batch_size = 270  # the test crops
  return config
