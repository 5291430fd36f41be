"""CPU-sized: a small NCSN++ U-Net on the 8 x 8 digits with the continuous VE SDE.

Mirrors ve/cifar10_ncsnpp_continuous (NCSN++ options: FIR resampling, residual input
pyramid, Fourier embedding of sigma, output scaled by 1/sigma; data in [0, 1]; PC
sampling with Langevin, snr 0.16) at laptop size; see default_digits_configs.
"""

from scoresde.configs.default_digits_configs import get_default_configs


def get_config():
  config = get_default_configs()
  # training
  training = config.training
  training.sde = 'vesde'
  training.continuous = True
  training.reduce_mean = False

  # sampling
  sampling = config.sampling
  sampling.method = 'pc'
  sampling.predictor = 'reverse_diffusion'
  sampling.corrector = 'langevin'
  sampling.snr = 0.16

  # data
  data = config.data
  data.centered = False

  # model: NCSN++ options
  model = config.model
  model.name = 'ncsnpp'
  model.sigma_min = 0.01
  model.sigma_max = 5.
  model.scale_by_sigma = True
  model.fir = True
  model.progressive = 'none'
  model.progressive_input = 'residual'
  model.embedding_type = 'fourier'
  model.fourier_scale = 16.

  return config
