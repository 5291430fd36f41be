"""Regenerate the bundled digits classifier: `python -m scoresde.evaluation.train_digits`.

Trains `digits.DigitsClassifier` (seeded) and writes `assets/digits_classifier.npz`.
"""

import os

import jax
import numpy as np
from flax import traverse_util

from scoresde.evaluation.digits import ASSET, train_classifier

if __name__ == "__main__":
    params, acc = train_classifier()
    flat = traverse_util.flatten_dict(jax.device_get(params), sep="/")
    os.makedirs(os.path.dirname(ASSET), exist_ok=True)
    with open(ASSET, "wb") as f:
        np.savez_compressed(f, **{k: np.asarray(v, np.float32) for k, v in flat.items()})
    print(f"test accuracy {acc:.4f}; wrote {ASSET} ({os.path.getsize(ASSET)} bytes)")
