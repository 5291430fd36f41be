"""CPU-sized: the continuous VP SDE and a small DDPM++ U-Net on 32 x 32 crops of
scikit-learn's two sample photographs (`photos` at full resolution, no download); the pixel-space baseline of
`photos_ldm`."""

from scoresde.configs.digits_vp import get_config as get_digits_vp


def get_config():
  config = get_digits_vp()
  data = config.data
  data.dataset = 'photos'
  data.image_size = 32
  data.num_channels = 3
  data.random_flip = True
  data.num_bins = 256
  config.training.batch_size = 32
  config.model.nf = 16  # 32 x 32 is 16 times the digits' pixels: a narrower U-Net keeps it CPU-sized
  config.model.ch_mult = (1, 2, 2)  # resolutions 32, 16, 8
  config.eval.batch_size = 256
  return config
