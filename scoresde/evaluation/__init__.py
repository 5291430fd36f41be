"""Sample-quality evaluation: FID / FD-digits, KID and Inception Score.

Metrics on features (`metrics`): `frechet_distance`, `kid`, `inception_score`,
streaming `FeatureStats`, `Stats` with `save_stats` / `load_stats`; in pixel space, for
super-resolution, `psnr` and `patch_frechet_distance` (FD of all 4x4 patches).

Feature spaces (`feature_spaces`), each result naming its own:
  - "inception_v3_fid": the FID Inception-v3 (`inception`), from locally converted
    pytorch-fid weights; its Fréchet distance is the FID.
  - "digits_classifier": the bundled 8x8-digits classifier (`digits`); its Fréchet
    distance is "FD-digits", never to be reported as FID.
  - "pixels_8x8": images average-pooled to 8 x 8, no network; its Fréchet distance is
    "FD-pixels8", an offline stand-in where no feature network exists (photos).

A trained workdir (`workdir`): `evaluate_workdir` (samples in resumable chunks, then the
metrics), `dataset_stats` (a data set's reference statistics).
"""

from scoresde.evaluation.digits import digits_features, digits_logits, digits_split
from scoresde.evaluation.feature_spaces import (
    FD_NAMES,
    compute_features,
    compute_stats,
    evaluate,
    fd_from_stats,
)
from scoresde.evaluation.inception import InceptionV3FID, inception_features, load_variables
from scoresde.evaluation.metrics import (
    FeatureStats,
    Stats,
    frechet_distance,
    inception_score,
    kid,
    image_patches,
    load_stats,
    patch_frechet_distance,
    polynomial_mmd2,
    psnr,
    save_stats,
    stats_from_features,
)
from scoresde.evaluation.workdir import dataset_stats, evaluate_workdir
