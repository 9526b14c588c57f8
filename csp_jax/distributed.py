"""Several processes (one or more hosts) under JAX's distributed runtime.

    csp-jax evaluate --checkpoint mp20 --distributed ...    # in every process

`initialize` starts `jax.distributed` when asked (`--distributed`) or when the
environment is a SLURM job of several tasks or an Open MPI launch of several
processes; JAX then finds the coordinator, the number of processes and this
process's index in that environment, or in `JAX_COORDINATOR_ADDRESS`,
`JAX_NUM_PROCESSES` and `JAX_PROCESS_ID` (a launch by hand). The processes
share work by index (`share`), wait for each other at `barrier`s, exchange
small host arrays (`gathered`), and only the main process (index 0) writes
what all of them would write alike. Files written by one process and read by
another (parts of an evaluation, a training run's checkpoints) must lie on a
filesystem every process sees.
"""
from __future__ import annotations

import os

import jax
import numpy as np


def launched_as_several() -> bool:
    """Whether SLURM or Open MPI started this process as one of several."""
    return any(int(os.environ.get(name, "1")) > 1 for name in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"))


def initialize(asked: bool = False) -> bool:
    """Start JAX's distributed runtime when `asked` or `launched_as_several()`; whether it did."""
    if not (asked or launched_as_several()):
        return False
    number = lambda name: int(os.environ[name]) if os.environ.get(name) else None  # noqa: E731
    jax.distributed.initialize(num_processes=number("JAX_NUM_PROCESSES"), process_id=number("JAX_PROCESS_ID"))
    return True


def is_main() -> bool:
    """Whether this is the process that writes reports, logs and configs (index 0)."""
    return jax.process_index() == 0


def share(count: int) -> list[int]:
    """This process's items of `count` (0 .. count - 1): every `process_count()`-th, from its index."""
    return list(range(jax.process_index(), count, jax.process_count()))


def barrier(name: str) -> None:
    """Wait until every process has reached the barrier `name` (nothing with one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def gathered(tree):
    """Every process's `tree` (numpy arrays of the same shapes and dtypes in every process),
    stacked: each leaf [P, ...] in process order, the same in every process ([1, ...] with one)."""
    if jax.process_count() == 1:
        return jax.tree.map(lambda x: np.asarray(x)[None], tree)
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree)


def process_local(tree):
    """`tree` with every array that spans other processes' devices (under `jax.distributed`, a
    replicated global array such as the parameters) as a numpy copy, which a program on this
    process's devices alone can take; other leaves as they are."""
    return jax.tree.map(lambda x: x if getattr(x, "is_fully_addressable", True) else np.asarray(x), tree)
