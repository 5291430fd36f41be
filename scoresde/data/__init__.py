"""Training data: TFDS image sets, bundled digits, 2-D toys and the user's own images.

Everything goes through one entry point,

    it = get_dataset(name, split, batch_size, image_size, centered, random_flip, ...)
    batch = next(it)            # {"image": float32 (B_local, H, W, C), "label": int32 (B_local,)}
                                # (+ "text_embedding": float32 (B_local, L, E) where stored)
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
    digit tinted in one of six saturated colours (for colorization). Smaller sizes
    that divide 8 are the means of pixel blocks (low-resolution digits).
  - photos: 16x16 (or, at image_size 32, full-resolution 32x32) RGB crops of
    scikit-learn's two bundled sample photographs (no download), training and test crops
    from disjoint tiles (`photos_split`); sizes dividing 16 are block means.
  - toy:<name> (or the bare name) for `scoresde.analytic.toy_target`: 8gaussians,
    grid, moons, swissroll, checkerboard. An infinite stream of fresh samples.
  - a path: a folder of PNG/JPEG images, or an .npz file holding an image array; either
    may carry text embeddings for text conditioning (an .npz's `text_embeddings`
    (N, L, E) and optional `text_mask` (N, L); a folder's sidecar `text_embeddings.npz`
    with `files`, the image paths relative to the folder, as well).

Modules, one concept each:
  - `sources`: where examples come from (TFDS, the bundled digits, image folders,
    .npz files) as random-access sources;
  - `images`: operations on images (value scaling, resize, crops, checks);
  - `iterators`: batches over a source or a toy target, sharded over processes, with
    a position to resume from;
  - `loaders`: `get_dataset`, the entry point above;
  - `labels`: class names of the labelled data sets and their spelling tokens.
"""

from scoresde.data.images import central_crop, get_data_inverse_scaler, get_data_scaler, resize, resize_small
from scoresde.data.iterators import DataIterator, ToyIterator
from scoresde.data.labels import LABEL_NAMES, SPELLING_VOCAB_SIZE, label_names, spell
from scoresde.data.loaders import get_dataset
from scoresde.data.sources import (
    DIGIT_COLORS,
    TEXT_EMBEDDING,
    TEXT_EMBEDDINGS_KEY,
    TEXT_FILES_KEY,
    TEXT_MASK_KEY,
    TEXT_SIDECAR,
    TFDS_NAMES,
    ArraySource,
    DatasetNotPreparedError,
    TFDSSource,
    digits_color_split,
    digits_split,
    load_image_folder,
    load_npz,
    open_tfds,
    photos_split,
    read_text_embeddings,
)

__all__ = [
    "DIGIT_COLORS",
    "LABEL_NAMES",
    "SPELLING_VOCAB_SIZE",
    "TEXT_EMBEDDING",
    "TEXT_EMBEDDINGS_KEY",
    "TEXT_FILES_KEY",
    "TEXT_MASK_KEY",
    "TEXT_SIDECAR",
    "TFDS_NAMES",
    "ArraySource",
    "DataIterator",
    "DatasetNotPreparedError",
    "TFDSSource",
    "ToyIterator",
    "central_crop",
    "digits_color_split",
    "digits_split",
    "get_data_inverse_scaler",
    "get_data_scaler",
    "get_dataset",
    "label_names",
    "load_image_folder",
    "load_npz",
    "open_tfds",
    "photos_split",
    "read_text_embeddings",
    "resize",
    "resize_small",
    "spell",
]
