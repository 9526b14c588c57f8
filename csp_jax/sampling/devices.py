"""The chains' devices: every batch of chains is split over this process's devices.

The driver's programs run under `jax.shard_map` over a 1-D mesh of the local
devices (`chain_mesh`): each device runs its own rows of the chain axis as the
one-device program would (the same chunked vmap, at local shapes), with the
model's variables and the schedule replicated. A batch whose size the device
count does not divide is padded with copies of its first row (`padded_rows`),
whose results are dropped, so every device always gets an equal share. Chain
c still uses its own key, so a chain's result does not depend on the number
of devices, up to float32 rounding of other padded shapes.
"""
from __future__ import annotations

import functools
import math

import jax
import numpy as np
from jax.sharding import Mesh, PartitionSpec

CHAIN_AXIS = "chains"


@functools.lru_cache(maxsize=None)
def chain_mesh() -> Mesh | None:
    """A 1-D mesh over this process's devices (None with one device: no sharding)."""
    devices = jax.local_devices()
    return Mesh(np.array(devices), (CHAIN_AXIS,)) if len(devices) > 1 else None


def num_devices() -> int:
    """Devices the chains are split over."""
    mesh = chain_mesh()
    return 1 if mesh is None else mesh.devices.size


def padded_rows(num_rows: int) -> int:
    """The batch size that splits `num_rows` chains evenly over the devices."""
    return math.ceil(num_rows / num_devices()) * num_devices()


def split_over_devices(fn, in_chains: tuple[bool, ...], out_chains):
    """`fn` run on every device for its rows: arguments marked True in `in_chains` (and the
    outputs marked in `out_chains`, a pytree prefix of bools) are split along axis 0, the
    others replicated. With one device, `fn` itself."""
    mesh = chain_mesh()
    if mesh is None:
        return fn
    spec = lambda split: PartitionSpec(CHAIN_AXIS) if split else PartitionSpec()  # noqa: E731
    return jax.shard_map(fn, mesh=mesh, in_specs=tuple(spec(s) for s in in_chains),
                         out_specs=jax.tree.map(spec, out_chains), check_vma=False)
