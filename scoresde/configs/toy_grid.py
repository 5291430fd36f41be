"""2-D toy: grid (a 5 x 5 grid of Gaussians), residual MLP, continuous VP SDE."""

from scoresde.configs.default_toy_configs import get_default_configs


def get_config():
  return get_default_configs('grid')
