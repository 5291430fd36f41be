"""CPU-sized, text-conditional: `digits_vp` conditioned by cross-attention on a text
encoder's precomputed embeddings, stored with the images (`text_embeddings` (N, L, E) and
`text_mask` (N, L) in an .npz; see `scoresde.data.sources`). Nothing here encodes text:
bring your own encoder's outputs, or make the digits' with the toy encoder of
experiments/text_digits.py (a fixed random embedding per character of the label's name),
which writes runs/digits_text.npz, the default data set here:

    python experiments/text_digits.py
    scoresde train --config digits_vp_text --workdir runs/text
    scoresde sample --workdir runs/text --condition-file runs/digits_text_names.npz --guidance 1

Set --config.data.dataset to another .npz or image folder, and model.context_embedding_dim
to the width E of its embeddings. Cross-attention runs at the 4 x 4 resolution and in the
middle block, through a learned projection E -> model.context_dim.
"""

from scoresde.configs.digits_vp import get_config as get_digits_vp


def get_config():
  config = get_digits_vp()
  config.data.dataset = 'runs/digits_text.npz'
  config.training.condition = 'text_embedding'
  config.training.p_uncond = 0.1
  config.model.attn_resolutions = (4,)
  config.model.context_embedding_dim = 32  # the toy encoder's width (experiments/text_digits.py)
  config.model.context_dim = 64
  return config
