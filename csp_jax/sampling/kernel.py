"""The sampler's contract: what the chain driver and the training loop need of a kernel.

A kernel is a factory in the BlackJAX shape, for ONE chain:

    init_fn, step_fn = kernel(energy_fn, reduce_fn)
    state = init_fn(crystal)                              # KernelState
    state, info = step_fn(key, state, step_size, beta)    # KernelState, KernelInfo

- `energy_fn(crystal) -> (energy [], aux)`: the energy of one crystal; `aux` has
  the attributes `overflow` ([] bool) and `needs` ([M] int) of
  `csp_jax.energy.base.Energy.energy`.
- `reduce_fn(positions [N, 3], lattice [3, 3]) -> (positions, lattice, converged)`:
  the re-description of a crystal (Niggli + wrap by default).

The driver reads the state's `crystal`, `energy` and `overflow` and, per step,
the info fields of `KernelInfo`; nothing else. `sampler.kernel` in the config
names the kernel (a name of KERNELS, or "package.module:factory"), so a run
records the kernel it was trained or sampled with.
"""
from __future__ import annotations

from typing import Callable, Protocol

import jax

from csp_jax.config import SamplerConfig, lookup
from csp_jax.geometry.crystal import Crystal
from csp_jax.sampling.mala import mala


class KernelState(Protocol):
    """A chain's state: crystal (Crystal, reduced), energy ([] H there), overflow ([] bool:
    the evaluation behind it exceeded the energy's capacity)."""

    crystal: Crystal
    energy: jax.Array
    overflow: jax.Array


class KernelInfo(Protocol):
    """One step of one chain: acceptance_probability [], energy [] after the step, overflow []
    (the proposal's evaluation overflowed: the step is re-run with a grown capacity), finite []
    (the proposal was finite; a non-finite one is rejected and counted), needs [M] int (what the
    proposal's evaluation needed of the capacity)."""

    acceptance_probability: jax.Array
    energy: jax.Array
    overflow: jax.Array
    finite: jax.Array
    needs: jax.Array


class Kernel(Protocol):
    """`kernel(energy_fn, reduce_fn) -> (init_fn, step_fn)`, pure functions of one chain.

    The kernel must be hashable (the driver caches its compilations on it): a module-level
    function is."""

    def __call__(self, energy_fn: Callable, reduce_fn: Callable) -> tuple[Callable, Callable]:
        ...


KERNELS: dict[str, Kernel] = {"mala": mala}  # SPEC §3's Metropolis-adjusted Langevin kernel


def kernel_from(name: str = SamplerConfig.kernel) -> Kernel:
    """The kernel `sampler.kernel` names; ValueError (one line) when it does not resolve."""
    kernel = lookup("sampler.kernel", name, KERNELS)
    if not callable(kernel):
        raise ValueError(f"sampler.kernel={name!r} is not a kernel factory")
    return kernel
