"""NCSN++ on CelebA-HQ at 1024 x 1024 with the continuous VE SDE:
score_sde configs/ve/celebahq_ncsnpp_continuous.py.

The reference file builds its config from scratch; here it starts from
default_lsun_configs and sets every value the reference file sets (below), so that
the fields the reference file forgot come from the defaults (see the FIX notes).
"""

from scoresde.configs.default_lsun_configs import get_default_configs


def get_config():
  config = get_default_configs()
  # training
  training = config.training
  training.batch_size = 8
  training.n_iters = 2400001
  training.snapshot_freq = 50000
  training.log_freq = 50
  training.eval_freq = 100
  training.snapshot_freq_for_preemption = 5000
  training.snapshot_sampling = True
  training.sde = 'vesde'
  training.continuous = True
  training.likelihood_weighting = False
  training.reduce_mean = False
  # FIX(reference): the reference file has no training.n_jitted_steps, which its run_lib reads
  # (AttributeError); 1 is this config's value in score_sde's earlier configs/ncsnpp/celebahq.py.
  training.n_jitted_steps = 1

  # sampling
  sampling = config.sampling
  sampling.method = 'pc'
  sampling.predictor = 'reverse_diffusion'
  sampling.corrector = 'langevin'
  sampling.snr = 0.15
  sampling.n_steps_each = 1
  sampling.noise_removal = True

  # eval
  # FIX(reference): the reference file sets only four eval fields (these two, begin_ckpt and
  # end_ckpt, which nothing here reads: see configs/README.md); bpd_dataset, which
  # `scoresde likelihood` reads, now comes from the defaults.
  evaluate = config.eval
  evaluate.batch_size = 1024
  evaluate.num_samples = 50000

  # data
  data = config.data
  # reference: dataset 'CelebAHQ' read from a TFRecords file (data.tfrecords_path). Here: a
  # folder of PNG/JPEG images or an .npz file; point data.dataset at yours.
  data.dataset = 'data/celebahq_1024'
  data.image_size = 1024
  data.centered = False
  data.random_flip = True
  data.uniform_dequantization = False
  data.num_channels = 3

  # model
  model = config.model
  model.name = 'ncsnpp'
  model.scale_by_sigma = True
  model.sigma_max = 1348.
  model.num_scales = 2000
  model.ema_rate = 0.9999
  model.sigma_min = 0.01
  model.normalization = 'GroupNorm'
  model.nonlinearity = 'swish'
  model.nf = 16
  model.ch_mult = (1, 2, 4, 8, 16, 32, 32, 32)
  model.num_res_blocks = 1
  model.attn_resolutions = (16,)
  model.dropout = 0.
  model.resamp_with_conv = True
  model.conditional = True
  model.fir = True
  model.fir_kernel = (1, 3, 3, 1)
  model.skip_rescale = True
  model.resblock_type = 'biggan'
  model.progressive = 'output_skip'
  model.progressive_input = 'input_skip'
  model.progressive_combine = 'sum'
  model.attention_type = 'ddpm'
  model.init_scale = 0.
  model.fourier_scale = 16.
  model.conv_size = 3
  model.embedding_type = 'fourier'

  # optim
  optim = config.optim
  optim.weight_decay = 0.
  optim.optimizer = 'Adam'
  optim.lr = 2e-4
  optim.beta1 = 0.9
  # FIX(reference): the reference file also sets optim.amsgrad = False (a leftover of the PyTorch
  # code; the JAX optimizer has no such option); dropped. It also imports torch for config.device.
  optim.eps = 1e-8
  optim.warmup = 5000
  optim.grad_clip = 1.

  config.seed = 42

  return config
