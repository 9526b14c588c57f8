"""The periodic neighbour list equals brute-force enumeration; overflow is flagged.

Tests `csp_jax.geometry.neighbors` (`NeighborCapacity.grow` and `fit` included).
"""
import zlib

import jax
import numpy as np
import pytest

from csp_jax.geometry.crystal import Crystal
from csp_jax.geometry.neighbors import (
    NeighborCapacity, cutoff_radius, edge_vectors, neighbor_list, safe_norm)
from helpers import brute_force_edges, perovskite, random_crystal


jit_neighbor_list = jax.jit(neighbor_list, static_argnums=1)  # compiled per shape, not op by op


def listed_edges(crystal, capacity):
    with jax.enable_x64(True):
        nbrs = jit_neighbor_list(crystal, capacity)
        dist = safe_norm(edge_vectors(crystal, nbrs), nbrs.edge_mask)
    assert not bool(nbrs.overflow)
    m = np.asarray(nbrs.edge_mask)
    assert int(nbrs.num_edges) == m.sum()
    receivers, senders = np.asarray(nbrs.receivers)[m], np.asarray(nbrs.senders)[m]
    assert np.all(receivers <= senders)
    directed = []
    for i, j, s, d in zip(receivers, senders, np.rint(np.asarray(nbrs.shifts)[m]).astype(int), np.asarray(dist)[m]):
        directed += [(int(i), int(j), *map(int, s), float(d)), (int(j), int(i), *map(int, -s), float(d))]
    return sorted(directed)


def unwrapped_positions(crystal, rng):
    """The same crystal with every atom moved by a random lattice translation."""
    jumps = rng.integers(-2, 3, crystal.positions.shape).astype(np.float64)
    return crystal.replace(positions=crystal.positions + jumps @ crystal.lattice)


def shear(crystal, amount):
    lattice = np.asarray(crystal.lattice) @ (np.eye(3) + np.array([[0, amount, 0], [0, 0, 0], [0, 0, 0]]))
    frac = np.asarray(crystal.frac)
    return crystal.replace(positions=frac @ lattice, lattice=lattice)


@pytest.mark.parametrize("case", ["perovskite", "random", "unwrapped", "thin", "sheared", "padded"])
def test_edges_equal_brute_force(case):
    """Each pair edge, taken in both directions, gives exactly the directed edges of SPEC §2.2."""
    rng = np.random.default_rng(zlib.crc32(case.encode()))  # the same crystals in every process
    crystal = {
        "perovskite": lambda: perovskite(),
        "random": lambda: random_crystal(rng, 6),
        "unwrapped": lambda: unwrapped_positions(random_crystal(rng, 4), rng),
        "thin": lambda: random_crystal(rng, 3).replace(
            lattice=np.diag([2.0, 6.0, 5.0]), positions=rng.uniform(0, 1, (3, 3)) @ np.diag([2.0, 6.0, 5.0])),
        "sheared": lambda: shear(random_crystal(rng, 4, skew=0.1), 0.8),
        "padded": lambda: random_crystal(rng, 3, max_atoms=7),
    }[case]()
    with jax.enable_x64(True):
        cutoff = float(cutoff_radius(jax.tree.map(np.asarray, crystal)))
    expected = brute_force_edges(crystal, cutoff)
    got = listed_edges(crystal, NeighborCapacity(max_images=2000, max_edges=4096))
    assert len(got) == len(expected)
    assert [e[:5] for e in got] == [e[:5] for e in expected]
    np.testing.assert_allclose([e[5] for e in got], [e[5] for e in expected], rtol=1e-10)


def test_mean_neighbour_count_is_scale_free():
    rng = np.random.default_rng(0)
    counts = []
    for scale in (0.5, 1.0, 3.0):
        c = random_crystal(rng, 20, skew=0.05)
        c = c.replace(positions=c.positions * scale, lattice=c.lattice * scale)
        counts.append(len(brute_force_edges(c, float(cutoff_radius(c)), reach=3)) / 20)
    assert all(80 < n < 150 for n in counts), counts  # about (4/3) pi 27 = 113


def test_overflow_flagged_on_thin_cell():
    lattice = np.diag([1.0, 10.0, 10.0])  # D = 3 (100)^(1/3) = 13.9: 2 D / 1 A = 27.8 along a
    crystal = Crystal(np.array([6], np.int32), np.zeros((1, 3)), lattice)
    nbrs = jit_neighbor_list(crystal, NeighborCapacity(max_images=216, max_edges=100000))
    assert bool(nbrs.overflow)
    assert np.asarray(nbrs.image_counts).tolist() == [28, 3, 3] and int(nbrs.num_images) == 28 * 3 * 3
    assert not bool(neighbor_list(crystal, NeighborCapacity(28 * 3 * 3, 100000)).overflow)


def test_overflow_flagged_on_edge_capacity_and_grow_fixes_it():
    crystal = perovskite()
    small = NeighborCapacity(max_images=216, max_edges=64)
    nbrs = jit_neighbor_list(crystal, small)
    assert bool(nbrs.overflow) and int(nbrs.num_edges) > 64
    grown = small
    while grown.max_edges < int(nbrs.num_edges):
        grown = grown.grow()
    assert not bool(neighbor_list(crystal, grown).overflow)


def test_vmapped_over_padded_batch():
    rng = np.random.default_rng(1)
    crystals = [random_crystal(rng, n, max_atoms=6, dtype=np.float32) for n in (2, 6, 4)]
    batch = jax.tree.map(lambda *x: np.stack(x), *crystals)
    cap = NeighborCapacity.for_atoms(6, max_images=512)
    nbrs = jax.jit(jax.vmap(neighbor_list, in_axes=(0, None)), static_argnums=1)(batch, cap)
    for b, c in enumerate(crystals):
        single = jit_neighbor_list(c, cap)
        assert int(nbrs.num_edges[b]) == int(single.num_edges)


def test_grow_to_the_needs():
    cap = NeighborCapacity(max_images=216, max_edges=320)
    assert cap.grow(400, 100) == NeighborCapacity(512, 320)  # only images: 1.25 x 400 = 500, its class 512
    assert cap.grow(100, 1000) == NeighborCapacity(216, 1152)  # only edges: 1.1 x 1000, its class
    assert cap.grow() == NeighborCapacity(368, 480)  # no needs given: both 1.5x, to their classes


def test_fit_follows_the_needs_with_hysteresis():
    cap = NeighborCapacity(max_images=216, max_edges=480)
    assert cap.fit(27, 296) == NeighborCapacity(40, 352)  # both far below: shrink to the need with room
    assert cap.fit(166, 390) == cap  # 1.25 x 166 = 208 and 1.1 x 390 = 429 still need these classes: keep
    assert cap.fit(300, 100) == NeighborCapacity(432, 128)  # images grow, edges shrink
    for needs in [(27, 296), (166, 390), (300, 100), (1, 1)]:
        fitted = cap.fit(*needs)
        assert fitted.max_images >= needs[0] and fitted.max_edges >= needs[1]


def test_drifting_needs_meet_few_capacity_classes():
    """Needs that drift by a few percent at a time visit few distinct capacities (compilations)."""
    cap = NeighborCapacity.for_atoms(5)
    seen = {cap}
    for edges in np.linspace(600, 300, 60):  # a chain settling: edges needed fall by half
        cap = cap.fit(100, int(edges))
        assert cap.max_edges >= edges
        seen.add(cap)
    assert len(seen) <= 6 and len({c.max_edges for c in seen}) <= 6
    assert all(c.max_edges % 32 == 0 and c.max_images % 8 == 0 for c in seen)


@pytest.mark.parametrize("lattice", [np.diag([1e-6, 10.0, 10.0]), np.full((3, 3), np.nan),
                                     np.array([[1.0, 0, 0], [2.0, 0, 0], [0, 0, 1.0]])])
def test_degenerate_cells_are_invalid_not_overflowing(lattice):
    """A cell needing absurd image counts (or non-finite, or flat) is flagged invalid: no edges,
    no overflow (nothing to grow), and the energy is NaN so MALA rejects it."""
    from csp_jax.config import get_config
    from csp_jax.energy.continuousp import EnergyModel

    crystal = Crystal(np.array([6, 8], np.int32), np.array([[0.1, 0.2, 0.3], [0.5, 0.5, 0.5]]), lattice)
    cap = NeighborCapacity.for_atoms(2)
    nbrs = jit_neighbor_list(crystal, cap)
    assert not bool(nbrs.valid) and not bool(nbrs.overflow)
    assert int(nbrs.num_edges) == 0 and not np.any(np.asarray(nbrs.edge_mask))
    model = EnergyModel.from_config(get_config("perov5").model)
    energy, _ = jax.jit(model.energy, static_argnums=2)(model.init(jax.random.PRNGKey(0)), crystal, cap)
    assert np.isnan(float(energy))


def test_graphs_tuple_feeds_jraph():
    import jraph

    from csp_jax.geometry.neighbors import graphs_tuple

    crystal = jax.tree.map(np.asarray, perovskite())
    nbrs = jit_neighbor_list(crystal, NeighborCapacity.for_atoms(5))
    graph = graphs_tuple(crystal, nbrs)
    assert isinstance(graph, jraph.GraphsTuple)
    degree = jraph.segment_sum(graph.edges["mask"].astype(np.float32), graph.receivers, 5)
    assert float(degree.sum()) == 2 * int(nbrs.num_edges)  # both directions of every pair edge
    assert len(set(np.asarray(degree).tolist())) == 2  # Sr/Ti sites and the three O sites
    expected = brute_force_edges(crystal, float(cutoff_radius(crystal)))
    assert sorted(np.bincount([e[0] for e in expected], minlength=5)) == sorted(np.asarray(degree))
    lengths = np.linalg.norm(np.asarray(graph.edges["vectors"])[np.asarray(graph.edges["mask"])], axis=1)
    assert np.all(lengths <= float(cutoff_radius(crystal)) + 1e-5) and np.all(lengths > 0.01)
