"""CPU-sized super-resolution (SR3 / cascaded diffusion): `digits_vp`'s network conditioned on a
4 x 4 copy of each 8 x 8 digit (its 2 x 2 block means, made on the fly from every batch), which
it sees upsampled and concatenated to x(t). The low-resolution images get Gaussian noise of std
`data.sr_noise_aug` (in [0, 1] pixel units) in training, and the same at sampling.

    scoresde train --config digits_sr --workdir runs/digits_sr
    scoresde sample --workdir runs/digits_sr --upsample low4x4.png
    scoresde train --config digits_vp --workdir runs/digits4 --config.data.image_size=4
    scoresde sample --workdir runs/digits_sr --base-workdir runs/digits4     # a cascade
"""

from scoresde.configs.digits_vp import get_config as get_digits_vp


def get_config():
  config = get_digits_vp()
  config.training.condition = 'low_res'
  config.training.p_uncond = 0.
  config.model.sr_factor = 2
  config.data.sr_noise_aug = 0.02  # about a third of a grey level (1/16)
  return config
