"""Shared by the autoencoder configs: latent diffusion's first stage (`scoresde.autoencoder`)."""

import ml_collections


def get_autoencoder_config(dataset, image_size, num_channels, ch_mult, latent_channels):
  """A KL autoencoder (`models.autoencoder`) of `dataset` images (image_size, num_channels)
  to latents of (image_size / f, image_size / f, latent_channels), f = 2^(len(ch_mult) - 1).

  LDM's loss without its perceptual and adversarial terms: L1 reconstruction + 1e-6 KL
  (`losses.get_autoencoder_loss_fn`). At each periodic checkpoint, a reconstruction report
  of the test split (training.snapshot_sampling).
  """
  config = ml_collections.ConfigDict()
  config.training = training = ml_collections.ConfigDict()
  training.objective = 'autoencoder'
  training.batch_size = 64
  training.n_iters = 2000
  training.snapshot_freq = 1000
  training.log_freq = 50
  training.eval_freq = 100
  training.snapshot_freq_for_preemption = 250
  training.snapshot_sampling = True  # the reconstruction report at each periodic checkpoint
  training.n_jitted_steps = 1
  training.kl_weight = 1e-6  # LDM's weight of the KL sum against the reconstruction sum
  training.reconstruction = 'l1'  # or 'l2'

  config.data = data = ml_collections.ConfigDict()
  data.dataset = dataset
  data.image_size = image_size
  data.num_channels = num_channels
  data.centered = True  # the autoencoder reads and writes [-1, 1]
  data.random_flip = False
  data.uniform_dequantization = False

  config.model = model = ml_collections.ConfigDict()
  model.name = 'autoencoder'
  model.nf = 32
  model.ch_mult = ch_mult
  model.num_res_blocks = 1
  model.latent_channels = latent_channels
  model.nonlinearity = 'swish'
  model.ema_rate = 0.99

  config.optim = optim = ml_collections.ConfigDict()
  optim.weight_decay = 0.
  optim.optimizer = 'Adam'
  optim.lr = 1e-3
  optim.beta1 = 0.9
  optim.eps = 1e-8
  optim.warmup = 100
  optim.grad_clip = 1.

  config.eval = ml_collections.ConfigDict()
  config.eval.batch_size = 512
  config.seed = 42
  return config
