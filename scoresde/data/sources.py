"""Where examples come from: TFDS data sets read through `tfds.data_source`, the
bundled 8x8 digits, crops of scikit-learn's two sample photographs, folders of PNG/JPEG images and .npz files.

A source is random access: `len(source)` and `source.get_batch(indices)` ->
(images float32 (n, H, W, C) in [0, 1], labels int32 (n,)). `ArraySource` holds
everything in memory; `TFDSSource` decodes records of a tfds data source on demand.
(The 2-D toys are sampled, not stored: see `iterators.ToyIterator`.)
"""

from __future__ import annotations

import functools
import glob
import gzip
import importlib.util
import os
from typing import Callable

import numpy as np

from scoresde.data.images import (
    _check_image_array,
    _from_pil,
    _resize_all,
    _to_unit_float,
    central_crop,
    resize,
    resize_small,
)

TFDS_NAMES = {
    "cifar10": "cifar10",
    "svhn_cropped": "svhn_cropped",
    "svhn": "svhn_cropped",
    "celeb_a": "celeb_a",
    "celeba": "celeb_a",
    "cifar-10": "cifar10",
    "mnist": "mnist",
    "fashion_mnist": "fashion_mnist",
}
# Native (unresized) image shapes.
NATIVE_SHAPES = {
    "cifar10": (32, 32, 3),
    "svhn_cropped": (32, 32, 3),
    "mnist": (28, 28, 1),
    "fashion_mnist": (28, 28, 1),
}
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")


# ----------------------------------------------------------------------------- sources


class ArraySource:
    """In-memory images (N, H, W, C) float32 in [0, 1] and labels (N,)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray | None = None):
        self.images = np.asarray(images, np.float32)
        n = len(self.images)
        self.labels = np.zeros(n, np.int32) if labels is None else np.asarray(labels, np.int32)
        if len(self.labels) != n:
            raise ValueError(f"{len(self.labels)} labels for {n} images.")

    def __len__(self):
        return len(self.images)

    def get_batch(self, indices: np.ndarray):
        return self.images[indices], self.labels[indices]

    @property
    def element_shape(self):
        return self.images.shape[1:]


class TFDSSource:
    """A tfds random-access data source, decoded and preprocessed per element."""

    def __init__(self, source, preprocess: Callable[[np.ndarray], np.ndarray], element_shape):
        self.source = source
        self.preprocess = preprocess
        self.element_shape = tuple(element_shape)

    def __len__(self):
        return len(self.source)

    def get_batch(self, indices: np.ndarray):
        images = np.empty((len(indices),) + self.element_shape, np.float32)
        labels = np.zeros(len(indices), np.int32)
        keys = [int(i) for i in indices]
        try:  # one batched read where the source supports it
            records = self.source.__getitems__(keys)
        except Exception:  # noqa: BLE001  (e.g. tfds' mock sources)
            records = [self.source[i] for i in keys]
        for j, (i, record) in enumerate(zip(keys, records)):
            img = self.preprocess(np.asarray(record["image"]))
            if img.shape != self.element_shape:
                raise ValueError(f"record {i} preprocesses to shape {img.shape}, expected {self.element_shape}.")
            images[j] = img.astype(np.float32) / 255.0
            if "label" in record:
                labels[j] = int(record["label"])
        return images, labels


# ----------------------------------------------------------------------------- digits


@functools.cache
def _load_digits_cached():
    """scikit-learn's digits as (images float64 (1797, 8, 8) in 0..16, labels int32).

    Reads the CSV bundled with scikit-learn directly (what `load_digits` reads),
    which avoids importing scikit-learn (seconds); falls back to `load_digits`.
    """
    spec = importlib.util.find_spec("sklearn")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for loc in locations:
        path = os.path.join(loc, "datasets", "data", "digits.csv.gz")
        if os.path.exists(path):
            with gzip.open(path, "rt") as f:
                data = np.loadtxt(f, delimiter=",")
            return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(np.int32)
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.images.astype(np.float64), digits.target.astype(np.int32)


def _load_digits():
    images, labels = _load_digits_cached()
    return images.copy(), labels.copy()


def digits_split(seed: int = 0):
    """scikit-learn's 8x8 digits with a fixed train/test split (no download).

    The 1797 images are permuted with `np.random.default_rng(seed)`; the last 20%
    (359) of that order are the test set. Images are float32 (N, 8, 8, 1) in [0, 1]
    (the 17 grey levels 0..16 divided by 16), labels int32 (N,).

    Returns (train_images, train_labels, test_images, test_labels).
    """
    images, labels = _load_digits()
    images = (images / 16.0).astype(np.float32)[..., None]
    perm = np.random.default_rng(seed).permutation(len(images))
    images, labels = images[perm], labels[perm]
    n_test = int(round(0.2 * len(images)))
    n_train = len(images) - n_test
    return images[:n_train], labels[:n_train], images[n_train:], labels[n_train:]


# Saturated colours of `digits_color`: red, green, blue, yellow, cyan, magenta.
DIGIT_COLORS = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [0, 1, 1], [1, 0, 1]], np.float32)


def digits_color_split(seed: int = 0):
    """`digits_split` with each digit tinted in one of `DIGIT_COLORS` (random, fixed per
    image): (N, 8, 8, 3) images in [0, 1]; a small RGB set for colorization on a CPU."""
    train_x, train_y, test_x, test_y = digits_split(seed)
    rng = np.random.default_rng([seed, 1])
    colors = DIGIT_COLORS[rng.integers(len(DIGIT_COLORS), size=len(train_x) + len(test_x))]
    tint = lambda x, c: x * c[:, None, None, :]  # noqa: E731
    return tint(train_x, colors[: len(train_x)]), train_y, tint(test_x, colors[len(train_x) :]), test_y

# ----------------------------------------------------------------------------- photos

PHOTO_NAMES = ("china", "flower")  # scikit-learn's two sample photographs (640 x 427 JPEGs)


@functools.cache
def _load_photos_cached():
    """scikit-learn's sample photographs as uint8 (427, 640, 3) arrays, read directly (what
    `sklearn.datasets.load_sample_images` reads) without importing scikit-learn."""
    from PIL import Image

    spec = importlib.util.find_spec("sklearn")
    for loc in list(spec.submodule_search_locations or []) if spec else []:
        paths = [os.path.join(loc, "datasets", "images", f"{name}.jpg") for name in PHOTO_NAMES]
        if all(os.path.exists(p) for p in paths):
            return tuple(np.asarray(Image.open(p).convert("RGB")) for p in paths)
    raise FileNotFoundError("scikit-learn's sample images (china.jpg, flower.jpg) were not found; "
                            "install scikit-learn to use the 'photos' data set.")


def photos_split(image_size: int = 32, num_train: int = 2048, num_test: int = 256, seed: int = 0):
    """Random image_size x image_size crops of scikit-learn's two sample photographs, a small
    RGB data set with no download.

    Each photograph is resized (antialiased) so that its short side is 8 * image_size, and
    tiled into blocks of 2 * image_size (4 x 6 blocks); every crop lies inside one block. The
    blocks with (row + column) % 4 == 0 (6 of 24, spread over the photograph) give the test
    crops, the others the training crops, so no test pixel is ever seen in training. Per
    photograph, `num_train` and `num_test` crops, their blocks and positions drawn with
    `np.random.default_rng([seed, photo, split])`. Labels: the photograph (0 china, 1 flower).

    Returns (train_images, train_labels, test_images, test_labels), images float32
    (N, image_size, image_size, 3) in [0, 1].
    """
    if not (isinstance(image_size, (int, np.integer)) and image_size >= 2):
        raise ValueError(f"photos: image_size must be an integer >= 2, got {image_size!r}.")
    out = {"train": ([], []), "test": ([], [])}
    block = 2 * image_size
    for label, photo in enumerate(_load_photos_cached()):
        photo = resize_small(photo, 8 * image_size)
        rows, cols = photo.shape[0] // block, photo.shape[1] // block
        held_out = (np.arange(rows)[:, None] + np.arange(cols)[None, :]) % 4 == 0
        for split_id, (split, num) in enumerate((("train", num_train), ("test", num_test))):
            blocks = np.argwhere(held_out if split == "test" else ~held_out)
            rng = np.random.default_rng([seed, label, split_id])
            top_left = blocks[rng.integers(len(blocks), size=num)] * block + rng.integers(0, block - image_size + 1, (num, 2))
            crops = [photo[t : t + image_size, x : x + image_size] for t, x in top_left]
            out[split][0].append(np.stack(crops).astype(np.float32) / 255.0)
            out[split][1].append(np.full(num, label, np.int32))
    (train_x, train_y), (test_x, test_y) = ((np.concatenate(x), np.concatenate(y)) for x, y in out.values())
    return train_x, train_y, test_x, test_y


# ----------------------------------------------------------------------------- files


def load_npz(path: str, image_size: int | None = None):
    """Images from an .npz (or .npy) file -> (images float32 (N, H, W, C) in [0, 1], labels or None).

    The image array is the entry named `images`, `image`, `x` or `arr_0`, or the only
    entry; labels come from `labels`, `label` or `y` if present. Images are uint8 in
    [0, 255] or floats in [0, 1], shaped (N, H, W) or (N, H, W, C) with C = 1 or 3.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"No such file: {path}")
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"Could not read {path} as a NumPy .npz/.npy file: {e}") from e
    if isinstance(data, np.ndarray):
        images, labels = data, None
    else:
        keys = list(data.keys())
        image_key = next((k for k in ("images", "image", "x", "arr_0") if k in keys), None)
        if image_key is None:
            if len(keys) != 1:
                raise ValueError(
                    f"{path}: cannot tell which array holds the images among {keys}; name it 'images'."
                )
            image_key = keys[0]
        images = data[image_key]
        label_key = next((k for k in ("labels", "label", "y") if k in keys), None)
        labels = data[label_key] if label_key else None
    images = _check_image_array(np.asarray(images), path)
    if labels is not None and (np.ndim(labels) != 1 or len(labels) != len(images)):
        raise ValueError(f"{path}: labels must have shape ({len(images)},), got {np.shape(labels)}.")
    images = _resize_all(_to_unit_float(images, path), image_size)
    return images, labels


def load_image_folder(path: str, image_size: int | None = None, num_channels: int | None = None):
    """All PNG/JPEG files under a folder (recursively) -> float32 (N, H, W, C) in [0, 1].

    Grey images give C = 1, colour images C = 3; a folder mixing both needs
    `num_channels` (1 or 3) to convert them. Images of different sizes need
    `image_size`: each is resized (short side) and center-cropped to it.
    """
    from PIL import Image

    if not os.path.isdir(path):
        raise FileNotFoundError(f"No such folder: {path}")
    files = sorted(
        f for f in glob.glob(os.path.join(path, "**", "*"), recursive=True) if f.lower().endswith(IMAGE_EXTENSIONS)
    )
    if not files:
        raise ValueError(f"{path}: no PNG or JPEG files found (extensions {', '.join(IMAGE_EXTENSIONS)}).")
    if num_channels not in (None, 1, 3):
        raise ValueError(f"num_channels must be 1 or 3, got {num_channels!r}.")
    images, channels = [], set()
    for f in files:
        try:
            with Image.open(f) as im:
                im.load()
                grey = im.mode in ("1", "L", "LA", "I", "I;16", "F")
                channels.add(1 if grey else 3)
                mode = "L" if (num_channels or (1 if grey else 3)) == 1 else "RGB"
                arr = _from_pil(im.convert(mode), 1 if mode == "L" else 3)
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"Could not read image {f}: {e}") from e
        images.append(arr)
    if num_channels is None and len(channels) > 1:
        raise ValueError(
            f"{path}: the folder mixes grey and colour images; pass num_channels=1 or 3 to convert them."
        )
    sizes = {img.shape[:2] for img in images}
    if image_size is None:
        if len(sizes) > 1:
            raise ValueError(
                f"{path}: images have different sizes {sorted(sizes)[:5]}; pass image_size to resize them."
            )
    else:
        images = [
            img if img.shape[:2] == (image_size, image_size) else central_crop(resize_small(img, image_size), image_size)
            for img in images
        ]
    return np.stack(images).astype(np.float32) / 255.0, None


# ----------------------------------------------------------------------------- TFDS


class DatasetNotPreparedError(RuntimeError):
    """A TFDS data set is not available locally in a random-access format."""


def _tfds_preprocess(name: str, image_size: int | None):
    """(uint8 image -> uint8 image, output shape) as the reference preprocesses `name`."""
    if name == "celeb_a":
        size = image_size or 64
        return (lambda img: resize(central_crop(img, 140), (size, size))), (size, size, 3)
    if name.startswith("lsun/"):
        size = image_size or 256
        return (lambda img: central_crop(resize_small(img, size), size)), (size, size, 3)
    h, w, c = NATIVE_SHAPES[name]
    size = image_size or h
    if (size, size) == (h, w):
        return (lambda img: img), (h, w, c)
    return (lambda img: resize(img, (size, size))), (size, size, c)


def _tfds_split(name: str, split: str) -> str:
    if split in ("eval", "test", "validation"):
        return "validation" if (name == "celeb_a" or name.startswith("lsun/")) else "test"
    return split


def _prepare_hint(name: str, data_dir: str | None) -> str:
    dd = f" --data_dir={data_dir}" if data_dir else ""
    dd_py = f", data_dir={data_dir!r}" if data_dir else ""
    return (
        f"Prepare it once in a random-access format (array_record), e.g.\n"
        f"    tfds build {name} --file_format=array_record{dd}\n"
        f"or, in Python (needs TensorFlow for the download step),\n"
        f"    tfds.builder({name!r}{dd_py}).download_and_prepare(file_format='array_record')\n"
        f"(set TFDS_DATA_DIR or pass data_dir to read it from elsewhere)."
    )


def open_tfds(name: str, split: str, data_dir: str | None = None):
    """`tfds.data_source(name, split)` without downloading: a clear error if not prepared."""
    import tensorflow_datasets as tfds

    try:
        return tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except Exception as e:  # noqa: BLE001  (tfds raises many types here)
        where = data_dir or os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets")
        raise DatasetNotPreparedError(
            f"The TFDS data set {name!r} (split {split!r}) is not available as random-access "
            f"data under {where}. {_prepare_hint(name, data_dir)}\n(tfds said: {type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''})"
        ) from e
