"""2-D toy: 8gaussians (eight Gaussians on a circle of radius 2), residual MLP, continuous VP SDE."""

from scoresde.configs.default_toy_configs import get_default_configs


def get_config():
  return get_default_configs('8gaussians')
