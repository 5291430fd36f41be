"""2-D toy: checkerboard (uniform on the dark squares of a 4 x 4 checkerboard), residual MLP, continuous VP SDE."""

from scoresde.configs.default_toy_configs import get_default_configs


def get_config():
  return get_default_configs('checkerboard')
