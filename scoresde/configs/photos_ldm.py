"""CPU-sized latent diffusion on 32 x 32 photo crops: `photos32_vp`'s SDE and `digits_vp`'s U-Net
(nf 32, resolutions 8 and 4) on the 8 x 8 x 4 latents of the `photos_ae` autoencoder in
data.autoencoder (default runs/photos_ae, relative to where the command runs).

    scoresde train --config photos_ae --workdir runs/photos_ae
    scoresde train --config photos_ldm --workdir runs/photos_ldm
    scoresde sample --workdir runs/photos_ldm          # decoded to 32 x 32 RGB crops
"""

from scoresde.configs.photos32_vp import get_config as get_photos32_vp


def get_config():
  config = get_photos32_vp()
  config.data.autoencoder = 'runs/photos_ae'
  config.model.nf = 32
  config.model.ch_mult = (1, 2)  # resolutions 8 and 4
  return config
