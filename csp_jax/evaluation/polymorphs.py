"""The other structures a dataset holds for a test crystal's composition.

A model given only a composition cannot know which of several structures of it
the test split holds. Perov-5 holds nearly every composition twice, mostly as an
ABX3 perovskite and its A/B-site swap, and its splits place them at random. So
for a test crystal whose composition has m distinct structures in the dataset,
no composition-only model's top-ranked answer matches it with a probability
above 1/m in expectation over the split; `top1_ceiling` is the mean of 1/m.
Match@K with K >= m is not bounded that way.

`polymorph_metrics` reports the ceiling beside the top-ranked sample's rate of
matching the test crystal *or* another of the dataset's structures of its
composition (`any_structure`): a right polymorph, only not the one the test
split happens to hold.
"""
from __future__ import annotations

import collections
from typing import Sequence

import numpy as np

from csp_jax.data.dataset import CrystalDataset
from csp_jax.candidates.matching import MATCH, match_pairs, match_samples
from csp_jax.evaluation.samples import sample_at
from csp_jax.candidates.ranking import RANKINGS, cluster_samples, ranked_order, wilson_interval
from csp_jax.geometry.crystal import Crystal, formula_key


def _row(dataset: CrystalDataset, i: int) -> Crystal:
    return Crystal(dataset.species[i], dataset.positions[i], dataset.lattice[i])


def other_structures(test: CrystalDataset, references: Sequence[CrystalDataset],
                     timeout_s: float, workers: int | None = None) -> list[list[Crystal]]:
    """For each test crystal, one representative of every other structure of its reduced
    composition in `references` ([T][m_t - 1]).

    test: the T test crystals; references: the dataset's splits (the test
    crystal may be among them). The crystal and the references of its
    composition are clustered by StructureMatcher at the evaluation's
    tolerances (`ranking.cluster_samples`); each cluster other than the test
    crystal's gives its first member.
    """
    by_formula = collections.defaultdict(list)
    for dataset in references:
        for i, row in enumerate(dataset.species):
            by_formula[formula_key(row)].append((dataset, i))
    groups = [[_row(test, t)] + [_row(d, i) for d, i in by_formula.get(formula_key(test.species[t]), [])]
              for t in range(len(test))]
    labels = cluster_samples(groups, [[True] * len(g) for g in groups], timeout_s, workers)
    others = []
    for group, label in zip(groups, labels):
        firsts = {}
        for member, cluster in zip(group, label.tolist()):
            firsts.setdefault(cluster, member)
        others.append([member for cluster, member in firsts.items() if cluster not in (-1, label[0])])
    return others


def polymorph_metrics(results: dict, samples: Crystal, energies, others: Sequence[Sequence[Crystal]],
                      timeout_s: float, workers: int | None = None) -> dict:
    """The top-ranked sample against the test crystal's other structures.

    results: `metrics.evaluate_samples` with energies (per-pair `outcome` and
    cluster `labels`, [T][K]); samples: `Crystal` [T, K, N]; energies: [T, K];
    others: `other_structures` of the T test crystals. Returns
    crystals_with_other_structures (count), structures_per_composition (mean
    m), top1_ceiling (% : mean of 1/m) and any_structure[ranking] (match rate
    % and Wilson interval of the top sample of each of `ranking.RANKINGS`
    matching the test crystal or one of its other structures).
    """
    outcome, labels = np.asarray(results["outcome"]), np.asarray(results["labels"])
    num_test = outcome.shape[0]
    tops = {ranking: [int(ranked_order(energies[t], labels[t], ranking)[0]) for t in range(num_test)]
            for ranking in RANKINGS}
    wanted = sorted({(t, k) for top in tops.values() for t, k in enumerate(top)
                     if outcome[t, k] != MATCH and others[t]})
    pairs = [(t, k, other) for t, k in wanted for other in others[t]]
    found = {(t, k) for (t, k, _), r in zip(pairs, match_pairs(
        [(other, sample_at(samples, t, k)) for t, k, other in pairs], timeout_s, workers,
        match_samples)) if r.outcome == MATCH}
    count = np.array([1 + len(o) for o in others])
    any_structure = {}
    for ranking, top in tops.items():
        hits = sum(outcome[t, k] == MATCH or (t, k) in found for t, k in enumerate(top))
        any_structure[ranking] = {"match_rate": 100.0 * hits / num_test,
                                  "interval": list(wilson_interval(hits, num_test))}
    return {"crystals_with_other_structures": int(np.sum(count > 1)),
            "structures_per_composition": float(count.mean()),
            "top1_ceiling": 100.0 * float(np.mean(1.0 / count)),
            "any_structure": any_structure}
