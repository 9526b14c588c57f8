"""The fused CPU kernel of the pair convolution gives the numbers of its XLA version.

The XLA version is itself checked against a dense transcription of SPEC §2 in
float64 (`test_reference_energy.py`); the kernel is float32 only, so the two
are compared at float32 tolerance, forward and every cotangent, under vmap.

Tests `csp_jax.energy.native` and `csp_jax.energy.pair_conv`.
"""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import random_crystal

from csp_jax.energy import native
from csp_jax.config import get_config
from csp_jax.energy.continuousp import EnergyModel
from csp_jax.geometry.neighbors import NeighborCapacity
from csp_jax.energy.pair_conv import _native_pair_conv, _xla_pair_conv

pytestmark = pytest.mark.skipif(native._compiler() is None, reason="no C++ compiler")


def test_kernel_builds_and_is_used():
    assert native.available()
    x = jnp.zeros((2, 2), jnp.float32)
    assert native.usable(x) == (jax.default_backend() == "cpu" and jax.device_count() == 1)
    assert not native.usable(x.astype(jnp.float16))


def test_disabled_by_environment(monkeypatch):
    monkeypatch.setenv("CSP_JAX_NATIVE", "0")
    assert not native.available.__wrapped__()


def layer_inputs(rng, batch, n, e, d, d_e):
    """Random inputs of `pair_conv` for `batch` crystals; weights shared. Pairs include i = j and
    a padded tail (mask False, weight 0)."""
    f32 = lambda *shape: rng.normal(0, 0.5, shape).astype(np.float32)
    receivers = rng.integers(0, n, batch + (e,))
    senders = np.maximum(receivers, rng.integers(0, n, batch + (e,)))
    mask = np.arange(e) < int(0.8 * e)
    mask = np.broadcast_to(mask, batch + (e,)).copy()
    receivers[~mask], senders[~mask] = 0, 0
    weight = np.where(mask, rng.uniform(0, 2, batch + (e,)), 0).astype(np.float32)
    features = np.exp(-rng.uniform(0, 4, batch + (e, d_e))).astype(np.float32)
    return (f32(*batch, n, d), f32(d, 2 * d), f32(2 * d), f32(d, 2 * d), f32(2 * d), f32(d_e, 2 * d),
            f32(2 * d), features, weight, mask, receivers.astype(np.int32), senders.astype(np.int32))


@pytest.mark.parametrize("d, batch", [(32, (3,)), (64, (2,)), (24, (2, 3)), (32, ())])
def test_layer_matches_xla_version(d, batch):
    """Output and the cotangents of nodes, all weights, edge features and edge weights."""
    rng = np.random.default_rng(d)
    args = layer_inputs(rng, batch, n=7, e=96, d=d, d_e=d)
    in_axes = (0, None, None, None, None, None, None, 0, 0, 0, 0, 0)

    def batched(fn):
        for _ in batch:
            fn = jax.vmap(fn, in_axes=in_axes)
        return fn

    grad_out = rng.normal(0, 1, batch + (7, d)).astype(np.float32)
    results = []
    for conv in (_native_pair_conv, _xla_pair_conv):
        out, vjp = jax.vjp(lambda *a, conv=conv: batched(conv)(*a, *args[9:]), *args[:9])
        results.append((out, vjp(grad_out)))
    (out, cotangents), (ref_out, ref_cotangents) = results
    np.testing.assert_allclose(out, ref_out, rtol=1e-5, atol=1e-5)
    for name, got, want in zip(["nodes", "w1", "b1", "w2", "b2", "w3", "b3", "edge_features",
                                "edge_weight"], cotangents, ref_cotangents):
        scale = np.max(np.abs(want))
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * scale, err_msg=name)
    assert np.all(np.asarray(cotangents[8])[~args[9]] == 0)  # nothing flows to padding


@pytest.mark.slow  # the energy compiled twice per model: about 10 s each
@pytest.mark.parametrize("config", ["perov5", "mp20"])
def test_energy_and_gradients_match_xla_version(config, monkeypatch):
    """Energies, forces, lattice and parameter gradients of the model, kernel vs XLA ops."""
    model = EnergyModel.from_config(get_config(config).model)
    variables = model.init(jax.random.key(1))
    rng = np.random.default_rng(7)
    crystals = jax.tree.map(lambda *x: np.stack(x), *[random_crystal(rng, n, 12, dtype=np.float32)
                                                       for n in (4, 9, 12)])
    capacity = NeighborCapacity(216, 1024)

    def energy_and_grads(crystal):
        def energy(variables, positions, lattice):
            return model.energy(variables, crystal.replace(positions=positions, lattice=lattice),
                                capacity)[0]
        return jax.value_and_grad(energy, (0, 1, 2))(variables, crystal.positions, crystal.lattice)

    with_kernel = jax.jit(jax.vmap(energy_and_grads))(crystals)
    monkeypatch.setattr(native, "usable", lambda *arrays: False)
    without = jax.jit(jax.vmap(energy_and_grads))(crystals)
    for (path, got), want in zip(jax.tree_util.tree_flatten_with_path(with_kernel)[0],
                                 jax.tree.leaves(without)):
        scale = np.max(np.abs(want))
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * scale,
                                   err_msg=jax.tree_util.keystr(path))


@pytest.fixture
def fake_compiler(tmp_path, monkeypatch):
    """A stand-in C++ compiler that writes a small file to `-o` and counts its builds."""
    script = tmp_path / "fake-c++"
    script.write_text('#!/bin/sh\nif [ "$1" = --version ]; then echo fake 1.0; exit 0; fi\n'
                      f'echo build >> {tmp_path}/builds\n'
                      'while [ "$#" -gt 1 ]; do if [ "$1" = -o ]; then echo library > "$2"; fi; '
                      'shift; done\n')
    script.chmod(0o755)
    monkeypatch.setenv("CSP_JAX_CACHE", str(tmp_path / "cache"))

    def builds() -> int:
        path = tmp_path / "builds"
        return len(path.read_text().splitlines()) if path.is_file() else 0

    return str(script), builds


def test_cached_kernel_is_reused_only_when_intact_and_from_this_source(fake_compiler):
    compiler, builds = fake_compiler
    library = native._build(compiler)
    assert builds() == 1 and (library.parent.stat().st_mode & 0o777) == 0o700
    assert native._build(compiler) == library and builds() == 1  # trusted: reused
    library.write_bytes(b"tampered")
    assert native._build(compiler) == library and builds() == 2 and library.read_text() == "library\n"
    library.write_bytes(library.read_bytes()[:3])  # truncated
    native._build(compiler)
    assert builds() == 3
    library.with_suffix(".json").unlink()  # a library under the right name, with no record
    native._build(compiler)
    assert builds() == 4
    record = json.loads(library.with_suffix(".json").read_text())
    record["fingerprint"] = "0" * 64  # built from another source
    library.with_suffix(".json").write_text(json.dumps(record))
    native._build(compiler)
    assert builds() == 5


def test_kernel_cache_folder_is_made_private(fake_compiler, tmp_path):
    compiler, _ = fake_compiler
    cache = tmp_path / "cache" / "native"
    cache.mkdir(parents=True, mode=0o777)
    cache.chmod(0o777)
    native._build(compiler)
    assert cache.stat().st_mode & 0o022 == 0
