"""Data parallelism over all local devices with `jax.make_mesh` and `NamedSharding` (no pmap).

The batch is split along a "data" mesh axis and the train state is replicated; jit then runs the
step on every device and XLA inserts the gradient all-reduce itself.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def data_mesh(num_devices: int | None = None) -> jax.sharding.Mesh:
    devices = jax.local_devices()
    n = num_devices or len(devices)
    if n > len(devices):
        raise ValueError(f"asked for {n} devices, only {len(devices)} are available")
    # Auto axes: XLA propagates the batch sharding through the step (no per-op annotations).
    return jax.make_mesh((n,), (DATA_AXIS,), devices=devices[:n],
                         axis_types=(jax.sharding.AxisType.Auto,))


def check_batch_divides(batch_size: int, mesh: jax.sharding.Mesh) -> None:
    n = mesh.shape[DATA_AXIS]
    if batch_size % n:
        raise ValueError(f"batch size {batch_size} is not divisible by the {n} devices of the mesh")


def replicate(tree, mesh: jax.sharding.Mesh):
    return jax.device_put(tree, NamedSharding(mesh, P()))


def shard_batch(arrays, mesh: jax.sharding.Mesh):
    """Puts host arrays on the mesh, split along their leading (batch) axis."""
    sharding = NamedSharding(mesh, P(DATA_AXIS))
    return jax.tree.map(lambda x: jax.device_put(np.asarray(x), sharding), arrays)
