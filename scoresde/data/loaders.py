"""`get_dataset`: a data set's name -> its iterator of batches (the package's entry point)."""

from __future__ import annotations

import os

from scoresde.data.images import downscale
from scoresde.data.iterators import DataIterator, ToyIterator
from scoresde.data.sources import (
    TFDS_NAMES,
    ArraySource,
    TFDSSource,
    _tfds_preprocess,
    _tfds_split,
    digits_color_split,
    digits_split,
    load_image_folder,
    load_npz,
    open_tfds,
    photos_split,
)


def get_dataset(
    name: str,
    split: str = "train",
    batch_size: int = 128,
    image_size: int | None = None,
    centered: bool = False,
    random_flip: bool | None = None,
    *,
    shuffle: bool | None = None,
    seed: int = 0,
    num_epochs: int | None = None,
    drop_remainder: bool = True,
    uniform_dequantization: bool = False,
    num_channels: int | None = None,
    data_dir: str | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
):
    """An iterator of batches with a checkpointable position (see the `scoresde.data` docstring).

    Args:
      name: a TFDS name (cifar10, svhn_cropped, celeb_a, lsun/<category>, mnist,
        fashion_mnist; case-insensitive, so the reference's CIFAR10, SVHN and CELEBA
        work), "digits", "digits_color", "photos", "toy:<name>" (or a toy's bare name), or
        a path to a folder of PNG/JPEG images or to an .npz file (either may hold text
        embeddings, which the batches then carry as "text_embedding": see `sources`).
      split: "train" or "test" ("eval"; CelebA and LSUN use their validation split).
        For digits the split of `digits_split(seed=0)`, for photos `photos_split`; for
        folders and .npz files and toys, the same data whatever the split.
      batch_size: the global batch size (divisible by the number of processes).
      image_size: output height = width; None keeps the native size (CelebA 64,
        LSUN 256 by default; photos 16, or 32 for full-resolution crops). digits and
        photos at a size dividing theirs (8, 16) are the means of pixel blocks
        (`images.downscale`), the low-resolution images of super-resolution.
      centered: scale to [-1, 1] instead of [0, 1].
      random_flip: random horizontal flips; default True for training images,
        False for evaluation, toys and digits.
      shuffle: default True for "train", False otherwise.
      seed: the seed of shuffling, flips and dequantization (toys: of the samples).
      num_epochs: None runs forever (default for "train"); evaluation defaults to 1.
      drop_remainder: drop the last incomplete batch of each epoch (keep it for a
        full evaluation pass in one process; with several processes the last batch
        would be split unevenly).
      uniform_dequantization: add U(0, 1)/256 noise to 8-bit data (the reference's
        `data.uniform_dequantization`).
      num_channels: for image folders that mix grey and colour images.
      data_dir: the TFDS data directory.
      process_index, process_count: this process's slice (default: JAX's).
    """
    train = split == "train"
    kwargs = dict(process_index=process_index, process_count=process_count)
    if not os.path.exists(name):
        name = name.lower()  # the reference configs spell CIFAR10, SVHN, CELEBA
    toy_name = name[4:] if name.startswith("toy:") else name
    from scoresde import analytic

    if toy_name in analytic.TOY_TARGETS:
        return ToyIterator(analytic.toy_target(toy_name), batch_size, seed=seed, **kwargs)

    shuffle = train if shuffle is None else shuffle
    num_epochs = (None if train else 1) if num_epochs is None else num_epochs
    common = dict(
        shuffle=shuffle,
        seed=seed,
        centered=centered,
        uniform_dequantization=uniform_dequantization,
        num_epochs=num_epochs,
        drop_remainder=drop_remainder,
        **kwargs,
    )
    if name in ("digits", "digits_color"):
        train_x, train_y, test_x, test_y = (digits_split if name == "digits" else digits_color_split)(0)
        x, y = (train_x, train_y) if train else (test_x, test_y)
        return DataIterator(ArraySource(downscale(x, image_size), y), batch_size, random_flip=bool(random_flip),
                            **common)
    if name == "photos":
        native = 32 if image_size == 32 else 16
        train_x, train_y, test_x, test_y = photos_split(native)
        x, y = (train_x, train_y) if train else (test_x, test_y)
        if image_size is not None and (image_size > native or native % image_size):
            raise ValueError(f"photos: image_size must be 32, 16 or a size dividing 16, got {image_size!r}.")
        return DataIterator(ArraySource(downscale(x, image_size), y), batch_size,
                            random_flip=train if random_flip is None else random_flip, **common)

    random_flip = train if random_flip is None else random_flip

    if name in TFDS_NAMES or name.startswith("lsun/"):
        tfds_name = TFDS_NAMES.get(name, name)
        preprocess, shape = _tfds_preprocess(tfds_name, image_size)
        source = open_tfds(tfds_name, _tfds_split(tfds_name, split), data_dir)
        return DataIterator(TFDSSource(source, preprocess, shape), batch_size, random_flip=random_flip, **common)

    if os.path.isdir(name):
        images, labels, extras = load_image_folder(name, image_size, num_channels)
    elif name.endswith((".npz", ".npy")):
        images, labels, extras = load_npz(name, image_size)
    else:
        raise ValueError(
            f"Unknown data set {name!r}: expected one of {', '.join(sorted(set(TFDS_NAMES)))}, lsun/<category>, "
            f"digits, digits_color, photos, toy:<{'|'.join(analytic.TOY_TARGETS)}>, a folder of PNG/JPEG images or an .npz file."
        )
    return DataIterator(ArraySource(images, labels, extras), batch_size, random_flip=random_flip, **common)
