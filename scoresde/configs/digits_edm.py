"""CPU-sized: digits_vp's DDPM++ U-Net trained with EDM's objective on EDM's path
(Karras et al. 2022): sigma(t) = t, the network preconditioned by c_skip, c_out, c_in and
c_noise = ln(sigma)/4 (`model.parameterization='edm'`, sigma_data 0.5), ln sigma ~
N(-1.2, 1.2^2) in training, loss weight lambda(sigma) = (sigma^2 + sigma_data^2) /
(sigma sigma_data)^2, and EDM's Heun sampler (18 steps, 35 NFE) for snapshots.
"""

from scoresde.configs import digits_vp


def get_config():
  config = digits_vp.get_config()
  training = config.training
  training.sde = 'edm'
  training.loss = 'edm'
  training.p_mean = -1.2
  training.p_std = 1.2

  model = config.model
  model.parameterization = 'edm'
  model.sigma_data = 0.5
  model.sigma_min = 0.002  # EDM's sampling range
  model.sigma_max = 80.

  sampling = config.sampling
  sampling.method = 'edm_heun'
  return config
