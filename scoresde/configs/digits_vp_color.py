"""CPU-sized RGB: `digits_vp` on `digits_color` (each digit tinted in one of six saturated
colours), a model to colorize grey digits with (`scoresde sample --colorize`)."""

from scoresde.configs.digits_vp import get_config as get_digits_vp


def get_config():
  config = get_digits_vp()
  config.data.dataset = 'digits_color'
  config.data.num_channels = 3
  return config
