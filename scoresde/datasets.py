"""Training data: TFDS image sets, bundled digits, 2-D toys and the user's own images.

Everything goes through one entry point,

    it = get_dataset(name, split, batch_size, image_size, centered, random_flip, ...)
    batch = next(it)            # {"image": float32 (B_local, H, W, C), "label": int32 (B_local,)}
    pos = it.get_state()        # {"epoch": e, "index": i}: JSON-serializable
    it.set_state(pos)           # resume exactly there

`batch_size` is the *global* batch; each process gets its slice of every global
batch (`process_index`/`process_count`, the JAX process by default), so the union
over processes is exactly the batch a single process would see. The order is a
deterministic function of (seed, epoch): epoch e visits a permutation drawn from
`np.random.default_rng([seed, e])`, and the random flips / dequantization noise of
batch i of epoch e come from `default_rng([seed, e, i])`. A position (epoch, index)
therefore determines everything that follows, and resuming is exact.

Values: images lie in [0, 1], or in [-1, 1] with `centered=True` (the reference's
`data.centered`). The 2-D toy data sets are returned unscaled.

Names:
  - TFDS, read through `tfds.data_source` (array_record files, no TensorFlow):
    cifar10, svhn_cropped (alias svhn), celeb_a (alias celeba; center crop 140, then
    resize), lsun/<category> (resize the short side, then center crop), mnist,
    fashion_mnist. They must be prepared first (the error says how).
  - digits: scikit-learn's bundled 8x8 handwritten digits (no download), 17 grey
    levels; `digits_split` fixes the train/test split. digits_color: the same, each
    digit tinted in one of six saturated colours (for colorization).
  - toy:<name> (or the bare name) for `scoresde.analytic.toy_target`: 8gaussians,
    grid, moons, swissroll, checkerboard. An infinite stream of fresh samples.
  - a path: a folder of PNG/JPEG images, or an .npz file holding an image array.
"""

from __future__ import annotations

import functools
import glob
import gzip
import importlib.util
import math
import os
from typing import Callable, Sequence

import numpy as np

__all__ = [
    "DataIterator",
    "DatasetNotPreparedError",
    "ToyIterator",
    "digits_split",
    "get_data_inverse_scaler",
    "get_data_scaler",
    "get_dataset",
    "load_image_folder",
    "load_npz",
]

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


class DatasetNotPreparedError(RuntimeError):
    """A TFDS data set is not available locally in a random-access format."""


# ----------------------------------------------------------------------------- scaling


def get_data_scaler(centered: bool) -> Callable:
    """[0, 1] -> [-1, 1] if centered, else the identity (the reference's data scaler)."""
    return (lambda x: x * 2.0 - 1.0) if centered else (lambda x: x)


def get_data_inverse_scaler(centered: bool) -> Callable:
    """Inverse of `get_data_scaler`: model space back to [0, 1]."""
    return (lambda x: (x + 1.0) / 2.0) if centered else (lambda x: x)


# ----------------------------------------------------------------------------- image ops


def _to_pil(img: np.ndarray):
    from PIL import Image

    return Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)


def _from_pil(pil, channels: int) -> np.ndarray:
    arr = np.asarray(pil)
    return arr[..., None] if arr.ndim == 2 else arr[..., :channels]


def resize(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Antialiased bilinear resize of a uint8 image (H, W, C) to `size` = (h, w)."""
    from PIL import Image

    if img.shape[:2] == tuple(size):
        return img
    out = _to_pil(img).resize((size[1], size[0]), Image.BILINEAR)
    return _from_pil(out, img.shape[-1])


def central_crop(img: np.ndarray, size: int) -> np.ndarray:
    """The central size x size window of an image (H, W, C)."""
    h, w = img.shape[:2]
    if h < size or w < size:
        raise ValueError(f"cannot crop {size}x{size} from an image of size {h}x{w}.")
    top, left = (h - size) // 2, (w - size) // 2
    return img[top : top + size, left : left + size]


def resize_small(img: np.ndarray, size: int) -> np.ndarray:
    """Resize so that the shorter side equals `size`, keeping the aspect ratio."""
    h, w = img.shape[:2]
    ratio = size / min(h, w)
    return resize(img, (round(h * ratio), round(w * ratio)))


def _to_unit_float(images: np.ndarray, what: str) -> np.ndarray:
    """uint8 [0, 255] or float [0, 1] images -> float32 [0, 1], with clear errors."""
    images = np.asarray(images)
    if images.dtype == np.uint8:
        return images.astype(np.float32) / 255.0
    if np.issubdtype(images.dtype, np.integer):
        lo, hi = images.min(initial=0), images.max(initial=0)
        if lo < 0 or hi > 255:
            raise ValueError(f"{what}: integer images must lie in [0, 255], got values in [{lo}, {hi}].")
        return images.astype(np.float32) / 255.0
    if np.issubdtype(images.dtype, np.floating):
        if not np.all(np.isfinite(images)):
            raise ValueError(f"{what}: images contain NaN or infinite values.")
        lo, hi = float(images.min(initial=0.0)), float(images.max(initial=0.0))
        if lo < -1e-6 or hi > 1 + 1e-6:
            hint = " (they look centered in [-1, 1]: map them with (x + 1) / 2)" if lo >= -1 - 1e-6 and hi <= 1 + 1e-6 else ""
            hint = hint or (" (they look like [0, 255] values: store them as uint8)" if hi <= 255 else "")
            raise ValueError(f"{what}: float images must lie in [0, 1], got values in [{lo:.4g}, {hi:.4g}]{hint}.")
        return np.clip(images, 0.0, 1.0).astype(np.float32)
    raise ValueError(f"{what}: images must be uint8, integer or float arrays, got dtype {images.dtype}.")


def _check_image_array(images: np.ndarray, what: str) -> np.ndarray:
    """(N, H, W) or (N, H, W, C) with C in {1, 3} -> (N, H, W, C)."""
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4:
        raise ValueError(
            f"{what}: expected images of shape (N, H, W) or (N, H, W, C), got shape {images.shape}."
        )
    if images.shape[0] == 0:
        raise ValueError(f"{what}: no images.")
    c = images.shape[-1]
    if c not in (1, 3):
        hint = ""
        if images.shape[1] in (1, 3):
            hint = " It looks channels-first (N, C, H, W): transpose it to (N, H, W, C)."
        raise ValueError(
            f"{what}: images need 1 (grey) or 3 (RGB) channels in the last axis, got shape {images.shape}.{hint}"
        )
    return images


# ----------------------------------------------------------------------------- sources
#
# A source is random access: len(source) and source[i] -> (image float32 (H, W, C) in
# [0, 1], label int). `ArraySource` holds everything in memory; `TFDSSource` decodes
# records of a tfds data source on demand.


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


# ----------------------------------------------------------------------------- iterators


def _process_slice(global_size: int, process_index: int, process_count: int, even: bool) -> slice:
    if even:
        local = global_size // process_count
        return slice(process_index * local, (process_index + 1) * local)
    bounds = np.linspace(0, global_size, process_count + 1).round().astype(int)
    return slice(bounds[process_index], bounds[process_index + 1])


def _resolve_processes(process_index, process_count):
    if process_index is None or process_count is None:
        import jax

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} is not in [0, {process_count}).")
    return int(process_index), int(process_count)


def _check_batch(batch_size, process_count):
    if not (isinstance(batch_size, (int, np.integer)) and batch_size >= 1):
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}.")
    if batch_size % process_count:
        raise ValueError(
            f"The global batch size {batch_size} must be a multiple of the number of processes ({process_count})."
        )


class DataIterator:
    """Shuffled (or sequential) batches over a random-access source, with a position.

    Each `next()` returns this process's slice of global batch `index` of epoch
    `epoch`, then advances the position. With `num_epochs=None` it runs forever;
    otherwise it stops after that many passes. `drop_remainder=False` keeps the last,
    smaller batch of every epoch (split as evenly as possible among processes).
    """

    def __init__(
        self,
        source,
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        random_flip: bool = False,
        centered: bool = False,
        uniform_dequantization: bool = False,
        num_epochs: int | None = None,
        drop_remainder: bool = True,
        process_index: int | None = None,
        process_count: int | None = None,
    ):
        self.process_index, self.process_count = _resolve_processes(process_index, process_count)
        _check_batch(batch_size, self.process_count)
        self.source = source
        self.batch_size = int(batch_size)
        self.shuffle, self.seed = bool(shuffle), int(seed)
        self.random_flip, self.centered = bool(random_flip), bool(centered)
        self.uniform_dequantization = bool(uniform_dequantization)
        self.num_epochs, self.drop_remainder = num_epochs, bool(drop_remainder)
        n = len(source)
        if drop_remainder and n < batch_size:
            raise ValueError(f"The data set has {n} examples, fewer than one batch of {batch_size}.")
        self.num_examples = n
        self.batches_per_epoch = n // batch_size if drop_remainder else math.ceil(n / batch_size)
        self.epoch, self.index = 0, 0
        self._perm_epoch, self._perm = None, None

    @property
    def local_batch_size(self) -> int:
        return self.batch_size // self.process_count

    @property
    def element_shape(self) -> tuple[int, ...]:
        return tuple(self.source.element_shape)

    def get_state(self) -> dict:
        """The position: the next batch is batch `index` of epoch `epoch`."""
        return {"epoch": int(self.epoch), "index": int(self.index)}

    def set_state(self, state: dict):
        epoch, index = int(state["epoch"]), int(state["index"])
        if epoch < 0 or not 0 <= index <= self.batches_per_epoch:
            raise ValueError(f"Invalid data position {state}: {self.batches_per_epoch} batches per epoch.")
        self.epoch, self.index = epoch, index

    def __iter__(self):
        return self

    def _permutation(self, epoch):
        if self._perm_epoch != epoch:
            n = self.num_examples
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)
            self._perm_epoch = epoch
        return self._perm

    def __next__(self) -> dict:
        if self.index >= self.batches_per_epoch:
            self.epoch, self.index = self.epoch + 1, 0
        if self.num_epochs is not None and self.epoch >= self.num_epochs:
            raise StopIteration
        epoch, index = self.epoch, self.index
        global_idx = self._permutation(epoch)[index * self.batch_size : (index + 1) * self.batch_size]
        size = len(global_idx)
        local = _process_slice(size, self.process_index, self.process_count, even=size == self.batch_size)
        images, labels = self.source.get_batch(global_idx[local])
        rng = np.random.default_rng([self.seed, epoch, index])
        if self.random_flip:
            flips = rng.random(size)[local] < 0.5
            images = np.where(flips[:, None, None, None], images[:, :, ::-1], images)
        if self.uniform_dequantization:
            noise = rng.random((size,) + images.shape[1:], dtype=np.float32)[local]
            images = (images * 255.0 + noise) / 256.0
        if self.centered:
            images = images * 2.0 - 1.0
        self.index += 1
        return {"image": np.ascontiguousarray(images, np.float32), "label": np.asarray(labels, np.int32)}


class ToyIterator:
    """Fresh samples of a 2-D toy target, batch `index` from fold_in(PRNGKey(seed), index)."""

    def __init__(self, target, batch_size, *, seed=0, process_index=None, process_count=None):
        self.process_index, self.process_count = _resolve_processes(process_index, process_count)
        _check_batch(batch_size, self.process_count)
        self.target, self.batch_size, self.seed = target, int(batch_size), int(seed)
        self.epoch, self.index = 0, 0
        self.num_epochs = None

    @property
    def local_batch_size(self) -> int:
        return self.batch_size // self.process_count

    @property
    def element_shape(self):
        return (self.target.dim,)

    def get_state(self) -> dict:
        return {"epoch": 0, "index": int(self.index)}

    def set_state(self, state: dict):
        index = int(state["index"])
        if index < 0:
            raise ValueError(f"Invalid data position {state}.")
        self.index = index

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        import jax

        with jax.default_device(jax.devices("cpu")[0]):
            key = jax.random.fold_in(jax.random.PRNGKey(self.seed), self.index)
            x = np.asarray(self.target.sample(key, self.batch_size), np.float32)
        local = _process_slice(self.batch_size, self.process_index, self.process_count, even=True)
        self.index += 1
        return {"image": x[local], "label": np.zeros(self.local_batch_size, np.int32)}


# ----------------------------------------------------------------------------- loaders


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


def _resize_all(images: np.ndarray, image_size) -> np.ndarray:
    """Resize float [0, 1] images (N, H, W, C) to image_size x image_size if needed."""
    if image_size is None or images.shape[1:3] == (image_size, image_size):
        return images
    u8 = np.round(images * 255.0).astype(np.uint8)
    out = np.stack([resize(img, (image_size, image_size)) for img in u8])
    return out.astype(np.float32) / 255.0


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
    """An iterator of batches with a checkpointable position (see the module docstring).

    Args:
      name: a TFDS name (cifar10, svhn_cropped, celeb_a, lsun/<category>, mnist,
        fashion_mnist; case-insensitive, so the reference's CIFAR10, SVHN and CELEBA
        work), "digits", "toy:<name>" (or a toy's bare name), or a path to a folder of
        PNG/JPEG images or to an .npz file.
      split: "train" or "test" ("eval"; CelebA and LSUN use their validation split).
        For digits the split of `digits_split(seed=0)`; for folders and .npz files
        and toys, the same data whatever the split.
      batch_size: the global batch size (divisible by the number of processes).
      image_size: output height = width; None keeps the native size (CelebA 64,
        LSUN 256 by default).
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
        x = _resize_all(x, image_size)
        return DataIterator(ArraySource(x, y), batch_size, random_flip=bool(random_flip), **common)

    random_flip = train if random_flip is None else random_flip
    if name in TFDS_NAMES or name.startswith("lsun/"):
        tfds_name = TFDS_NAMES.get(name, name)
        preprocess, shape = _tfds_preprocess(tfds_name, image_size)
        source = open_tfds(tfds_name, _tfds_split(tfds_name, split), data_dir)
        return DataIterator(TFDSSource(source, preprocess, shape), batch_size, random_flip=random_flip, **common)

    if os.path.isdir(name):
        images, labels = load_image_folder(name, image_size, num_channels)
    elif name.endswith((".npz", ".npy")):
        images, labels = load_npz(name, image_size)
    else:
        raise ValueError(
            f"Unknown data set {name!r}: expected one of {', '.join(sorted(set(TFDS_NAMES)))}, lsun/<category>, "
            f"digits, toy:<{'|'.join(analytic.TOY_TARGETS)}>, a folder of PNG/JPEG images or an .npz file."
        )
    return DataIterator(ArraySource(images, labels), batch_size, random_flip=random_flip, **common)


def stack_batches(batches: Sequence[dict]) -> dict:
    """Stack n batches into one with a leading axis n (for n_jitted_steps)."""
    return {k: np.stack([b[k] for b in batches]) for k in batches[0]}


def element_shape(it) -> tuple[int, ...]:
    """Shape of one example of an iterator from `get_dataset`."""
    return tuple(it.element_shape)

