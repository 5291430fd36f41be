"""Defaults of the 2-D toy configs (not in the reference): a residual MLP on point clouds.

The data sets are `scoresde.analytic.toy_target` samplers (an endless stream of fresh
points, all within about [-3, 3]^2): 8gaussians, moons, checkerboard, swissroll, grid.
Examples are vectors of `data.dim` = 2 numbers, not images. A run takes a minute or
two on a CPU. The score network is `scoresde.models.MLP` ('mlp') with the DDPM++
conventions of the VP configs (sinusoidal embedding of t * 999, eps prediction).
"""

import ml_collections
from ml_collections import config_dict


def get_default_configs(dataset='8gaussians'):
  config = ml_collections.ConfigDict()
  # training
  config.training = training = ml_collections.ConfigDict()
  training.batch_size = 512
  training.n_iters = 20000
  training.snapshot_freq = 5000
  training.log_freq = 100
  training.eval_freq = 500
  training.snapshot_freq_for_preemption = 5000
  training.snapshot_sampling = True
  training.likelihood_weighting = False
  training.continuous = True
  training.n_jitted_steps = 1
  training.reduce_mean = True
  training.sde = 'vpsde'

  # sampling
  config.sampling = sampling = ml_collections.ConfigDict()
  sampling.method = 'pc'
  sampling.predictor = 'euler_maruyama'
  sampling.corrector = 'none'
  sampling.n_steps_each = 1
  sampling.noise_removal = True
  sampling.snr = 0.16

  # evaluation
  config.eval = evaluate = ml_collections.ConfigDict()
  evaluate.batch_size = 4096
  evaluate.num_samples = 4096
  evaluate.bpd_dataset = 'test'

  # data
  config.data = data = ml_collections.ConfigDict()
  data.dataset = dataset  # a name of scoresde.analytic.TOY_TARGETS
  data.dim = 2  # examples are (dim,) vectors, not images
  data.centered = False  # unused: the points are not rescaled
  data.random_flip = False
  data.uniform_dequantization = False

  # model
  config.model = model = ml_collections.ConfigDict()
  model.name = 'mlp'
  model.parameterization = config_dict.placeholder(str)  # None = the reference's choice
  model.sigma_min = 0.01
  model.sigma_max = 5.  # (VE only) about the largest distance between two points
  model.num_scales = 1000
  model.beta_min = 0.1
  model.beta_max = 20.
  model.hidden = 256
  model.num_layers = 4
  model.embedding_type = 'positional'
  model.embedding_size = 64
  model.fourier_scale = 16.
  model.conditional = True
  model.dropout = 0.
  model.skip_rescale = True
  model.init_scale = 0.
  model.nonlinearity = 'swish'
  model.scale_by_sigma = False
  model.ema_rate = 0.999

  # optimization
  config.optim = optim = ml_collections.ConfigDict()
  optim.weight_decay = 0.
  optim.optimizer = 'Adam'
  optim.lr = 1e-3
  optim.beta1 = 0.9
  optim.eps = 1e-8
  optim.warmup = 100
  optim.grad_clip = 1.

  config.seed = 42

  return config
