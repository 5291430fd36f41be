"""CPU-sized: digits_vp (the VP SDE, DDPM++ U-Net) with v-prediction (Salimans & Ho 2022,
v = alpha eps - sigma x0, `model.parameterization='v'`) and min-SNR-5 loss weighting
(Hang et al. 2023): min(SNR, 5) / (SNR + 1) ||v_hat - v||^2, SNR = alpha^2 / sigma^2.
"""

from scoresde.configs import digits_vp


def get_config():
  config = digits_vp.get_config()
  training = config.training
  training.loss = 'v'
  training.min_snr_gamma = 5.

  config.model.parameterization = 'v'
  return config
