"""Defaults of the 256 x 256 (and 1024 x 1024) configs: score_sde's `configs/default_lsun_configs.py`.

Used by the LSUN bedroom/church, CelebA-HQ and FFHQ configs. Values are the
reference's; the toolkit's extra fields are marked `# scoresde:`.
"""

import ml_collections
from ml_collections import config_dict


def get_default_configs():
  config = ml_collections.ConfigDict()
  # training
  config.training = training = ml_collections.ConfigDict()
  training.batch_size = 64
  training.n_iters = 2400001
  training.snapshot_freq = 50000
  training.log_freq = 50
  training.eval_freq = 100
  ## store additional checkpoints for preemption in cloud computing environments
  training.snapshot_freq_for_preemption = 5000
  ## produce samples at each snapshot.
  training.snapshot_sampling = True
  training.likelihood_weighting = False
  training.continuous = True
  training.n_jitted_steps = 5
  training.reduce_mean = False
  training.sde = 'vesde'  # scoresde: set by every reference config

  # sampling
  config.sampling = sampling = ml_collections.ConfigDict()
  sampling.method = 'pc'  # scoresde: method/predictor/corrector are set by every reference config
  sampling.predictor = 'reverse_diffusion'
  sampling.corrector = 'langevin'
  sampling.n_steps_each = 1
  sampling.noise_removal = True
  sampling.snr = 0.075

  # evaluation
  config.eval = evaluate = ml_collections.ConfigDict()
  evaluate.batch_size = 512
  evaluate.num_samples = 50000
  evaluate.bpd_dataset = 'test'

  # data
  config.data = data = ml_collections.ConfigDict()
  # reference: dataset 'LSUN' plus data.category set by each config; here one TFDS name,
  # 'lsun/<category>' (bedroom, church_outdoor, ...).
  data.dataset = 'lsun/bedroom'
  data.image_size = 256
  data.random_flip = True
  data.uniform_dequantization = False
  data.centered = False
  data.num_channels = 3
  data.num_bins = 256  # scoresde

  # model
  config.model = model = ml_collections.ConfigDict()
  model.name = 'ncsnpp'  # scoresde: set by every reference config
  model.parameterization = config_dict.placeholder(str)  # scoresde: None = the reference's choice
  model.sigma_max = 378.
  model.sigma_min = 0.01
  model.num_scales = 2000
  model.beta_min = 0.1
  model.beta_max = 20.
  model.dropout = 0.
  model.embedding_type = 'fourier'
  # FIX(reference): fourier_scale belongs next to embedding_type (see default_cifar10_configs).
  model.fourier_scale = 16.

  # optimization
  config.optim = optim = ml_collections.ConfigDict()
  optim.weight_decay = 0.
  optim.optimizer = 'Adam'
  optim.lr = 2e-4
  optim.beta1 = 0.9
  optim.eps = 1e-8
  optim.warmup = 5000
  optim.grad_clip = 1.

  config.seed = 42

  return config
