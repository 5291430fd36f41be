"""CPU-sized latent diffusion on the digits: `digits_vp`'s VP SDE and DDPM++ U-Net on the
4 x 4 x 2 latents of the `digits_ae` autoencoder in data.autoencoder (default
runs/digits_ae, relative to where the command runs).

    scoresde train --config digits_ae --workdir runs/digits_ae
    scoresde train --config digits_ldm --workdir runs/digits_ldm [--config.data.autoencoder=runs/digits_ae]
    scoresde sample --workdir runs/digits_ldm          # decoded to 8 x 8 digits
"""

from scoresde.configs.digits_vp import get_config as get_digits_vp


def get_config():
  config = get_digits_vp()
  config.data.autoencoder = 'runs/digits_ae'
  return config
