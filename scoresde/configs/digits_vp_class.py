"""CPU-sized, class-conditional: `digits_vp` with a label embedding added to the time
embedding, trained with condition dropout (p_uncond = 0.1) so that the same network
gives s(x, t, y) and s(x, t, None) for classifier-free guidance.
"""

from scoresde.configs.digits_vp import get_config as get_digits_vp


def get_config():
  config = get_digits_vp()
  config.training.condition = 'class'
  config.training.p_uncond = 0.1
  config.model.num_classes = 10
  return config
