"""Small crystal builders shared by the tests."""
import numpy as np

from csp_jax.geometry.crystal import Crystal


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


def perovskite(a=3.9):
    """Cubic SrTiO3, 5 atoms."""
    frac = np.array([[0, 0, 0], [.5, .5, .5], [.5, .5, 0], [.5, 0, .5], [0, .5, .5]])
    lattice = a * np.eye(3)
    return Crystal(np.array([38, 22, 8, 8, 8], np.int32), frac @ lattice, lattice)


def brute_force_edges(crystal, cutoff, reach=6):
    """Sorted list of (i, j, k1, k2, k3, d) by direct enumeration in numpy."""
    species = np.asarray(crystal.species)
    x = np.asarray(crystal.positions, np.float64)
    lattice = np.asarray(crystal.lattice, np.float64)
    real = np.flatnonzero(species > 0)
    edges = []
    r = range(-reach, reach + 1)
    shifts = np.array([(a, b, c) for a in r for b in r for c in r], np.float64)
    for i in real:
        for j in real:
            d2 = np.sum((x[j] + shifts @ lattice - x[i]) ** 2, axis=1)
            for k in np.flatnonzero((d2 > 1e-4) & (d2 <= cutoff**2)):
                edges.append((int(i), int(j), *map(int, shifts[k]), float(np.sqrt(d2[k]))))
    return sorted(edges)
