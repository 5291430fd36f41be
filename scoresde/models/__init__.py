"""Score networks (Flax linen), their registry, and `get_score_fn`.

Importing this package registers the networks: ddpm, ncsnpp, ddpmpp (NCSN++ with
DDPM++ defaults), dit (the Diffusion Transformer), mlp, the noise-conditional
classifier (classifier) and latent diffusion's KL autoencoder (autoencoder).
"""

from scoresde.conditioning import check_condition, drop_condition, null_condition
from scoresde.models.registry import (
    count_params,
    get_model,
    get_sigmas,
    model_fields,
    model_kwargs,
    model_names,
    param_shapes,
    register_model,
)
from scoresde.score import PARAMETERIZATIONS, NetworkScore, get_score_fn, noise_labels, output_to_score

from scoresde.models import autoencoder, classifier, ddpm, dit, mlp, ncsnpp  # noqa: E402,F401  (registers the networks)
from scoresde.models.classifier import NetworkClassifier, NoiseConditionalClassifier, get_classifier_log_prob_fn  # noqa: E402
from scoresde.models.autoencoder import Autoencoder  # noqa: E402
from scoresde.models.ddpm import DDPM  # noqa: E402
from scoresde.models.dit import DIT_SIZES, DiT, dit_from_name  # noqa: E402
from scoresde.models.mlp import MLP  # noqa: E402
from scoresde.models.ncsnpp import DDPMpp, NCSNpp  # noqa: E402
