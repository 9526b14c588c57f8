"""Data parallelism over all visible devices with `jax.sharding`.

Batches (crystals, species, chain keys) are split along their leading axis
over a 1-D mesh of every device; parameters and optimizer state are
replicated. Jitted functions then run data-parallel with no change to their
code: XLA partitions the vmapped chains and inserts the all-reduce for the
loss's batch means. With one device, or a batch that the device count does not
divide, arrays are left as they are.
"""
from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

BATCH_AXIS = "batch"


def batch_mesh() -> Mesh:
    """A 1-D mesh over all devices (of every process under `jax.distributed`)."""
    return Mesh(np.array(jax.devices()), (BATCH_AXIS,))


def shard_batch(tree, mesh: Mesh | None = None):
    """Place every array of `tree` split along axis 0 over the mesh (when it divides)."""
    mesh = batch_mesh() if mesh is None else mesh
    n = mesh.devices.size
    if n == 1:
        return tree
    leaves = jax.tree.leaves(tree)
    if not leaves or any(np.ndim(x) == 0 or np.shape(x)[0] % n for x in leaves):
        return tree
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec(BATCH_AXIS)))


def replicate(tree, mesh: Mesh | None = None):
    """Place every array of `tree` whole on every device of the mesh."""
    mesh = batch_mesh() if mesh is None else mesh
    if mesh.devices.size == 1:
        return tree
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))
