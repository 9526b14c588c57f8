"""Data parallelism over all devices, of every process, with `jax.sharding`.

Batches (crystals, species) are split along their leading axis over a 1-D
mesh of every device; parameters and optimizer state are replicated. Jitted
functions then run data-parallel with no change to their code: XLA
partitions the batch and inserts the all-reduce for the loss's batch means.
An array whose leading axis the device count does not divide is replicated.
Under `jax.distributed` the mesh spans the devices of every process: each
process holds the whole batch (drawn from the same seeds) and places the parts
of its own devices (`jax.make_array_from_callback`), so the update step is one
program over all of them. With one device, arrays are left as they are.
"""
from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

BATCH_AXIS = "batch"


def batch_mesh() -> Mesh:
    """A 1-D mesh over all devices (of every process under `jax.distributed`)."""
    return Mesh(np.array(jax.devices()), (BATCH_AXIS,))


def _placed(tree, mesh: Mesh | None, split: bool):
    """Every array of `tree` (the same value in every process) as a global array over the
    mesh: split along axis 0 where `split` and the device count divides it, else whole on
    every device."""
    mesh = batch_mesh() if mesh is None else mesh
    n = mesh.devices.size
    if n == 1:
        return tree

    def place(x):
        host = np.asarray(x)  # x is an array of this process (numpy, or on its devices)
        divides = split and host.ndim > 0 and host.shape[0] % n == 0
        sharding = NamedSharding(mesh, PartitionSpec(BATCH_AXIS) if divides else PartitionSpec())
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(place, tree)


def shard_batch(tree, mesh: Mesh | None = None):
    """Every array of `tree` split along axis 0 over the mesh (replicated where the device
    count does not divide it)."""
    return _placed(tree, mesh, split=True)


def replicate(tree, mesh: Mesh | None = None):
    """Every array of `tree` whole on every device of the mesh."""
    return _placed(tree, mesh, split=False)
