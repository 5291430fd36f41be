"""2-D toy: swissroll (the 2-D swiss roll), residual MLP, continuous VP SDE."""

from scoresde.configs.default_toy_configs import get_default_configs


def get_config():
  return get_default_configs('swissroll')
