"""Relaxing candidates with a universal interatomic potential, through ASE.

`calculator(potential)` builds an ASE calculator from a name of POTENTIALS, an
import path "package.module:factory" of a function returning one, or passes a
calculator through. `relax(structure, calc, fmax=..., max_steps=...)` moves the
atoms and the cell with ASE's FIRE on a `FrechetCellFilter` until every force
and the stress are below fmax or max_steps have run, and reports the
potential's energy per atom of the final structure. A structure the potential
cannot evaluate (it raises, or its energy is not finite) comes back with a NaN
energy and the reason, so one bad candidate ranks last instead of stopping the
others.

A relaxation runs with the BLAS and OpenMP thread pools (OpenBLAS, torch's) on
one thread (threadpoolctl): for the few atoms of a candidate their threads cost
more than they give. On the 2-core CPU, busy, CHGNet took 0.08 s per FIRE step
for rock salt so limited, 0.4-0.5 s without (OpenBLAS's threads slow the
filter's 3x3 matrix functions, scipy's `expm_frechet`, and torch's a
two-atom graph); several candidates then relax in parallel processes
(`csp_jax.evaluation.relaxed`). Benchmark the time per candidate on this
machine with `python experiments/bench_relax.py --data ../shared/data --num 4`.
"""
from __future__ import annotations

import contextlib
import functools
import io
import math
import time
import warnings
from typing import Callable, NamedTuple

from csp_jax.config import RelaxConfig, lookup


def _chgnet():
    """CHGNet 0.3.0 with the weights its wheel carries, on the CPU, without its prints.

    A structure with an atom that has no neighbour within CHGNet's 6 A cutoff
    makes it raise (CHGNet's own graph default) rather than print a warning.
    """
    from chgnet.model.dynamics import CHGNetCalculator

    # Every force evaluation would warn once per process about a tensor it converts.
    warnings.filterwarnings("ignore", "Converting a tensor with requires_grad", UserWarning)
    with contextlib.redirect_stdout(io.StringIO()):  # "CHGNet v0.3.0 initialized ...", device
        return CHGNetCalculator(use_device="cpu", on_isolated_atoms="error")


def _sevennet():
    """SevenNet-0 (11 July 2024), with the weights its wheel carries (nothing is downloaded)."""
    from sevenn.calculator import SevenNetCalculator

    return SevenNetCalculator("7net-0")


# name -> (a function building the calculator, the command that installs what it needs)
POTENTIALS: dict[str, tuple[Callable[[], object], str]] = {
    "chgnet": (_chgnet, 'pip install "csp_jax[relax]"'),
    "sevennet": (_sevennet, "pip install sevenn"),
}


def calculator(potential: str | object = RelaxConfig.potential):
    """An ASE calculator for `potential`.

    potential: a name of POTENTIALS, an import path "package.module:factory" of a
    function returning an ASE calculator, or an ASE calculator (returned as is).
    A name or path is built once per process and then reused.
    ImportError (one line, with the install command) when the potential's package
    is missing; ValueError (`config.lookup`'s) for an unknown name or a path that
    does not resolve.
    """
    from ase.calculators.calculator import BaseCalculator

    if isinstance(potential, BaseCalculator):
        return potential
    return _built(potential)


@functools.lru_cache(maxsize=None)
def _built(potential: str):
    """The calculator of a name or import path, built on the first call."""
    builders = {name: build for name, (build, _) in POTENTIALS.items()}
    build = lookup("relax.potential", potential, builders)
    try:
        return build()
    except ImportError as error:
        if potential not in POTENTIALS:
            raise
        raise ImportError(f"potential {potential!r} is not installed ({error}): "
                          f"{POTENTIALS[potential][1]}") from None


# Cells a relaxation stops at, as failed: a potential's neighbour lists (and its memory) grow
# without bound as a cell collapses or flattens, and no crystal is that dense or that thin.
VOLUME_PER_ATOM = (1.0, 1000.0)  # A^3 per atom
MIN_HEIGHT = 0.5  # A, the smallest distance between opposite faces of the cell


def cell_problem(atoms) -> str:
    """Why `atoms` (an ASE Atoms) is no cell to relax further ("" when it is one)."""
    import numpy as np

    cell = np.asarray(atoms.cell)
    volume = abs(float(np.linalg.det(cell)))
    per_atom = volume / len(atoms)
    if not VOLUME_PER_ATOM[0] <= per_atom <= VOLUME_PER_ATOM[1]:
        return f"the cell has {per_atom:.3g} A^3 per atom, outside {VOLUME_PER_ATOM}"
    height = volume / float(np.max(np.linalg.norm(np.cross(cell[[1, 2, 0]], cell[[2, 0, 1]]), axis=1)))
    return f"the cell is {height:.3g} A thin" if height < MIN_HEIGHT else ""


class Relaxed(NamedTuple):
    """One relaxation.

    structure:       the final `pymatgen.core.Structure` (the input when it failed).
    energy_per_atom: the potential's energy of `structure`, eV/atom; NaN when it failed.
    steps:           FIRE steps taken.
    converged:       every force (eV/A) and stress component (eV/A^3 times the
                     cell volume per atom, as the filter scales it) below fmax.
    seconds:         wall time of the relaxation.
    message:         why it failed (the calculator's error, a non-finite energy); empty otherwise.
    """

    structure: object
    energy_per_atom: float
    steps: int
    converged: bool
    seconds: float
    message: str = ""


def relax(structure, calc, *, fmax: float = RelaxConfig.fmax,
          max_steps: int = RelaxConfig.max_steps) -> Relaxed:
    """Relax positions and cell of `structure` (pymatgen Structure, n atoms) with the ASE
    calculator `calc`, by FIRE on a FrechetCellFilter, for at most `max_steps` steps or
    until the largest force is below `fmax` (eV/A). Never raises for a structure the
    calculator fails on: see `Relaxed`; a cell that collapses or flattens (`cell_problem`)
    stops the relaxation as failed."""
    from ase.filters import FrechetCellFilter
    from ase.optimize import FIRE
    from pymatgen.io.ase import AseAtomsAdaptor
    from threadpoolctl import threadpool_limits

    start = time.perf_counter()
    atoms = AseAtomsAdaptor.get_atoms(structure)
    atoms.calc = calc
    optimizer = FIRE(FrechetCellFilter(atoms), logfile=None)
    try:
        with threadpool_limits(limits=1):
            converged, message = False, cell_problem(atoms)
            if not message:
                for converged in optimizer.irun(fmax=fmax, steps=max_steps):
                    message = cell_problem(atoms)
                    if message:
                        break
            energy = float(atoms.get_potential_energy()) / len(atoms) if not message else math.nan
        message = message or ("" if math.isfinite(energy) else f"the energy is {energy}")
    except Exception as error:  # noqa: BLE001 -- any failure of the potential is an outcome
        message = f"{type(error).__name__}: {error}".splitlines()[0]
    seconds = time.perf_counter() - start
    if message:
        return Relaxed(structure, math.nan, optimizer.nsteps, False, seconds, message)
    atoms.calc = None  # else the structure would carry the calculator (`Structure.calc`)
    return Relaxed(AseAtomsAdaptor.get_structure(atoms), energy, optimizer.nsteps, bool(converged),
                   seconds)
