"""CPU-sized KL autoencoder of the 8 x 8 digits to 4 x 4 x 2 latents (factor 2), the first
stage of `digits_ldm`: `scoresde train --config digits_ae --workdir runs/digits_ae`."""

from scoresde.configs._autoencoder import get_autoencoder_config


def get_config():
  config = get_autoencoder_config('digits', 8, 1, ch_mult=(1, 2), latent_channels=2)
  config.training.batch_size = 128
  config.model.nf = 16
  return config
