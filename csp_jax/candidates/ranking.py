"""Which of a crystal's K samples the model answers with, and how sure a rate is.

A user of `predict` takes the structure ranked first, so the evaluation
scores the top sample of every ranking `predict` offers (RANKINGS):

- "first":     sample 0 (the chains are exchangeable: a random pick);
- "energy":    the valid sample of lowest final energy (invalid or
               non-finite samples last);
- "consensus": the largest cluster of mutually matching samples (connected
               components of the sample-against-sample StructureMatcher
               graph; a tie goes to the cluster holding the lowest energy),
               then energy within it.

`wilson_interval` gives the 95% interval of a rate over n crystals.
"""
from __future__ import annotations

import math

import numpy as np

from csp_jax.config import CHOICES
from csp_jax.candidates.matching import MATCH, match_pairs, match_samples

RANKINGS = ("first", *CHOICES["eval.ranking"])  # `predict` offers the last two (`config.eval.ranking`)
Z_95 = 1.959964  # the normal quantile of a two-sided 95% interval


def wilson_interval(successes: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval of successes / n, in percent ((0, 100) for n = 0)."""
    if n == 0:
        return 0.0, 100.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return 100.0 * max(0.0, centre - half), 100.0 * min(1.0, centre + half)


def cluster_labels(valid, matched_pairs) -> np.ndarray:
    """Labels [K] of the connected components of the match graph among valid samples.

    valid: [K] bool; matched_pairs: (i, j) index pairs of samples that match.
    Labels count from 0 in order of each component's first sample; -1 marks
    an invalid sample.
    """
    valid = np.asarray(valid, bool)
    parent = list(range(len(valid)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in matched_pairs:
        parent[root(int(i))] = root(int(j))
    labels, names = np.full(len(valid), -1), {}
    for i in np.flatnonzero(valid):
        labels[i] = names.setdefault(root(int(i)), len(names))
    return labels


def ranked_order(energies, labels, ranking: str) -> np.ndarray:
    """Sample indices [K], best first, under `ranking` (one of RANKINGS).

    energies: [K] final energies (non-finite ranks last); labels: [K] from
    `cluster_labels` (-1: invalid, ranked after every valid sample).
    """
    energies = np.asarray(energies, np.float64)
    labels = np.asarray(labels)
    if ranking not in RANKINGS:
        raise ValueError(f"unknown ranking {ranking!r}; choose from {', '.join(RANKINGS)}")
    if ranking == "first":
        return np.arange(len(energies))
    energy = np.where(np.isfinite(energies), energies, np.inf)
    invalid = (labels < 0) | ~np.isfinite(energies)
    if ranking == "energy":
        return np.lexsort((energy, invalid))
    good = ~invalid
    size = {c: int(np.sum(good & (labels == c))) for c in set(labels[good].tolist())}
    lowest = {c: float(energy[good & (labels == c)].min()) for c in size}
    cluster_size = np.array([size.get(c, 0) if g else 0 for c, g in zip(labels.tolist(), good)])
    cluster_lowest = np.array([lowest[c] if g else np.inf for c, g in zip(labels.tolist(), good)])
    return np.lexsort((energy, cluster_lowest, -cluster_size, invalid))


def sample_matches(groups, valid, timeout_s: float, workers: int | None = None) -> list[list[tuple[int, int]]]:
    """The pairs (i, j), i < j, of matching samples in every group of samples, from matching the
    valid samples of a group against each other (`match_samples`, K(K-1)/2 pairs per group, all
    in one worker pool).

    groups: G lists of unbatched `Crystal`s; valid: G lists of bools of the same lengths.
    """
    pairs = [(g, i, j) for g, flags in enumerate(valid) for i in range(len(flags))
             for j in range(i + 1, len(flags)) if flags[i] and flags[j]]
    results = match_pairs([(groups[g][i], groups[g][j]) for g, i, j in pairs], timeout_s, workers,
                          match_samples)
    matched = [[] for _ in groups]
    for (g, i, j), r in zip(pairs, results):
        if r.outcome == MATCH:
            matched[g].append((i, j))
    return matched


def cluster_samples(groups, valid, timeout_s: float, workers: int | None = None) -> list[np.ndarray]:
    """`cluster_labels` of every group of samples (`sample_matches`' arguments)."""
    return [cluster_labels(flags, found) for flags, found in
            zip(valid, sample_matches(groups, valid, timeout_s, workers))]


def representatives(energies, valid, matched_pairs) -> np.ndarray:
    """Each sample's representative [K] (a sample index; -1 for invalid samples): a star cover of
    the match graph, so that every sample matches its representative.

    The valid samples are taken in order of learned energy (`energies` [K], lowest first); one
    that matches no representative yet becomes one, and each sample is represented by the
    lowest-energy representative it matches. Unlike the connected components of
    `cluster_labels`, whose matches can chain different structures, a representative's group
    holds only structures that match it. matched_pairs: (i, j) pairs of matching samples.
    """
    valid = np.asarray(valid, bool)
    neighbours = {k: set() for k in range(len(valid))}
    for i, j in matched_pairs:
        neighbours[int(i)].add(int(j))
        neighbours[int(j)].add(int(i))
    energy = np.where(np.isfinite(energies), energies, np.inf)
    chosen = np.full(len(valid), -1)
    heads: list[int] = []
    for k in np.flatnonzero(valid)[np.argsort(energy[valid], kind="stable")]:
        head = next((h for h in heads if h in neighbours[int(k)]), None)
        if head is None:
            heads.append(int(k))
        chosen[k] = int(k) if head is None else head
    return chosen
