"""The FID Inception-v3 feature network in Flax linen (feature space "inception_v3_fid").

The architecture is that of the standard FID feature extractor: the TensorFlow graph
"pt_inception-2015-12-05" as re-implemented in pytorch-fid (torchvision's Inception3
with 1008 classes, no aux head, and the blocks FIDInceptionA, FIDInceptionC,
FIDInceptionE_1 with average pooling that excludes padding, FIDInceptionE_2 with max
pooling). Module and parameter names follow the PyTorch state dict, so that
`Mixed_5b.branch1x1.conv.weight` is `params/Mixed_5b/branch1x1/conv/kernel` (HWIO).

The weights are not downloaded: convert pytorch-fid's published
`pt_inception-2015-12-05-6726825d.pth` once with `scripts/convert_inception_weights.py`
and put the `.npz` at `~/.cache/scoresde/fid_inception_v3.npz`, or point
`SCORESDE_INCEPTION_WEIGHTS` (or the `path` argument) at it. Agreement of FID numbers
with published values is not verified here.
"""

from __future__ import annotations

import functools
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

FEATURE_SPACE = "inception_v3_fid"
ENV_VAR = "SCORESDE_INCEPTION_WEIGHTS"
DEFAULT_WEIGHTS = os.path.join("~", ".cache", "scoresde", "fid_inception_v3.npz")
TORCH_WEIGHTS = "pt_inception-2015-12-05-6726825d.pth"
TORCH_WEIGHTS_URL = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + TORCH_WEIGHTS
)
NUM_CLASSES = 1008


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


class BasicConv2d(nn.Module):
    """Conv (no bias) -> BatchNorm (eps 1e-3, running statistics) -> ReLU, NHWC."""

    features: int
    kernel: int | tuple[int, int] = 1
    stride: int = 1
    padding: int | tuple[int, int] = 0

    @nn.compact
    def __call__(self, x):
        ph, pw = _pair(self.padding)
        x = nn.Conv(self.features, _pair(self.kernel), _pair(self.stride),
                    padding=((ph, ph), (pw, pw)), use_bias=False, name="conv")(x)
        x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name="bn")(x)
        return nn.relu(x)


def _avg_pool_3x3(x):  # TF's average pool: padded zeros are not counted
    return nn.avg_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3(x, stride=1, pad=1):
    return nn.max_pool(x, (3, 3), (stride, stride), ((pad, pad), (pad, pad)))


class FIDInceptionA(nn.Module):
    pool_features: int

    @nn.compact
    def __call__(self, x):
        b1 = BasicConv2d(64, name="branch1x1")(x)
        b5 = BasicConv2d(48, name="branch5x5_1")(x)
        b5 = BasicConv2d(64, 5, padding=2, name="branch5x5_2")(b5)
        b3 = BasicConv2d(64, name="branch3x3dbl_1")(x)
        b3 = BasicConv2d(96, 3, padding=1, name="branch3x3dbl_2")(b3)
        b3 = BasicConv2d(96, 3, padding=1, name="branch3x3dbl_3")(b3)
        bp = BasicConv2d(self.pool_features, name="branch_pool")(_avg_pool_3x3(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
    @nn.compact
    def __call__(self, x):
        b3 = BasicConv2d(384, 3, stride=2, name="branch3x3")(x)
        bd = BasicConv2d(64, name="branch3x3dbl_1")(x)
        bd = BasicConv2d(96, 3, padding=1, name="branch3x3dbl_2")(bd)
        bd = BasicConv2d(96, 3, stride=2, name="branch3x3dbl_3")(bd)
        return jnp.concatenate([b3, bd, _max_pool_3x3(x, 2, 0)], axis=-1)


class FIDInceptionC(nn.Module):
    channels_7x7: int

    @nn.compact
    def __call__(self, x):
        c7 = self.channels_7x7
        b1 = BasicConv2d(192, name="branch1x1")(x)
        b7 = BasicConv2d(c7, name="branch7x7_1")(x)
        b7 = BasicConv2d(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
        b7 = BasicConv2d(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
        bd = BasicConv2d(c7, name="branch7x7dbl_1")(x)
        bd = BasicConv2d(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
        bd = BasicConv2d(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
        bd = BasicConv2d(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
        bd = BasicConv2d(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
        bp = BasicConv2d(192, name="branch_pool")(_avg_pool_3x3(x))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
    @nn.compact
    def __call__(self, x):
        b3 = BasicConv2d(192, name="branch3x3_1")(x)
        b3 = BasicConv2d(320, 3, stride=2, name="branch3x3_2")(b3)
        b7 = BasicConv2d(192, name="branch7x7x3_1")(x)
        b7 = BasicConv2d(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
        b7 = BasicConv2d(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
        b7 = BasicConv2d(192, 3, stride=2, name="branch7x7x3_4")(b7)
        return jnp.concatenate([b3, b7, _max_pool_3x3(x, 2, 0)], axis=-1)


class FIDInceptionE(nn.Module):
    """FIDInceptionE_1 (`max_pool=False`: average pool without padding) or
    FIDInceptionE_2 (`max_pool=True`) of pytorch-fid."""

    max_pool: bool

    @nn.compact
    def __call__(self, x):
        b1 = BasicConv2d(320, name="branch1x1")(x)
        b3 = BasicConv2d(384, name="branch3x3_1")(x)
        b3 = jnp.concatenate([
            BasicConv2d(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
            BasicConv2d(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3),
        ], axis=-1)
        bd = BasicConv2d(448, name="branch3x3dbl_1")(x)
        bd = BasicConv2d(384, 3, padding=1, name="branch3x3dbl_2")(bd)
        bd = jnp.concatenate([
            BasicConv2d(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
            BasicConv2d(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd),
        ], axis=-1)
        pooled = _max_pool_3x3(x) if self.max_pool else _avg_pool_3x3(x)
        bp = BasicConv2d(192, name="branch_pool")(pooled)
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class InceptionV3FID(nn.Module):
    """FID Inception-v3: images `(B, H, W, C)`, C in {1, 3}, values in [0, 1] (or
    [-1, 1] with `centered=True`) -> (pool `(B, 2048)`, logits `(B, 1008)`).

    As pytorch-fid: bilinear resize to `resize` x `resize` (299; half-pixel centres,
    no antialiasing, as F.interpolate(align_corners=False)), then x -> 2x - 1. Grey
    images are repeated to 3 channels. `resize` other than 299 (>= 75) is only for
    cheap tests.
    """

    centered: bool = False
    resize: int = 299

    @nn.compact
    def __call__(self, x):
        x = jnp.asarray(x, jnp.float32)
        if x.shape[-1] == 1:
            x = jnp.repeat(x, 3, axis=-1)
        b, _, _, c = x.shape
        x = jax.image.resize(x, (b, self.resize, self.resize, c), "bilinear", antialias=False)
        if not self.centered:
            x = 2 * x - 1
        x = BasicConv2d(32, 3, stride=2, name="Conv2d_1a_3x3")(x)
        x = BasicConv2d(32, 3, name="Conv2d_2a_3x3")(x)
        x = BasicConv2d(64, 3, padding=1, name="Conv2d_2b_3x3")(x)
        x = _max_pool_3x3(x, 2, 0)
        x = BasicConv2d(80, name="Conv2d_3b_1x1")(x)
        x = BasicConv2d(192, 3, name="Conv2d_4a_3x3")(x)
        x = _max_pool_3x3(x, 2, 0)
        x = FIDInceptionA(32, name="Mixed_5b")(x)
        x = FIDInceptionA(64, name="Mixed_5c")(x)
        x = FIDInceptionA(64, name="Mixed_5d")(x)
        x = InceptionB(name="Mixed_6a")(x)
        for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
            x = FIDInceptionC(c7, name=name)(x)
        x = InceptionD(name="Mixed_7a")(x)
        x = FIDInceptionE(max_pool=False, name="Mixed_7b")(x)
        x = FIDInceptionE(max_pool=True, name="Mixed_7c")(x)
        pool = jnp.mean(x, axis=(1, 2))
        return pool, nn.Dense(NUM_CLASSES, name="fc")(pool)


@functools.lru_cache(maxsize=2)
def variable_shapes(resize=299):
    """The model's variables {"params", "batch_stats"} as ShapeDtypeStructs (no compute)."""
    x = jax.ShapeDtypeStruct((1, resize, resize, 3), jnp.float32)
    return jax.eval_shape(InceptionV3FID(resize=resize).init, jax.random.PRNGKey(0), x)


def weights_path(path=None):
    """`path`, else $SCORESDE_INCEPTION_WEIGHTS, else ~/.cache/scoresde/fid_inception_v3.npz."""
    return os.path.expanduser(os.fspath(path or os.environ.get(ENV_VAR) or DEFAULT_WEIGHTS))


def load_variables(path=None):
    """Load converted FID Inception weights (`.npz` of "params/..." and
    "batch_stats/..." arrays) and check them against the architecture."""
    path = weights_path(path)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"FID Inception-v3 weights not found at {path!r}. They are not downloaded "
            f"automatically. Get pytorch-fid's published weights {TORCH_WEIGHTS} (from the "
            f"pytorch-fid GitHub releases: {TORCH_WEIGHTS_URL}), convert them where PyTorch is "
            f"installed with\n    python scripts/convert_inception_weights.py {TORCH_WEIGHTS} "
            f"{DEFAULT_WEIGHTS}\nand put the result at {DEFAULT_WEIGHTS}, or point ${ENV_VAR} "
            "(or the `path` argument) at it."
        )
    with np.load(path) as f:
        flat = {k: f[k] for k in f.files}
    expected = traverse_util.flatten_dict(variable_shapes(), sep="/")
    missing, extra = sorted(set(expected) - set(flat)), sorted(set(flat) - set(expected))
    bad = [k for k in expected if k in flat and flat[k].shape != expected[k].shape]
    if missing or extra or bad:
        raise ValueError(f"{path!r} does not match the FID Inception architecture: missing "
                         f"{missing[:5]}, unexpected {extra[:5]}, wrong shapes {bad[:5]}")
    return traverse_util.unflatten_dict({k: jnp.asarray(v, jnp.float32) for k, v in flat.items()}, sep="/")


@functools.lru_cache(maxsize=4)
def _apply_fn(path, centered):
    variables = load_variables(path)
    model = InceptionV3FID(centered=centered)
    return jax.jit(lambda x: model.apply(variables, x))


def inception_features(images, path=None, centered=False, batch_size=100):
    """FID Inception pool features `(N, 2048)` and logits `(N, 1008)` (NumPy float32)
    of images `(N, H, W, C)` in [0, 1] (or [-1, 1] with `centered`), in batches."""
    fn = _apply_fn(weights_path(path), centered)
    images = np.asarray(images, np.float32)
    outs = []
    for i in range(0, len(images), batch_size):
        batch = images[i:i + batch_size]
        pad = min(batch_size, len(images)) - len(batch)  # one compiled batch shape
        batch = np.concatenate([batch, np.zeros((pad,) + batch.shape[1:], batch.dtype)])
        outs.append([np.asarray(o)[:len(batch) - pad] for o in fn(batch)])
    return tuple(np.concatenate([o[j] for o in outs]) for j in range(2))
