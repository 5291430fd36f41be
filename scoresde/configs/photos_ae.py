"""CPU-sized KL autoencoder of 32 x 32 crops of the sample photographs (`photos`) to
8 x 8 x 4 latents (factor 4, 12x fewer values), the first stage of `photos_ldm`:
`scoresde train --config photos_ae --workdir runs/photos_ae`."""

from scoresde.configs._autoencoder import get_autoencoder_config


def get_config():
  config = get_autoencoder_config('photos', 32, 3, ch_mult=(1, 2, 4), latent_channels=4)
  config.model.nf = 16  # widths 16, 32, 64 at 32, 16, 8
  config.training.batch_size = 32
  config.data.random_flip = True
  return config
