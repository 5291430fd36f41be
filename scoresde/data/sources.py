"""Where examples come from: TFDS data sets read through `tfds.data_source`, the
bundled 8x8 digits, crops of scikit-learn's two sample photographs, folders of PNG/JPEG images and .npz files.

A source is random access: `len(source)` and `source.get_batch(indices)` -> a dict with
"image" float32 (n, H, W, C) in [0, 1], "label" int32 (n,) and any per-example arrays
stored beside them ("text_embedding" (n, L, E): a text encoder's precomputed outputs,
padding folded in as zero vectors, `conditioning.embedding_condition`). `ArraySource`
holds everything in memory; `TFDSSource` decodes records of a tfds data source on demand.
(The 2-D toys are sampled, not stored: see `iterators.ToyIterator`.)

Text embeddings are stored as the arrays `text_embeddings` (N, L, E) float and, optionally,
`text_mask` (N, L) (nonzero: a real position): in an .npz data set beside its images, and
for a folder of images in its sidecar file `text_embeddings.npz`, which adds `files` (N,),
each image's path relative to the folder ("a/001.png"), to match rows to images.
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
# The batch key of text embeddings (also the name of that condition, `training.condition`),
# the arrays that store them, and an image folder's sidecar file of them.
TEXT_EMBEDDING = "text_embedding"
TEXT_EMBEDDINGS_KEY, TEXT_MASK_KEY, TEXT_FILES_KEY = "text_embeddings", "text_mask", "files"
TEXT_SIDECAR = "text_embeddings.npz"


# ----------------------------------------------------------------------------- sources


class ArraySource:
    """In-memory images (N, H, W, C) float32 in [0, 1], labels (N,) and `extras`, other
    per-example arrays by batch key (e.g. {"text_embedding": (N, L, E)})."""

    def __init__(self, images: np.ndarray, labels: np.ndarray | None = None, extras: dict | None = None):
        self.images = np.asarray(images, np.float32)
        n = len(self.images)
        self.labels = np.zeros(n, np.int32) if labels is None else np.asarray(labels, np.int32)
        if len(self.labels) != n:
            raise ValueError(f"{len(self.labels)} labels for {n} images.")
        self.extras = {k: np.asarray(v) for k, v in (extras or {}).items()}
        for k, v in self.extras.items():
            if len(v) != n:
                raise ValueError(f"{len(v)} entries of {k!r} for {n} images.")

    def __len__(self):
        return len(self.images)

    def get_batch(self, indices: np.ndarray) -> dict:
        return {"image": self.images[indices], "label": self.labels[indices],
                **{k: v[indices] for k, v in self.extras.items()}}

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

    def get_batch(self, indices: np.ndarray) -> dict:
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
        return {"image": images, "label": labels}


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

PHOTO_FILES = ("china.jpg", "flower.jpg")
PHOTO_SIZES = (16, 32)  # the crops' native sizes: the photographs halved, or at full resolution


@functools.cache
def _load_photos_cached(reduce: int = 2):
    """scikit-learn's two sample photographs (what `load_sample_images` reads, 640 x 427)
    reduced by `reduce` x `reduce` block means (PIL's box `reduce`): uint8 (214, 320, 3)
    each for 2."""
    from PIL import Image

    spec = importlib.util.find_spec("sklearn")
    folders = [os.path.join(loc, "datasets", "images") for loc in (spec.submodule_search_locations or [])] if spec else []
    folder = next((f for f in folders if all(os.path.exists(os.path.join(f, n)) for n in PHOTO_FILES)), None)
    if folder is None:
        raise FileNotFoundError("The 'photos' data set reads scikit-learn's sample images (china.jpg, flower.jpg): "
                                "pip install scikit-learn.")
    photos = []
    for name in PHOTO_FILES:
        with Image.open(os.path.join(folder, name)) as im:
            photos.append(np.asarray(im.convert("RGB").reduce(reduce)))
    return tuple(photos)


def _windows(photo: np.ndarray, size: int, stride: int, keep) -> np.ndarray:
    """The size x size windows of an image (H, W, C) at the stride whose pixel mask (size, size)
    satisfies `keep`."""
    h, w = photo.shape[:2]
    return np.stack([photo[i:i + size, j:j + size] for i in range(0, h - size + 1, stride)
                     for j in range(0, w - size + 1, stride) if keep(i, j)])


def photos_split(image_size: int = 16):
    """Crops of scikit-learn's two sample photographs (no download), a small RGB set for a CPU.

    At image_size 16 each photo, halved to 320x214, is cut into 32 x 32 tiles; the tiles in
    odd rows and odd columns (a quarter, spread over the photo) are held out. The test crops
    are the 16x16 windows at stride 8 inside them (135 per photo), the training crops every
    window at stride 4 that touches none of them (2134 per photo), so the two share no pixel.
    image_size 32 is the same windows of the full-resolution photos (each 32 x 32 crop's 2x2
    block means are the 16 x 16 crop, up to uint8 rounding). Images are float32
    (N, image_size, image_size, 3) in [0, 1]; the label is the photo (0 china, 1 flower).

    Returns (train_images, train_labels, test_images, test_labels).
    """
    if image_size not in PHOTO_SIZES:
        raise ValueError(f"photos: image_size must be one of {PHOTO_SIZES} (or, through get_dataset, a size "
                         f"dividing 16: block means), got {image_size!r}.")
    scale = image_size // PHOTO_SIZES[0]
    size, tile = image_size, 32 * scale
    parts = {"train": ([], []), "test": ([], [])}
    for label, photo in enumerate(_load_photos_cached(2 // scale)):
        held_out = np.zeros(photo.shape[:2], bool)
        for i in range(1, photo.shape[0] // tile, 2):
            for j in range(1, photo.shape[1] // tile, 2):
                held_out[i * tile:(i + 1) * tile, j * tile:(j + 1) * tile] = True
        windows = {"train": _windows(photo, size, 4 * scale, lambda i, j: not held_out[i:i + size, j:j + size].any()),
                   "test": _windows(photo, size, 8 * scale, lambda i, j: held_out[i:i + size, j:j + size].all())}
        for split, crops in windows.items():
            parts[split][0].append(crops)
            parts[split][1].append(np.full(len(crops), label, np.int32))
    out = []
    for split in ("train", "test"):
        out += [np.concatenate(parts[split][0]).astype(np.float32) / 255.0, np.concatenate(parts[split][1])]
    return tuple(out)


# ----------------------------------------------------------------------------- files


def read_text_embeddings(data, path: str, rows=None) -> np.ndarray | None:
    """The condition `(n, L, E)` float32 of an opened .npz's `text_embeddings` (n, L, E) and
    optional `text_mask` (n, L) (`conditioning.embedding_condition`: padding folded in), their
    rows `rows` only if given; None if it has no text embeddings. ValueError if malformed."""
    from scoresde.conditioning import embedding_condition

    if TEXT_EMBEDDINGS_KEY not in data:
        if TEXT_MASK_KEY in data:
            raise ValueError(f"{path}: '{TEXT_MASK_KEY}' without '{TEXT_EMBEDDINGS_KEY}'.")
        return None
    embeddings = np.asarray(data[TEXT_EMBEDDINGS_KEY])
    mask = np.asarray(data[TEXT_MASK_KEY]) if TEXT_MASK_KEY in data else None
    if embeddings.ndim != 3 or not np.issubdtype(embeddings.dtype, np.number):
        raise ValueError(f"{path}: '{TEXT_EMBEDDINGS_KEY}' must be numbers of shape (N, L, E), got "
                         f"{embeddings.dtype} {embeddings.shape}.")
    if rows is not None:
        embeddings, mask = embeddings[rows], None if mask is None else mask[rows]
    try:
        return embedding_condition(embeddings, mask)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None


def load_npz(path: str, image_size: int | None = None):
    """Images from an .npz (or .npy) file -> (images float32 (N, H, W, C) in [0, 1], labels
    or None, extras: {"text_embedding": (N, L, E)} or {}).

    The image array is the entry named `images`, `image`, `x` or `arr_0`, or the only
    entry; labels come from `labels`, `label` or `y` if present, text embeddings from
    `text_embeddings` (N, L, E) with the optional padding mask `text_mask` (N, L). Images
    are uint8 in [0, 255] or floats in [0, 1], shaped (N, H, W) or (N, H, W, C) with C = 1 or 3.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"No such file: {path}")
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"Could not read {path} as a NumPy .npz/.npy file: {e}") from e
    extras = {}
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
        text = read_text_embeddings(data, path)
        if text is not None and len(text) != len(images):
            raise ValueError(f"{path}: {len(text)} rows of '{TEXT_EMBEDDINGS_KEY}' for {len(images)} images.")
        extras = {} if text is None else {TEXT_EMBEDDING: text}
    images = _check_image_array(np.asarray(images), path)
    if labels is not None and (np.ndim(labels) != 1 or len(labels) != len(images)):
        raise ValueError(f"{path}: labels must have shape ({len(images)},), got {np.shape(labels)}.")
    images = _resize_all(_to_unit_float(images, path), image_size)
    return images, labels, extras


def load_image_folder(path: str, image_size: int | None = None, num_channels: int | None = None):
    """All PNG/JPEG files under a folder (recursively), in sorted order -> (images float32
    (N, H, W, C) in [0, 1], None (no labels), extras: {"text_embedding": (N, L, E)} from the
    sidecar `text_embeddings.npz` in the folder, or {}).

    Grey images give C = 1, colour images C = 3; a folder mixing both needs
    `num_channels` (1 or 3) to convert them. Images of different sizes need
    `image_size`: each is resized (short side) and center-cropped to it. The sidecar
    holds `files` (paths relative to the folder), `text_embeddings` and optionally
    `text_mask`, a row per file; every image needs one.
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
    return np.stack(images).astype(np.float32) / 255.0, None, _sidecar_embeddings(path, files)


def _sidecar_embeddings(folder: str, files: list[str]) -> dict:
    """The text embeddings of an image folder's `files` from its sidecar file, or {}."""
    sidecar = os.path.join(folder, TEXT_SIDECAR)
    if not os.path.exists(sidecar):
        return {}
    try:
        data = np.load(sidecar, allow_pickle=False)
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"Could not read {sidecar} as a NumPy .npz file: {e}") from e
    if TEXT_FILES_KEY not in data or TEXT_EMBEDDINGS_KEY not in data:
        raise ValueError(f"{sidecar}: needs the arrays '{TEXT_FILES_KEY}' (image paths relative to the folder) and "
                         f"'{TEXT_EMBEDDINGS_KEY}' (a row per file); it has {list(data.keys())}.")
    row = {str(name).replace(os.sep, "/"): i for i, name in enumerate(data[TEXT_FILES_KEY])}
    relative = [os.path.relpath(f, folder).replace(os.sep, "/") for f in files]
    missing = [f for f in relative if f not in row]
    if missing:
        raise ValueError(f"{sidecar}: no text embedding for {len(missing)} of the {len(files)} images, e.g. "
                         f"{missing[0]!r} (its '{TEXT_FILES_KEY}' names them relative to the folder).")
    if len(data[TEXT_EMBEDDINGS_KEY]) != len(row):
        raise ValueError(f"{sidecar}: {len(data[TEXT_EMBEDDINGS_KEY])} rows of '{TEXT_EMBEDDINGS_KEY}' for "
                         f"{len(row)} '{TEXT_FILES_KEY}'.")
    return {TEXT_EMBEDDING: read_text_embeddings(data, sidecar, rows=np.array([row[f] for f in relative]))}


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
