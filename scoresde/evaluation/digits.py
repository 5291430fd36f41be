"""Offline feature space for the bundled 8x8 digits (feature space "digits_classifier").

A small MLP classifier, 64 -> 128 -> 64 -> 10 with ReLUs, trained on the training
split of scikit-learn's digits, `scoresde.data.digits_split(0)` (the split the
toolkit trains on: 1438 training, 359 test images). Its 64-d penultimate activations give
the Fréchet distance "FD-digits" (and KID, IS) for digits samples. These numbers live
in this classifier's feature space only: they are not FID and not comparable to it.

The weights ship as `assets/digits_classifier.npz` (about 70 KB); regenerate them with
`python -m scoresde.evaluation.train_digits` (seeded; under a minute on a CPU).
"""

from __future__ import annotations

import functools
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from scoresde.data import digits_split  # the one train/test split of the digits

FEATURE_SPACE = "digits_classifier"
ASSET = os.path.join(os.path.dirname(__file__), "assets", "digits_classifier.npz")


class DigitsClassifier(nn.Module):
    """images `(B, 8, 8, 1)` in [0, 1] -> (features `(B, 64)`, logits `(B, 10)`)."""

    hidden: tuple[int, ...] = (128, 64)

    @nn.compact
    def __call__(self, x, train=False):
        h = jnp.reshape(jnp.asarray(x, jnp.float32), (x.shape[0], -1))
        for i, width in enumerate(self.hidden):
            h = nn.relu(nn.Dense(width)(h))
            if i < len(self.hidden) - 1:
                h = nn.Dropout(0.2, deterministic=not train)(h)
        return h, nn.Dense(10)(h)


@functools.lru_cache(maxsize=1)
def load_params(path=ASSET):
    with np.load(path) as f:
        return traverse_util.unflatten_dict({k: jnp.asarray(f[k]) for k in f.files}, sep="/")


@jax.jit
def _apply(params, images):
    return DigitsClassifier().apply({"params": params}, images)


def digits_features(images):
    """Penultimate features `(B, 64)` of images `(B, 8, 8, 1)` in [0, 1]."""
    return _apply(load_params(), images)[0]


def digits_logits(images):
    """Class logits `(B, 10)` of images `(B, 8, 8, 1)` in [0, 1]."""
    return _apply(load_params(), images)[1]


def digits_accuracy(images, labels) -> float:
    """Fraction of images `(B, 8, 8, 1)` in [0, 1] that the classifier assigns to labels `(B,)`."""
    return float(np.mean(np.argmax(np.asarray(digits_logits(images)), -1) == np.asarray(labels)))


def train_classifier(steps=10000, batch_size=128, lr=2e-3, seed=0):
    """Train `DigitsClassifier` on the training split of `digits_split` with Adam(W),
    dropout and random one-pixel shifts. Returns (params, test accuracy)."""
    import optax

    x_train, y_train, x_test, y_test = digits_split(0)
    model = DigitsClassifier()
    key = jax.random.PRNGKey(seed)
    params = model.init(key, x_train[:1])["params"]
    tx = optax.adamw(optax.cosine_decay_schedule(lr, steps), weight_decay=1e-4)
    opt_state = tx.init(params)

    def shift(img, k):  # random translation by up to one pixel, zero fill
        dy, dx = jax.random.randint(k, (2,), -1, 2)
        padded = jnp.pad(img, ((1, 1), (1, 1), (0, 0)))
        return jax.lax.dynamic_slice(padded, (1 + dy, 1 + dx, 0), img.shape)

    @jax.jit
    def step(params, opt_state, key):
        k_idx, k_shift, k_drop = jax.random.split(key, 3)
        idx = jax.random.choice(k_idx, len(x_train), (batch_size,), replace=False)
        x = jax.vmap(shift)(jnp.asarray(x_train)[idx], jax.random.split(k_shift, batch_size))

        def loss_fn(p):
            logits = model.apply({"params": p}, x, train=True, rngs={"dropout": k_drop})[1]
            return optax.softmax_cross_entropy_with_integer_labels(logits, jnp.asarray(y_train)[idx]).mean()

        grads = jax.grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    for k in jax.random.split(key, steps):
        params, opt_state = step(params, opt_state, k)
    acc = float(np.mean(np.argmax(_apply(params, x_test)[1], -1) == y_test))
    return params, acc

