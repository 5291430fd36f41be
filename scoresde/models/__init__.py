"""Score networks (Flax linen), their registry, and `get_score_fn`.

Importing this package registers the networks: ddpm, ncsnpp, ddpmpp (NCSN++ with
DDPM++ defaults), mlp, and the noise-conditional classifier (classifier).
"""

from scoresde.models.utils import (
    PARAMETERIZATIONS,
    check_condition,
    count_params,
    drop_condition,
    get_model,
    get_score_fn,
    get_sigmas,
    model_fields,
    model_kwargs,
    model_names,
    noise_labels,
    null_condition,
    output_to_score,
    param_shapes,
    register_model,
)

from scoresde.models import classifier, ddpm, mlp, ncsnpp  # noqa: E402,F401  (registers the networks)
from scoresde.models.classifier import NoiseConditionalClassifier, get_classifier_log_prob_fn  # noqa: E402
from scoresde.models.ddpm import DDPM  # noqa: E402
from scoresde.models.mlp import MLP  # noqa: E402
from scoresde.models.ncsnpp import DDPMpp, NCSNpp  # noqa: E402
