"""Energy against the displacement of one atom (SPEC §6, the paper's Figure 2).

For a few random test crystals, one random atom each is moved by Gaussian
noise (sigma per Cartesian component) many times; each draw gives a pair
(|displacement|, H). `displaced_energies` evaluates H for all draws of one
crystal in one jitted, vmapped call; `displacement_experiment` picks the
crystals and atoms (seeded), writes the raw pairs as CSV and one scatter panel
per crystal as PNG.
"""
from __future__ import annotations

import csv
import functools
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from csp_jax.config import Config, DisplacementConfig
from csp_jax.data.dataset import CrystalDataset
from csp_jax.energy.base import Energy
from csp_jax.geometry.crystal import Crystal
from csp_jax.geometry.neighbors import NeighborCapacity
from csp_jax.geometry.capacity import grow_until_no_overflow, largest_needs

CSV_FIELDS = ("material_id", "atom_index", "element", "displacement", "energy", "energy_undisplaced")


@functools.partial(jax.jit, static_argnames=("energy", "capacity", "num_draws"))
def _energies(energy: Energy, variables, crystal: Crystal, atom, key, sigma, *,
              num_draws: int, capacity):
    """(|displacement| [D], H [D], H undisplaced [], overflow [], needs [D + 1, M]) for D draws on one atom."""
    noise = sigma * jax.random.normal(key, (num_draws, 3), crystal.positions.dtype)

    def displaced(shift):
        moved = crystal.replace(positions=crystal.positions.at[atom].add(shift))
        h, aux = energy.energy(variables, moved, capacity)
        return h, aux.overflow, aux.needs

    energies, overflow, needs = jax.vmap(displaced)(noise)
    undisplaced, overflow_0, needs_0 = displaced(jnp.zeros(3, noise.dtype))
    return (jnp.linalg.norm(noise, axis=-1), energies, undisplaced, jnp.any(overflow) | overflow_0,
            jnp.concatenate([needs, needs_0[None]]))


def displaced_energies(energy: Energy, variables, crystal: Crystal, atom: int, key, *,
                       sigma: float = DisplacementConfig.sigma,
                       num_draws: int = DisplacementConfig.num_draws, capacity=None):
    """H with atom `atom` of one crystal moved by N(0, sigma^2) noise per Cartesian component.

    crystal: one padded Crystal (species [N]). Returns numpy (displacement
    [num_draws] in Angstrom, energy [num_draws], energy of the undisplaced
    crystal []). The neighbour capacity (default `for_atoms(N)`) is grown and
    the draws repeated while any evaluation overflows it.
    """
    capacity = NeighborCapacity.for_atoms(crystal.species.shape[-1]) if capacity is None else capacity

    def run(capacity):
        out = jax.device_get(_energies(energy, variables, crystal, atom, key, sigma,
                                       num_draws=num_draws, capacity=capacity))
        return out[:3], out[3], largest_needs(out[4])

    (displacement, energies, undisplaced), _, _ = grow_until_no_overflow(
        run, capacity, "in the displaced crystals")
    return displacement, energies, undisplaced


def _plot(panels: list[dict], sigma: float, path: Path) -> None:
    from matplotlib.figure import Figure  # no pyplot: no backend is chosen or changed

    fig = Figure(figsize=(3.2 * len(panels), 3.0))
    axes = fig.subplots(1, len(panels), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        ax.scatter(panel["displacement"], panel["energy"], s=3, alpha=0.5)
        ax.axhline(panel["undisplaced"], color="gray", lw=0.8, ls="--")
        ax.set_title(f"{panel['material_id']}, atom {panel['atom']} ({panel['element']})", fontsize=9)
        ax.set_xlabel("displacement (A)")
    axes[0, 0].set_ylabel("energy H")
    fig.suptitle(f"Energy vs displacement of one atom (sigma = {sigma} A per component)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=150)


def displacement_experiment(config: Config, energy: Energy, variables, dataset: CrystalDataset,
                            out_dir, *, log: Callable[[str], None] = print) -> tuple[Path, Path]:
    """SPEC §6: write `displacement.csv` (one row per draw, CSV_FIELDS) and `displacement.png`.

    The options are `config.displacement`'s: sigma, num_crystals, num_draws, seed.
    Crystals (without replacement) and their atoms are drawn from
    `numpy.random.default_rng(seed)`; the noise of crystal c from
    `fold_in(PRNGKey(seed), c)`. Returns (csv path, png path).
    """
    from pymatgen.core import Element

    c = config.displacement
    sigma, num_crystals, num_draws, seed = c.sigma, c.num_crystals, c.num_draws, c.seed
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(dataset), size=min(num_crystals, len(dataset)), replace=False)
    capacity = NeighborCapacity.from_config(config.neighbors, dataset.max_atoms)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    panels = []
    for index, i in enumerate(picks):
        atom = int(rng.integers(dataset.num_atoms[i]))
        crystal = jax.tree.map(lambda a: a[i], dataset.crystals)
        displacement, energies, undisplaced = displaced_energies(
            energy, variables, crystal, atom, jax.random.fold_in(jax.random.PRNGKey(seed), index),
            sigma=sigma, num_draws=num_draws, capacity=capacity)
        element = Element.from_Z(int(crystal.species[atom])).symbol
        panels.append({"material_id": str(dataset.material_ids[i]), "atom": atom, "element": element,
                       "displacement": displacement, "energy": energies,
                       "undisplaced": float(undisplaced)})
        log(f"{dataset.material_ids[i]} atom {atom} ({element}): H = {float(undisplaced):.4f}, "
            f"range over {num_draws} draws {np.min(energies):.4f} .. {np.max(energies):.4f}")
    csv_path, png_path = out_dir / "displacement.csv", out_dir / "displacement.png"
    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_FIELDS)
        for p in panels:
            writer.writerows((p["material_id"], p["atom"], p["element"], float(d), float(e), p["undisplaced"])
                             for d, e in zip(p["displacement"], p["energy"]))
    _plot(panels, sigma, png_path)
    log(f"wrote {csv_path}, {png_path}")
    return csv_path, png_path
