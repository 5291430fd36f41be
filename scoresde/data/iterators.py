"""Iterators of batches with a checkpointable position: `DataIterator` over a
random-access source (shuffling, flips, dequantization, centering) and `ToyIterator`
of fresh 2-D toy samples; each yields this process's slice of every global batch."""

from __future__ import annotations

import math

import numpy as np


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

    Each `next()` returns this process's slice of global batch `index` of epoch `epoch`,
    then advances the position. A batch is the source's dict ("image", "label" and any
    extras such as "text_embedding"), with flips, dequantization and centering applied to
    its images. With `num_epochs=None` it runs forever;
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
        batch = self.source.get_batch(global_idx[local])
        images = batch["image"]
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
        return {**batch, "image": np.ascontiguousarray(images, np.float32), "label": np.asarray(batch["label"], np.int32)}


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

