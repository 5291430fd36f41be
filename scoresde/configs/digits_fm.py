"""CPU-sized: digits_vp's DDPM++ U-Net trained by flow matching on the rectified-flow path
x_t = (1 - t) x0 + t z (Lipman et al. 2022, Liu et al. 2022): the network outputs the
velocity u = z - x0 (`model.parameterization='velocity'`, turned into the score through
the path's coefficients exactly), the loss is ||u_hat - u||^2 with t ~ U(eps, T), and
snapshots use DPM-Solver++ (the probability-flow ODE of the path).
"""

from scoresde.configs import digits_vp


def get_config():
  config = digits_vp.get_config()
  training = config.training
  training.sde = 'rectified_flow'
  training.loss = 'flow_matching'
  training.t_sampling = 'uniform'

  config.model.parameterization = 'velocity'

  config.sampling.method = 'dpm_solver++'
  return config
