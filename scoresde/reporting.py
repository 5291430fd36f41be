"""What a user sees: sample grids as PNG, 2-D scatter plots, TensorBoard scalars and images,
strict JSON reports."""

from __future__ import annotations

import json
import math
import os

import numpy as np
from PIL import Image


def image_grid(images, nrow: int | None = None, padding: int = 1, upscale: int = 1) -> np.ndarray:
    """Tile images `(N, H, W, C)` in [0, 1] into one uint8 image, nrow per row (default ~sqrt N)."""
    images = np.clip(np.asarray(images, np.float32), 0.0, 1.0)
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"image_grid takes (N, H, W, 1 or 3) images, got shape {images.shape}.")
    n, h, w, c = images.shape
    nrow = nrow or int(math.ceil(math.sqrt(n)))
    ncol = int(math.ceil(n / nrow))
    grid = np.ones((ncol * (h + padding) + padding, nrow * (w + padding) + padding, c), np.float32)
    for i, img in enumerate(images):
        r, q = divmod(i, nrow)
        y, x = padding + r * (h + padding), padding + q * (w + padding)
        grid[y : y + h, x : x + w] = img
    grid = (grid * 255 + 0.5).astype(np.uint8)
    if upscale > 1:
        grid = grid.repeat(upscale, 0).repeat(upscale, 1)
    return grid[..., 0] if c == 1 else grid


def save_image_grid(images, path: str, nrow: int | None = None, upscale: int | None = None) -> str:
    """Save images `(N, H, W, C)` in [0, 1] as a PNG grid; small images are upscaled to be visible."""
    images = np.asarray(images)
    if upscale is None:
        upscale = max(1, 64 // images.shape[1])
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    Image.fromarray(image_grid(images, nrow, upscale=upscale)).save(path)
    return path


def save_scatter(points, path: str, reference=None, title: str = "") -> str:
    """Save 2-D samples `(N, 2)` (and optional reference points) as a PNG scatter plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    if reference is not None:
        ref = np.asarray(reference)
        ax.scatter(ref[:, 0], ref[:, 1], s=1, alpha=0.3, color="gray", label="data")
    pts = np.asarray(points)
    ax.scatter(pts[:, 0], pts[:, 1], s=1, alpha=0.5, color="C0", label="samples")
    ax.set(title=title, aspect="equal")
    ax.legend(markerscale=8, fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def save_samples_png(samples, path: str, title: str = "") -> str:
    """A PNG of samples: an image grid for `(N, H, W, C)` in [0, 1], a scatter plot for `(N, 2)`."""
    samples = np.asarray(samples)
    if samples.ndim == 2 and samples.shape[1] == 2:
        return save_scatter(samples, path, title=title)
    return save_image_grid(samples, path)


def jsonable(obj):
    """obj with numpy scalars as Python numbers, tuples as lists, and NaN and infinities as
    None (JSON has none of them)."""
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json(path: str, obj) -> str:
    """Write obj as strict JSON (`jsonable`), atomically; returns the path."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(jsonable(obj), f, indent=2, allow_nan=False)
    os.replace(tmp, path)
    return path


class TensorBoardWriter:
    """Scalars and images as TensorBoard event files (via tensorboardX; TensorFlow is not needed).

    The event file is opened at the first write. Call `start(step)` first when a run resumes
    from a checkpoint at `step`: TensorBoard then hides the events an interrupted run wrote
    after that step (tensorboardX's `purge_step`), as `metrics.jsonl` drops its rows.
    """

    def __init__(self, logdir: str):
        self.logdir, self._purge_step, self._writer = logdir, None, None

    def start(self, step: int):
        self._purge_step = step + 1 if step > 0 else None

    @property
    def writer(self):
        if self._writer is None:
            from tensorboardX import SummaryWriter

            self._writer = SummaryWriter(self.logdir, purge_step=self._purge_step)
        return self._writer

    def scalars(self, step: int, values: dict):
        for tag, value in values.items():
            if isinstance(value, (int, float, np.floating, np.integer)):
                self.writer.add_scalar(tag, float(value), step)
        self.writer.flush()

    def image(self, step: int, tag: str, grid: np.ndarray):
        self.writer.add_image(tag, grid if grid.ndim == 3 else grid[..., None], step, dataformats="HWC")
        self.writer.flush()

    def close(self):
        if self._writer is not None:
            self._writer.close()
