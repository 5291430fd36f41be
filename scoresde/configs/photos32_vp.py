"""CPU-sized: the continuous VP SDE and a small DDPM++ U-Net on 32 x 32 crops of
scikit-learn's two sample photographs (`photos` at full resolution, no download); the pixel-space baseline of
`photos_ldm`. `photos_vp` at image_size 32, with a narrower U-Net."""

from scoresde.configs.photos_vp import get_config as get_photos_vp


def get_config():
  config = get_photos_vp()
  config.data.image_size = 32
  config.training.batch_size = 32
  config.model.nf = 16  # 32 x 32 is 16 times the digits' pixels: a narrower U-Net keeps it CPU-sized
  config.eval.batch_size = 256
  return config
