"""Class names of the labelled data sets, and `spell`: their character tokens for
text (spelling) conditioning."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from scoresde.data.sources import TFDS_NAMES

_DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# Class names of the labelled data sets, for text (spelling) conditioning and for display.
LABEL_NAMES = {
    "digits": _DIGIT_NAMES,
    "digits_color": _DIGIT_NAMES,
    "mnist": _DIGIT_NAMES,
    "svhn_cropped": _DIGIT_NAMES,
    "cifar10": ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
    "fashion_mnist": ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot"),
}
# Tokens of `spell`: 0 is padding, 1..26 the letters a..z, 27 any other character.
SPELLING_VOCAB_SIZE = 28


def label_names(name: str) -> tuple[str, ...]:
    """The class names of data set `name` (its labels index them)."""
    key = TFDS_NAMES.get(name, name)
    if key not in LABEL_NAMES:
        raise ValueError(f"No class names known for data set {name!r}; known: {', '.join(sorted(LABEL_NAMES))}.")
    return LABEL_NAMES[key]


def spell(texts: Sequence[str], length: int) -> np.ndarray:
    """Character tokens `(len(texts), length)` int32 of lower-cased texts, zero-padded.

    A toy stand-in for a text encoder's input: a cross-attention model conditioned on
    `spell(["seven"], 8)` learns its own embedding of the letters.
    """
    tokens = np.zeros((len(texts), length), np.int32)
    for i, text in enumerate(texts):
        if len(text) > length:
            raise ValueError(f"{text!r} has {len(text)} characters; the model reads at most {length}.")
        for j, c in enumerate(text.lower()):
            tokens[i, j] = ord(c) - ord("a") + 1 if "a" <= c <= "z" else SPELLING_VOCAB_SIZE - 1
    return tokens
