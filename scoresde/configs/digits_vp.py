"""CPU-sized: a small DDPM++ U-Net on the 8 x 8 digits with the continuous VP SDE.

Mirrors vp/cifar10_ddpmpp_continuous (DDPM++ options, reduce_mean, Euler-Maruyama
sampling) at laptop size; see default_digits_configs for the schedule.
"""

from scoresde.configs.default_digits_configs import get_default_configs


def get_config():
  config = get_default_configs()
  # training
  training = config.training
  training.sde = 'vpsde'
  training.continuous = True
  training.reduce_mean = True

  # sampling
  sampling = config.sampling
  sampling.method = 'pc'
  sampling.predictor = 'euler_maruyama'
  sampling.corrector = 'none'

  # data
  data = config.data
  data.centered = True

  # model: DDPM++ options
  model = config.model
  model.name = 'ncsnpp'
  model.scale_by_sigma = False
  model.fir = False
  model.progressive = 'none'
  model.progressive_input = 'none'
  model.embedding_type = 'positional'

  return config
