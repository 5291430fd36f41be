"""Shared by the digits noise-conditional classifiers (for classifier guidance)."""


def as_classifier(config):
  """A score-model digits config -> the config of a classifier p_t(y | x(t)) under the same SDE.

  The classifier is the DDPM++ encoder half (`models.classifier`), with the score
  model's time embedding (positional t * 999 for VP, Fourier of sigma for VE).
  """
  config.training.objective = 'classifier'
  config.training.snapshot_sampling = False
  config.training.reduce_mean = True
  model = config.model
  keep = {'name', 'parameterization', 'ema_rate', 'sigma_min', 'sigma_max', 'num_scales', 'beta_min',
          'beta_max', 'nf', 'ch_mult', 'num_res_blocks', 'dropout', 'embedding_type', 'fourier_scale',
          'num_classes'}
  for key in list(model.keys()):
    if key not in keep:
      del model[key]
  model.name = 'classifier'
  model.num_classes = 10
  model.nf = 32
  model.ch_mult = (1, 2)
  model.num_res_blocks = 1
  model.dropout = 0.1
  return config
