"""What the tests share besides fixtures: the repository path, crystal builders, a CSV writer."""
import csv
import io
import os
from pathlib import Path

import numpy as np

from csp_jax.geometry.crystal import Crystal

REPO = Path(__file__).resolve().parents[1]


def checkout_env(**variables):
    """os.environ plus `variables`, with this checkout first on PYTHONPATH: a subprocess (the
    command, a notebook kernel) imports the csp_jax under test, not another installed one."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, **variables}


# Cubic SrTiO3: the elements and fractional coordinates of both builders below.
SRTIO3_ELEMENTS = ["Sr", "Ti", "O", "O", "O"]
SRTIO3_FRAC = [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]


def random_crystal(rng, n, max_atoms=None, density=0.05, skew=0.3, dtype=np.float64):
    """A random crystal of n atoms: near-cubic lattice with random skew, given density."""
    max_atoms = max_atoms or n
    a = (n / density) ** (1 / 3)
    lattice = a * (np.eye(3) + skew * rng.uniform(-1, 1, (3, 3)))
    species = np.zeros(max_atoms, np.int32)
    species[:n] = rng.integers(1, 90, n)
    frac = np.zeros((max_atoms, 3))
    frac[:n] = rng.uniform(0, 1, (n, 3))
    return Crystal(species, (frac @ lattice).astype(dtype), lattice.astype(dtype))


def perovskite(a=3.9, dtype=np.float64):
    """Cubic SrTiO3, 5 atoms, as a `Crystal`."""
    lattice = a * np.eye(3)
    return Crystal(np.array([38, 22, 8, 8, 8], np.int32), (np.array(SRTIO3_FRAC) @ lattice).astype(dtype),
                   lattice.astype(dtype))


def perovskite_structure(a=3.9):
    """Cubic SrTiO3, 5 atoms, as a pymatgen `Structure`."""
    from pymatgen.core import Lattice, Structure

    return Structure(Lattice.cubic(a), SRTIO3_ELEMENTS, SRTIO3_FRAC)


def srtio3_samples(energies):
    """Four fixed SrTiO3 samples in place of the chains of `predict` (a `sampling.driver.Rows`):
    two noisy copies of the cubic cell (11.9 A^3 per atom), a cell stretched 1.7 times along c
    (20.2 A^3 per atom) and a collapsed one, with the learned energies `energies` [4]."""
    from csp_jax.geometry.crystal import from_structure, stack
    from csp_jax.sampling.driver import Rows

    cubic = from_structure(perovskite_structure(3.9), dtype=np.float64)
    rng = np.random.default_rng(0)
    noisy = [cubic.replace(positions=cubic.positions + 0.02 * rng.standard_normal((5, 3))) for _ in range(2)]
    stretch = np.array([1.0, 1.0, 1.7])
    stretched = cubic.replace(lattice=cubic.lattice * stretch, positions=cubic.positions * stretch)
    collapsed = cubic.replace(lattice=cubic.lattice * np.array([1.0, 1.0, 1e-3]))
    energies = np.asarray(energies, np.float64)
    return Rows(stack([noisy[0], stretched, noisy[1], collapsed]), energies, 0, None,
                np.tile(energies[:, None], (1, 3)), 0)


def write_csv(path, cifs):
    """A CSV in the DiffCSP layout (pandas index column first) with ids m-0, m-1, ..."""
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(["", "material_id", "cif"])
    for i, cif in enumerate(cifs):
        writer.writerow([i, f"m-{i}", cif])
    path.write_bytes(buffer.getvalue().encode())
    return path


def brute_force_edges(crystal, cutoff, reach=None):
    """Sorted list of (i, j, k1, k2, k3, d) by direct enumeration in numpy, over the shifts
    |k_a| <= reach (default: per axis, every shift an edge within `cutoff` can have)."""
    species = np.asarray(crystal.species)
    x = np.asarray(crystal.positions, np.float64)
    lattice = np.asarray(crystal.lattice, np.float64)
    real = np.flatnonzero(species > 0)
    edges = []
    if reach is None:  # |k_a| <= cutoff |column a of L^-1| + the spread of fractional coordinate a
        frac = x[real] @ np.linalg.inv(lattice)
        spread = np.ptp(frac, axis=0)
        reach = np.ceil(cutoff * np.linalg.norm(np.linalg.inv(lattice), axis=0) + spread).astype(int)
    r = [range(-k, k + 1) for k in np.broadcast_to(reach, 3)]
    shifts = np.array([(a, b, c) for a in r[0] for b in r[1] for c in r[2]], np.float64)
    for i in real:
        for j in real:
            d2 = np.sum((x[j] + shifts @ lattice - x[i]) ** 2, axis=1)
            for k in np.flatnonzero((d2 > 1e-4) & (d2 <= cutoff**2)):
                edges.append((int(i), int(j), *map(int, shifts[k]), float(np.sqrt(d2[k]))))
    return sorted(edges)
