"""Score networks (Flax linen), their registry, and `get_score_fn`."""

from scoresde.models.utils import (
    PARAMETERIZATIONS,
    get_model,
    get_score_fn,
    model_names,
    noise_labels,
    output_to_score,
    register_model,
)
