"""`EnergyModel.energy` against a direct, unoptimised transcription of SPEC §2.

The reference below enumerates every (i, j, k) of a dense N x N x images grid
with masks (no neighbour list, no capacity, no gathering of node projections)
and reads the same parameters from the Flax variables. Energies and gradients
with respect to positions and lattice must agree in float64, so any speed-up
of the library (neighbour search, edge selection, edge-feature sharing or
tabulation, one-hot aggregation) has to keep SPEC §2's numbers.

Tests `csp_jax.energy.continuousp` and `csp_jax.energy.network`.
"""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from csp_jax.config import get_config
from csp_jax.geometry.crystal import Crystal
from csp_jax.energy.continuousp import EnergyModel
from csp_jax.geometry.neighbors import NeighborCapacity
from helpers import random_crystal

pytestmark = [pytest.mark.usefixtures("x64"),  # float64 throughout
              pytest.mark.slow]  # the dense reference and the library compiled per case: 5-15 s each


def box_images(positions, lattice, cutoff):
    """[K, 3] all translations an edge can use, from numpy.

    SPEC §2.2's |k_a| <= ceil(D / h_a) holds for wrapped positions; unwrapped
    ones need the spread of their fractional coordinates on top.
    """
    frac = positions @ np.linalg.inv(lattice)
    spread = np.ceil(np.max(frac, axis=0) - np.min(frac, axis=0))
    reach = (np.ceil(cutoff * np.linalg.norm(np.linalg.inv(lattice), axis=0)) + spread).astype(int)
    return np.array(list(itertools.product(*(range(-r, r + 1) for r in reach))), np.float64)


def reference_energy(params, spectral, species, positions, lattice, images, num_conv, num_fc,
                     rho0=0.05):
    """H of SPEC §2 for one crystal of real atoms only: species [n], positions [n, 3], lattice [3, 3]."""
    n = species.shape[0]
    volume = jnp.abs(jnp.linalg.det(lattice))
    cutoff = 3.0 * (volume / n) ** (1.0 / 3.0)
    vectors = positions[None, :, None, :] + (images @ lattice)[None, None] - positions[:, None, None, :]
    dist_sq = jnp.sum(vectors**2, axis=-1)  # [i, j, k]
    is_edge = (dist_sq > 1e-4) & (dist_sq <= cutoff**2)
    dist = jnp.sqrt(jnp.where(is_edge, dist_sq, 1.0))
    weight = jnp.where(is_edge, 1.0 + jnp.cos(jnp.pi * dist / cutoff), 0.0)
    d = params["embed"]["embedding"].shape[1]
    mu = jnp.linspace(0.0, 20.0, d)
    s = 3.0 * 20.0 / (d - 1)
    gauss = jnp.exp(-((dist[..., None] - mu) ** 2) / (2 * s**2))  # [i, j, k, d]
    v = jnp.tanh(params["embed"]["embedding"][species - 1])

    def dense(p, x):
        return x @ p["kernel"] + p["bias"]

    for layer in range(num_conv):
        p = params[f"GraphConv_{layer}"]
        z = ((dense(p["W1"], v)[:, None, None, :] + dense(p["W2"], v)[None, :, None, :])
             * dense(p["W3"], gauss))
        gate, core = z[..., :d], z[..., d:]
        messages = weight[..., None] * jax.nn.sigmoid(gate) * core
        v = jax.nn.softplus(v + jnp.tanh(jnp.sum(messages, axis=(1, 2))))
    h = jnp.mean(v, axis=0)
    for layer in range(num_fc - 1):
        p, uv = params[f"SpectralLinear_{layer}"], spectral[f"SpectralLinear_{layer}"]["uv"]
        sigma = uv["u"] @ p["kernel"].T @ uv["v"]
        h = jax.nn.softplus(h @ (p["kernel"] / sigma) + p["bias"])
    nn_out = dense(params["out"], h)[0]
    return nn_out + jnp.log(n / volume / rho0) ** 2


@pytest.mark.parametrize("config,num_atoms,max_atoms,seed", [
    ("perov5", 5, 5, 0), ("perov5", 7, 9, 1), ("mp20", 3, 4, 3)])
def test_energy_and_gradients_match_reference(config, num_atoms, max_atoms, seed):
    model = EnergyModel.from_config(get_config(config).model)
    variables = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), model.init(jax.random.key(seed)))
    rng = np.random.default_rng(seed)
    crystal = random_crystal(rng, num_atoms, max_atoms, skew=0.4)
    crystal = Crystal(crystal.species, crystal.positions + rng.normal(0, 2.0, (max_atoms, 3)),
                      crystal.lattice)  # unwrapped positions
    real = np.asarray(crystal.species) > 0
    species = jnp.asarray(np.asarray(crystal.species)[real])
    lattice = np.asarray(crystal.lattice)
    cutoff = 3.0 * (abs(np.linalg.det(lattice)) / num_atoms) ** (1 / 3)
    images = jnp.asarray(box_images(np.asarray(crystal.positions)[real], lattice, cutoff))
    capacity = NeighborCapacity(max_images=729, max_edges=int(4 * 113 * max_atoms))

    def library(positions, lattice):
        energy, nbrs = model.energy(variables, crystal.replace(positions=positions, lattice=lattice),
                                    capacity)
        return energy, nbrs.overflow

    def reference(positions, lattice):
        return reference_energy(variables["params"], variables["spectral"], species, positions[real],
                                lattice, images, model.num_conv, model.num_fc)

    args = (jnp.asarray(crystal.positions), jnp.asarray(lattice))
    (energy, overflow), grads = jax.jit(jax.value_and_grad(library, argnums=(0, 1), has_aux=True))(*args)
    ref_energy, ref_grads = jax.jit(jax.value_and_grad(reference, argnums=(0, 1)))(*args)
    assert not bool(overflow)
    assert energy.dtype == jnp.float64
    np.testing.assert_allclose(energy, ref_energy, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(np.asarray(grads[0])[real], np.asarray(ref_grads[0])[real], rtol=1e-7, atol=1e-8)
    np.testing.assert_allclose(np.asarray(grads[0])[~real], 0.0, atol=0)
    np.testing.assert_allclose(grads[1], ref_grads[1], rtol=1e-7, atol=1e-8)
    assert np.max(np.abs(ref_grads[1])) > 1e-3  # the comparison is not vacuous

    # Gradients with respect to every parameter (training), through the hand-written convolution gradient.
    def library_params(params):
        return model.energy({"params": params, "spectral": variables["spectral"]},
                            crystal.replace(positions=args[0], lattice=args[1]), capacity)[0]

    def reference_params(params):
        return reference_energy(params, variables["spectral"], species, args[0][real], args[1], images,
                                model.num_conv, model.num_fc)

    got = jax.jit(jax.grad(library_params))(variables["params"])
    want = jax.jit(jax.grad(reference_params))(variables["params"])
    for (path, g), w in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(g, w, rtol=1e-7, atol=1e-9, err_msg=jax.tree_util.keystr(path))
    assert np.max(np.abs(want["GraphConv_0"]["W3"]["kernel"])) > 1e-3


@pytest.mark.parametrize("config,num_atoms", [("perov5", 5), ("mp20", 6)])
def test_float32_library_matches_float64_reference(config, num_atoms):
    """The float32 path the sampler runs agrees with SPEC §2 at float32 tolerance on random crystals."""
    model = EnergyModel.from_config(get_config(config).model)
    with jax.enable_x64(False):
        variables = model.init(jax.random.key(7))
    variables64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), variables)
    rng = np.random.default_rng(7)
    capacity = NeighborCapacity(max_images=729, max_edges=int(4 * 113 * num_atoms))
    crystals = [random_crystal(rng, num_atoms, skew=0.4) for _ in range(3)]
    # One set of translations for all three (the union of their boxes): one compilation each.
    boxes = [box_images(np.asarray(c.positions), np.asarray(c.lattice),
                        3.0 * (abs(np.linalg.det(np.asarray(c.lattice))) / num_atoms) ** (1 / 3)) for c in crystals]
    reach = np.max([np.max(b, axis=0) for b in boxes], axis=0).astype(int)
    images = jnp.asarray(list(itertools.product(*(range(-r, r + 1) for r in reach))), jnp.float64)

    def library(positions, lattice, species):
        return model.energy(variables, Crystal(species, positions, lattice), capacity)[0]

    def reference(positions, lattice, species):
        return reference_energy(variables64["params"], variables64["spectral"], species, positions, lattice,
                                images, model.num_conv, model.num_fc)

    with jax.enable_x64(False):
        library_grad = jax.jit(jax.value_and_grad(library, argnums=(0, 1)))
    reference_grad = jax.jit(jax.value_and_grad(reference, argnums=(0, 1)))
    for crystal in crystals:
        species = jnp.asarray(crystal.species)
        args64 = (jnp.asarray(crystal.positions), jnp.asarray(crystal.lattice))
        args32 = tuple(np.asarray(a, np.float32) for a in args64)
        with jax.enable_x64(False):  # the library as the sampler runs it
            energy, grads = library_grad(*args32, species)
        ref_energy, ref_grads = reference_grad(*args64, species)
        assert energy.dtype == jnp.float32
        np.testing.assert_allclose(energy, ref_energy, rtol=1e-5, atol=1e-5)
        for g, r in zip(grads, ref_grads):
            np.testing.assert_allclose(g, r, rtol=1e-3, atol=1e-4 * np.max(np.abs(r)))
