"""CPU-sized, text-conditional toy: `digits_vp` conditioned by cross-attention on the
spelling of the label ("seven" -> character tokens), a stand-in for text conditioning
that needs no text encoder: the network learns the letters' embeddings itself.
Cross-attention runs at the 4 x 4 resolution and in the middle block.
"""

from scoresde.configs.digits_vp import get_config as get_digits_vp


def get_config():
  config = get_digits_vp()
  config.training.condition = 'spelling'
  config.training.p_uncond = 0.1
  config.model.attn_resolutions = (4,)
  config.model.context_vocab_size = 28  # padding, a..z, other (data.spell)
  config.model.context_length = 8
  config.model.context_dim = 64
  return config
