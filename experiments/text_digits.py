"""A toy text encoder, and the bundled digits stored with its embeddings of each label's
name, for text conditioning without a real encoder (nothing is downloaded or bundled).

The encoder is deterministic: a fixed random embedding table over characters
(N(0, 1) entries from a seeded generator), and a text's embedding is the sequence of its
characters' embeddings `(L, E)`, padded to the longest text with the embedding of a
padding character and a mask saying which positions are real, as a real encoder's
outputs and attention mask come (`toy_encoder`).

    python experiments/text_digits.py [--out runs/digits_text.npz] [--dim 32]

writes the digits' training split with `text_embeddings` (1438, 5, 32) and `text_mask`
(1438, 5) (the data set of the `digits_vp_text` config), and, beside it,
`<out stem>_names.npz` with the embeddings of the ten names "zero" ... "nine" (and
`labels` 0-9), for `scoresde sample --condition-file`.
"""

from __future__ import annotations

import argparse
import os

import numpy as np

from scoresde.data import digits_split, label_names

PAD = "\0"  # the padding character: embedded like any other, and masked out


def toy_encoder(texts, dim: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per-character embeddings of `texts` from a fixed random table over the 256 byte
    values: (embeddings `(n, L, dim)` float32, mask `(n, L)` bool), L the longest text's
    length; padding positions hold the padding character's (nonzero) embedding, mask False."""
    table = np.random.default_rng(seed).normal(size=(256, dim)).astype(np.float32)
    length = max(len(t) for t in texts)
    codes = np.array([[ord(c) % 256 for c in t.ljust(length, PAD)] for t in texts])
    return table[codes], np.array([[j < len(t) for j in range(length)] for t in texts])


def label_embeddings(dim: int = 32, seed: int = 0):
    """The toy encoder's embeddings of the ten digit names, and their mask: `(10, 5, dim)`, `(10, 5)`."""
    return toy_encoder(list(label_names("digits")), dim, seed)


def write_digits_text(path: str, dim: int = 32, seed: int = 0) -> tuple[str, str]:
    """The digits' training split with the toy encoder's embeddings of each label's name
    (`images`, `labels`, `text_embeddings`, `text_mask`) at `path`, and the ten names'
    embeddings (`text_embeddings`, `text_mask`, `labels`) at `<stem>_names.npz`."""
    images, labels, _, _ = digits_split(0)
    embeddings, mask = label_embeddings(dim, seed)
    names = os.path.splitext(path)[0] + "_names.npz"
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    np.savez(path, images=images, labels=labels, text_embeddings=embeddings[labels], text_mask=mask[labels])
    np.savez(names, text_embeddings=embeddings, text_mask=mask, labels=np.arange(10))
    return path, names


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/digits_text.npz")
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for path in write_digits_text(args.out, args.dim, args.seed):
        print(path)


if __name__ == "__main__":
    main()
