"""Image operations: value scaling, antialiased resizing, center crops, and the checks
that turn user arrays into float32 (N, H, W, C) images in [0, 1]."""

from __future__ import annotations

from typing import Callable

import numpy as np


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


def _resize_all(images: np.ndarray, image_size) -> np.ndarray:
    """Resize float [0, 1] images (N, H, W, C) to image_size x image_size if needed."""
    if image_size is None or images.shape[1:3] == (image_size, image_size):
        return images
    u8 = np.round(images * 255.0).astype(np.uint8)
    out = np.stack([resize(img, (image_size, image_size)) for img in u8])
    return out.astype(np.float32) / 255.0


def downscale(images: np.ndarray, image_size) -> np.ndarray:
    """Float images (N, H, W, C) at image_size x image_size: the means of f x f blocks where
    image_size divides H = W by f (so a smaller copy of a data set holds exactly the
    low-resolution images of a super-resolution model, `conditioning.LowResolution`),
    else `_resize_all`."""
    n, h, w, c = images.shape
    if image_size is None or h != w or image_size >= h or h % image_size:
        return _resize_all(images, image_size)
    f = h // image_size
    return images.reshape(n, image_size, f, image_size, f, c).mean(axis=(2, 4)).astype(images.dtype)
