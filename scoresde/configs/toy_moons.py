"""2-D toy: moons (two interleaving half circles), residual MLP, continuous VP SDE."""

from scoresde.configs.default_toy_configs import get_default_configs


def get_config():
  return get_default_configs('moons')
