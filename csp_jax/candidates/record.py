"""The samples of one formula or test crystal as one record, made once after sampling.

    candidates = from_samples(name, crystals, energies, units)      # validity
    candidates = with_groups(candidates, timeout_s)                 # which samples match
    candidates = with_relaxed(candidates, config.relax, calc, ...)  # a potential's relaxation
    candidates = with_refined(candidates, config.relax, calc2)      # a second potential's, of the best
    order = ranked(candidates, config.eval.ranking)                 # the one ranking

`predict` and `evaluate` build it, and read the answer a user gets from
`ranked` alone: with relaxations, the structures a second potential relaxed
again (`relax.refine`) by its energy per atom, then the relaxed candidates by
the first potential's energy per atom (a failed relaxation last), then the
samples that were not relaxed; without, the learned energy's ranking
(`ranking.ranked_order`). `final` is a candidate's last relaxation.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple, Sequence

import numpy as np

from csp_jax.candidates.matching import MATCH, match_pairs, match_samples
from csp_jax.candidates.ranking import cluster_labels, ranked_order, representatives, sample_matches
from csp_jax.candidates.relax import Relaxed, relax
from csp_jax.config import RelaxConfig
from csp_jax.geometry.crystal import Crystal, from_structure
from csp_jax.geometry.validity import valid_structure


class Candidates(NamedTuple):
    """K samples of one formula (or test crystal) and what is known of them.

    name:           the formula's (or test crystal's) name.
    crystals:       Crystal [K, N] (numpy), the samples.
    energies:       [K] the learned energy H of each sample.
    units:          [K] int, formula units Z of each sample's cell.
    structures:     K pymatgen Structures, None where a sample is not finite or
                    not a physical crystal (`geometry.validity.valid_structure`).
    groups:         [K] int, groups of mutually matching samples (connected components
                    of the match graph) numbered by size (0 the largest), -1 for invalid
                    samples or samples not compared.
    matches:        (i, j) pairs of matching samples, i < j (empty: not compared).
    relaxed:        K `relax.Relaxed` or None (not relaxed).
    relaxed_groups: [K] int, groups of matching relaxed structures by size, -1
                    where not relaxed or the relaxation failed.
    relaxed_matches: (i, j) pairs of matching relaxed structures, i < j.
    refined:        K `relax.Relaxed` or None: the relaxed structure relaxed again by a
                    second potential (`relax.refine`; None: not chosen, `to_refine`).
    """

    name: str
    crystals: Crystal
    energies: np.ndarray
    units: np.ndarray
    structures: tuple
    groups: np.ndarray
    matches: tuple
    relaxed: tuple
    relaxed_groups: np.ndarray
    relaxed_matches: tuple
    refined: tuple

    @property
    def valid(self) -> np.ndarray:
        """[K] bool, the sample is a finite, physical crystal."""
        return np.array([s is not None for s in self.structures], bool)

    def crystal(self, k: int) -> Crystal:
        """Sample k as one unbatched Crystal."""
        return Crystal(self.crystals.species[k], self.crystals.positions[k], self.crystals.lattice[k])


def from_samples(name: str, crystals: Crystal, energies, units) -> Candidates:
    """The record of K samples (crystals [K, N], energies [K], units [K]), their validity known."""
    energies = np.asarray(energies, np.float64)
    num = len(energies)
    candidates = Candidates(name, crystals, energies, np.asarray(units, int), (None,) * num,
                            np.full(num, -1), (), (None,) * num, np.full(num, -1), (), (None,) * num)
    structures = tuple(valid_structure(candidates.crystal(k)) if math.isfinite(energies[k]) else None
                       for k in range(num))
    return candidates._replace(structures=structures)


def by_size(labels) -> np.ndarray:
    """Cluster labels [K] (`ranking.cluster_labels`, -1 none) renumbered by the cluster's size,
    0 the largest (ties: the first-labelled first)."""
    labels = np.asarray(labels)
    sizes = np.bincount(labels[labels >= 0], minlength=1)
    rank = {int(c): n for n, c in enumerate(np.argsort(-sizes, kind="stable"))}
    return np.array([rank[int(c)] if c >= 0 else -1 for c in labels], int)


def with_matches(candidates: Candidates, matches) -> Candidates:
    """`candidates` with the pairs (i, j) of its samples that match (`matches`) and their `groups`."""
    matches = tuple((int(i), int(j)) for i, j in matches)
    return candidates._replace(matches=matches, groups=by_size(cluster_labels(candidates.valid, matches)))


def with_groups(candidates: Candidates, timeout_s: float, workers: int | None = None) -> Candidates:
    """`candidates` with `matches` and `groups`, from matching its valid samples against each other."""
    [matches] = sample_matches([[candidates.crystal(k) for k in range(len(candidates.energies))]],
                               [candidates.valid.tolist()], timeout_s, workers)
    return with_matches(candidates, matches)


def to_relax(candidates: Candidates, which: str) -> list[int]:
    """The samples to relax: every valid one ("all"), or the `ranking.representatives` of the
    matching samples ("representatives": in order of learned energy, each sample that matches
    no representative yet; every valid sample then matches a relaxed one)."""
    if which == "all":
        return np.flatnonzero(candidates.valid).tolist()
    chosen = representatives(candidates.energies, candidates.valid, candidates.matches)
    return sorted({int(k) for k in chosen if k >= 0})


def kept(candidates: Candidates, which: str, done: Sequence[Relaxed | None] = ()) -> list:
    """The relaxations `done` ([K] `Relaxed` or None; empty: none) of the samples `to_relax`
    chooses under `which`, None for the others."""
    chosen = set(to_relax(candidates, which)) if done else set()
    return [done[k] if k in chosen else None for k in range(len(candidates.energies))]


def relaxations(candidates: Candidates, relax_config: RelaxConfig, calc, log: Callable[[str], None] = print,
                done: Sequence[Relaxed | None] = ()) -> tuple:
    """K `Relaxed` or None: the chosen samples (`to_relax`, `relax_config.candidates`) relaxed by
    the ASE calculator `calc` (`relax_config.fmax`, `max_steps`; built only when needed: a
    function returning it).

    done: relaxations already made, by sample (a resumed evaluation's, perhaps of another
    choice of candidates); the chosen samples among them are not relaxed again, the others
    are left out. Logs one line per relaxation: steps, energy per atom, time.
    """
    chosen = to_relax(candidates, relax_config.candidates)
    relaxed = kept(candidates, relax_config.candidates, done)
    for n, k in enumerate(chosen, start=1):
        if relaxed[k] is None:
            relaxed[k] = relax(candidates.structures[k], calc(), fmax=relax_config.fmax,
                               max_steps=relax_config.max_steps)
            r = relaxed[k]
            log(f"{candidates.name}: relaxed {n}/{len(chosen)} (sample {k}): {r.steps} steps, "
                + (f"{r.energy_per_atom:.4f} eV/atom" if not r.message else f"failed ({r.message})")
                + ("" if r.converged or r.message else ", not converged") + f", {r.seconds:.1f} s")
    return tuple(relaxed)


def with_relaxations(candidates: Candidates, relaxed: Sequence[Relaxed | None], timeout_s: float,
                     workers: int | None = None) -> Candidates:
    """`candidates` with `relaxed` (K, `relaxations`) and the relaxed structures grouped again
    (two samples often relax into one minimum)."""
    groups, matches = _relaxed_groups(relaxed, timeout_s, workers)
    return candidates._replace(relaxed=tuple(relaxed), relaxed_groups=groups, relaxed_matches=matches)


def with_relaxed(candidates: Candidates, relax_config: RelaxConfig, calc, timeout_s: float,
                 workers: int | None = None, log: Callable[[str], None] = print) -> Candidates:
    """`candidates` with its `relaxations` by the ASE calculator `calc`, grouped again."""
    return with_relaxations(candidates, relaxations(candidates, relax_config, lambda: calc, log),
                            timeout_s, workers)


def relaxed_crystal(r: Relaxed) -> Crystal:
    """A relaxed structure as an unbatched Crystal (float64)."""
    return from_structure(r.structure, dtype=np.float64)


def _relaxed_groups(relaxed: Sequence[Relaxed | None], timeout_s: float,
                    workers: int | None) -> tuple[np.ndarray, tuple]:
    """(groups [K] of the relaxed structures that match each other, by size, -1 elsewhere;
    the (i, j) pairs that match)."""
    good = [k for k, r in enumerate(relaxed) if r is not None and math.isfinite(r.energy_per_atom)]
    crystals = {k: relaxed_crystal(relaxed[k]) for k in good}
    pairs = [(i, j) for a, i in enumerate(good) for j in good[a + 1:]]
    results = match_pairs([(crystals[i], crystals[j]) for i, j in pairs], timeout_s, workers, match_samples)
    matched = [(i, j) for (i, j), r in zip(pairs, results) if r.outcome == MATCH]
    flags = np.zeros(len(relaxed), bool)
    flags[good] = True
    return by_size(cluster_labels(flags, matched)), tuple(matched)


def to_refine(candidates: Candidates, window_mev: float) -> list[int]:
    """The relaxed samples a second potential relaxes again: those within `window_mev` (meV/atom)
    of the lowest energy per atom, one per group of matching relaxed structures (the
    `ranking.representatives` of the relaxed matches, lowest energy first)."""
    potential = relaxed_energies(candidates)
    if not np.isfinite(potential).any():
        return []
    near = np.isfinite(potential) & (potential <= np.nanmin(potential) + window_mev / 1000.0)
    chosen = representatives(np.where(near, potential, np.inf), near, candidates.relaxed_matches)
    return sorted({int(k) for k in chosen if k >= 0})


def kept_refinements(candidates: Candidates, window_mev: float, done: Sequence[Relaxed | None] = ()) -> tuple:
    """The refinements `done` ([K] `Relaxed` or None; empty: none) of the structures `to_refine`
    chooses under `window_mev`, None for the others."""
    chosen = set(to_refine(candidates, window_mev)) if done else set()
    return tuple(done[k] if k in chosen else None for k in range(len(candidates.energies)))


def refinements(candidates: Candidates, relax_config: RelaxConfig, calc, log: Callable[[str], None] = print,
                done: Sequence[Relaxed | None] = ()) -> tuple:
    """K `Relaxed` or None: the relaxed structures `to_refine` chooses (`relax_config.refine_window`)
    relaxed again by the ASE calculator `calc` (a function returning it, called when needed;
    `relax_config.fmax`, `max_steps`). done: refinements already made, by sample (kept when
    chosen). Logs one line per relaxation."""
    chosen = to_refine(candidates, relax_config.refine_window)
    refined = list(kept_refinements(candidates, relax_config.refine_window, done))
    for n, k in enumerate(chosen, start=1):
        if refined[k] is None:
            refined[k] = relax(candidates.relaxed[k].structure, calc(), fmax=relax_config.fmax,
                               max_steps=relax_config.max_steps)
            r = refined[k]
            log(f"{candidates.name}: relaxed again {n}/{len(chosen)} (sample {k}): {r.steps} steps, "
                + (f"{r.energy_per_atom:.4f} eV/atom" if not r.message else f"failed ({r.message})")
                + f", {r.seconds:.1f} s")
    return tuple(refined)


def with_refined(candidates: Candidates, relax_config: RelaxConfig, calc,
                 log: Callable[[str], None] = print) -> Candidates:
    """`candidates` with its `refinements` by the ASE calculator `calc`."""
    return candidates._replace(refined=refinements(candidates, relax_config, lambda: calc, log))


def final(candidates: Candidates, k: int) -> Relaxed | None:
    """Sample k's last relaxation: by the second potential where it relaxed it again (and
    succeeded), else by the first; None when it was not relaxed."""
    refined = candidates.refined[k]
    return refined if refined is not None and math.isfinite(refined.energy_per_atom) else candidates.relaxed[k]


def _energies(relaxed: Sequence[Relaxed | None]) -> np.ndarray:
    return np.array([r.energy_per_atom if r is not None else math.nan for r in relaxed])


def relaxed_energies(candidates: Candidates) -> np.ndarray:
    """[K] the (first) potential's energy per atom of each relaxed sample, NaN where none."""
    return _energies(candidates.relaxed)


def refined_energies(candidates: Candidates) -> np.ndarray:
    """[K] the second potential's energy per atom of each structure it relaxed again, NaN where none."""
    return _energies(candidates.refined)


def ranked(candidates: Candidates, ranking: str) -> np.ndarray:
    """Sample indices [K], best first: the answer a user reads first is `[0]`.

    With relaxations: the structures the second potential relaxed again by its energy per
    atom (a failed one falls back to its place below), then the relaxed samples by the
    potential's energy per atom (a failed relaxation after them), then the others as
    below. Without: `ranking.ranked_order` of the learned energies under `ranking`
    (invalid last).
    """
    order = ranked_order(candidates.energies, np.where(candidates.valid, candidates.groups, -1)
                         if ranking == "consensus" else np.where(candidates.valid, 0, -1), ranking)
    tried = np.array([r is not None for r in candidates.relaxed], bool)
    if not tried.any():
        return order
    potential = relaxed_energies(candidates)
    first = np.flatnonzero(tried)
    first = first[np.lexsort((candidates.energies[first], np.nan_to_num(potential[first], nan=np.inf)))]
    second = refined_energies(candidates)
    again = np.flatnonzero(np.isfinite(second))
    again = again[np.lexsort((potential[again], second[again]))]
    return np.concatenate([again, [k for k in first if k not in again],
                           [k for k in order if not tried[k]]]).astype(int)
