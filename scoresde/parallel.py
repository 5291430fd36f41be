"""Data parallelism: one 1-D device mesh whose axis 'data' splits the batch.

The mesh uses Auto axis types (diffrax does not trace under an Explicit mesh), so
`jax.jit` propagates the batch sharding through samplers, solvers and train steps.
On one device every function here is the identity.
"""

from __future__ import annotations

import functools

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


@functools.cache
def data_mesh() -> Mesh:
    """A mesh over all devices (of every process), with the single axis 'data'."""
    devices = np.asarray(jax.devices())
    try:
        from jax.sharding import AxisType

        return Mesh(devices, (DATA_AXIS,), axis_types=(AxisType.Auto,))
    except (ImportError, TypeError):  # older jax: every mesh is Auto
        return Mesh(devices, (DATA_AXIS,))


def batch_sharding(ndim: int = 1) -> NamedSharding:
    """Sharding of a `(B, ...)` array split along B."""
    return NamedSharding(data_mesh(), P(DATA_AXIS, *([None] * (ndim - 1))))


def replicated() -> NamedSharding:
    return NamedSharding(data_mesh(), P())


def check_divisible(batch: int):
    n = jax.device_count()
    if batch % n:
        raise ValueError(f"The batch size {batch} must be a multiple of the number of devices ({n}).")


def constrain_batch(x: jax.Array) -> jax.Array:
    """Inside jit: ask for x `(B, ...)` to be split along B over the mesh (no-op on one device)."""
    if jax.device_count() == 1:
        return x
    return jax.lax.with_sharding_constraint(x, batch_sharding(x.ndim))


def shard_batch(x) -> jax.Array:
    """Place a host or device array `(B, ...)` split along B over the mesh."""
    if jax.device_count() == 1:
        return jax.numpy.asarray(x)
    return jax.device_put(x, batch_sharding(np.ndim(x)))
