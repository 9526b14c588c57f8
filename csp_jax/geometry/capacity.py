"""Growing a capacity until nothing overflows: the one host loop for it, with one limit.

Everything jitted over neighbour lists runs at a static capacity
(`csp_jax.geometry.neighbors.NeighborCapacity`) and reports overflow and needs
as data. The host calls `grow_until_no_overflow`, which runs the work again
with a grown capacity until it fits (at most MAX_RERUNS times), so a result
never depends on a capacity that was too small. The chain driver, the
training step and the displacement experiment all use it.
"""
from __future__ import annotations

from typing import Callable

import jax
import numpy as np

MAX_RERUNS = 16  # capacity growths allowed for one piece of work before giving up


def grow_until_no_overflow(run: Callable, capacity, where: str,
                           grow: Callable = lambda capacity, needs: capacity.grow(*needs)):
    """Call `run(capacity) -> (out, overflow, needs)` until it does not overflow.

    overflow: anything whose `any()` says a capacity was too small; needs: the
    largest needs seen (a tuple, empty when unknown), passed to
    `grow(capacity, needs)`. Returns (out, capacity, number of re-runs); raises
    RuntimeError naming `where` after MAX_RERUNS re-runs.
    """
    reruns = 0
    while True:
        out, overflow, needs = run(capacity)
        if not bool(np.any(jax.device_get(overflow))):
            return out, capacity, reruns
        if reruns == MAX_RERUNS:
            raise RuntimeError(f"capacity {capacity} still overflows {where} after {reruns} re-runs")
        capacity = grow(capacity, needs)
        reruns += 1


def largest_needs(needs) -> tuple:
    """The largest value of each need over all crystals and steps: needs [..., M] -> M ints
    (e.g. `MALAInfo.needs` of a batch; the arguments of `capacity.grow` and `capacity.fit`)."""
    needs = np.asarray(jax.device_get(needs))
    return tuple(int(n) for n in needs.reshape(-1, needs.shape[-1]).max(axis=0)) if needs.shape[-1] else ()


def grow_exceeded(capacity, needs):
    """`capacity` grown where `needs` ([M]) exceed it, else `capacity` itself."""
    return capacity.grow(*needs) if np.any(np.asarray(needs) > np.array(capacity)) else capacity


def at_least(capacity, other):
    """The elementwise larger of two capacities of one type (None: the other)."""
    if capacity is None or other is None:
        return other if capacity is None else capacity
    return type(capacity)(*np.maximum(np.array(capacity), np.array(other)).tolist())
