"""Defaults of the CPU-sized configs on scikit-learn's 8 x 8 digits (not in the reference).

`digits` is the bundled 8 x 8 x 1 handwritten-digits set (1438 training images,
17 grey levels, no download). The network is a small NCSN++/DDPM++ U-Net (about
0.7M parameters) so that a run finishes in minutes on a laptop CPU; `digits_vp`
and `digits_ve` pick the DDPM++ (VP) or NCSN++ (VE) options, as the reference's
CIFAR-10 configs do. The schedule is shortened accordingly: a short warmup, a larger
learning rate and a faster EMA than the reference's 1.3M-step runs.
"""

import ml_collections
from ml_collections import config_dict


def get_default_configs():
  config = ml_collections.ConfigDict()
  # training
  config.training = training = ml_collections.ConfigDict()
  training.batch_size = 128
  # About 5 minutes on 2 CPU cores (the quick start); the main knob for a longer run.
  training.n_iters = 1000
  training.snapshot_freq = 1000
  training.log_freq = 50
  training.eval_freq = 100
  training.snapshot_freq_for_preemption = 250
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
  evaluate.batch_size = 512
  evaluate.num_samples = 1024
  evaluate.bpd_dataset = 'test'

  # data
  config.data = data = ml_collections.ConfigDict()
  data.dataset = 'digits'
  data.image_size = 8
  data.random_flip = False  # digits are not mirror-symmetric
  data.centered = True
  data.uniform_dequantization = False
  data.num_channels = 1
  data.num_bins = 17  # the digits have 17 grey levels (0..16), not 256

  # model: a small DDPM++-style U-Net (resolutions 8 and 4; no attention but the middle block's)
  config.model = model = ml_collections.ConfigDict()
  model.name = 'ncsnpp'
  model.parameterization = config_dict.placeholder(str)  # None = the reference's choice
  model.sigma_min = 0.01
  # Technique 1 of Song & Ermon (2020): about the largest distance between two training
  # images (4.8 for these digits in [0, 1]).
  model.sigma_max = 5.
  model.num_scales = 1000
  model.beta_min = 0.1
  model.beta_max = 20.
  model.dropout = 0.1
  model.embedding_type = 'positional'
  model.fourier_scale = 16.
  model.scale_by_sigma = False
  # 0.9999 (the reference's VP rate) averages over ~10k steps, longer than the whole run.
  model.ema_rate = 0.995
  model.normalization = 'GroupNorm'
  model.nonlinearity = 'swish'
  model.nf = 32
  model.ch_mult = (1, 2)
  model.num_res_blocks = 1
  model.attn_resolutions = ()
  model.resamp_with_conv = True
  model.conditional = True
  model.fir = False
  model.fir_kernel = (1, 3, 3, 1)
  model.skip_rescale = True
  model.resblock_type = 'biggan'
  model.progressive = 'none'
  model.progressive_input = 'none'
  model.progressive_combine = 'sum'
  model.attention_type = 'ddpm'
  model.init_scale = 0.
  model.conv_size = 3

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
