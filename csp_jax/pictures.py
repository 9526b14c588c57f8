"""Pictures a user looks at: a crystal structure, chains annealing, an evaluation's spread.

- `structure_png`: the unit cell with its atoms (ASE's matplotlib renderer),
  coloured by element (Jmol colours) with a legend;
- `chain_energy_png`: the energy of chains against the MALA step.
Both write PNG files and return their paths; the evaluation's figures are in
`csp_jax.evaluation.figures`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure  # figures without pyplot: no backend is chosen or changed


def structure_png(structure, path, title: str = "", rotation: str = "10x,-20y") -> Path:
    """The unit cell of a pymatgen Structure, atoms coloured by element, as a PNG."""
    from ase.data import chemical_symbols
    from ase.data.colors import jmol_colors
    from ase.visualize.plot import plot_atoms
    from matplotlib.patches import Patch
    from pymatgen.io.ase import AseAtomsAdaptor

    atoms = AseAtomsAdaptor.get_atoms(structure)
    fig = Figure(figsize=(4.2, 4.2))
    ax = fig.subplots()
    plot_atoms(atoms, ax, rotation=rotation, radii=0.5, show_unit_cell=2)
    numbers = sorted(set(int(z) for z in atoms.numbers))
    ax.legend(handles=[Patch(facecolor=jmol_colors[z], edgecolor="black", label=chemical_symbols[z])
                       for z in numbers], loc="upper right", fontsize=8, framealpha=0.8)
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    return Path(path)


def chain_energy_png(energies, path, title: str = "", labels=None) -> Path:
    """Energy H of chains [M, K] against the MALA step (one line per chain) as a PNG."""
    energies = np.asarray(energies)
    fig = Figure(figsize=(5.5, 3.5))
    ax = fig.subplots()
    for m, trace in enumerate(energies):
        ax.plot(np.arange(1, trace.shape[0] + 1), trace, lw=0.8, alpha=0.8,
                label=None if labels is None else labels[m])
    finite = energies[np.isfinite(energies)]
    if finite.size:  # the first, hot steps can be far above the rest
        low, high = np.percentile(finite, [0.5, 99])
        ax.set_ylim(low - 0.1 * (high - low), high + 0.1 * (high - low))
    ax.set(xlabel="MALA step", ylabel="energy H", title=title)
    ax.grid(alpha=0.3)
    if labels is not None:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    return Path(path)
