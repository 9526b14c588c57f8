"""Data parallelism: two CPU devices give the results of one."""
import subprocess
import sys
import textwrap

import pytest

from helpers import checkout_env

pytestmark = pytest.mark.slow  # a subprocess with two devices: about 50 s

SCRIPT = textwrap.dedent("""
    import functools
    import jax, jax.numpy as jnp, numpy as np
    from csp_jax.config import get_config
    from csp_jax.data.species import expanded_species, swapped_sites
    from csp_jax.training.loop import Batch, Capacities, run_step
    from csp_jax.training.parallel import replicate, shard_batch
    from csp_jax.energy.registry import build_energy
    from csp_jax.training.step import init_train_state, optimizer, update_step
    from csp_jax.geometry.crystal import Crystal
    assert jax.device_count() == 2, jax.devices()
    config = get_config("test")
    rng = np.random.default_rng(0)
    lattice = np.stack([6.0 * np.eye(3) + rng.normal(0, 0.3, (3, 3)) for _ in range(4)])
    species = np.array([[38, 22, 8, 8, 8]] * 4, np.int32)
    data = Crystal(species, rng.uniform(0, 1, (4, 5, 3)) @ lattice, lattice)
    swapped = data.replace(species=swapped_sites(species, rng))
    batch = Batch(data, expanded_species(species, np.array([1, 1, 1, 1]), 5).species, swapped)
    batch = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32) if x.dtype.kind == "f" else jnp.asarray(x), batch)
    state = init_train_state(config, jax.random.PRNGKey(0))
    key = jax.random.PRNGKey(1)
    update = functools.partial(update_step, optimizer=optimizer(config.train))
    (one, _), m1, _ = run_step(update, build_energy(config.model), config, state, batch, key, Capacities(config.neighbors, 5))
    sharded = shard_batch(batch)
    assert len(sharded.data.positions.sharding.device_set) == 2
    (two, _), m2, _ = run_step(update, build_energy(config.model), config, replicate(state), sharded, key, Capacities(config.neighbors, 5))
    assert len(two.variables["params"]["out"]["kernel"].sharding.device_set) == 2
    for k in m1:
        np.testing.assert_allclose(np.asarray(m1[k]), np.asarray(m2[k]), rtol=1e-5, atol=1e-6)
    # Adam divides by sqrt(v): gradients that differ in the last bits (the batch
    # means are reduced in another order) move parameters by up to ~1e-5.
    for a, b in zip(jax.tree.leaves(one.variables), jax.tree.leaves(two.variables)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-4)
    print("OK", float(m2["loss"]))
""")


def test_training_step_on_two_devices_equals_one():
    env = checkout_env(XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "OK" in out.stdout
