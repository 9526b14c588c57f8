"""What the MALA kernel and chain driver tests share: a species row with padding, a harmonic
stand-in energy and a reduction that does nothing."""
import jax.numpy as jnp

from csp_jax.energy.base import Aux

SPECIES = jnp.array([8, 8, 8, 0], jnp.int32)  # three real atoms and one padding atom
NO_OVERFLOW = Aux.none()


def identity_reduce(positions, lattice):
    return positions, lattice, jnp.array(True)


def harmonic_energy(crystal, stiffness=1.0, lattice_center=4.0):
    """0.5 k (|X_real|^2 + |L - c I|^2): Gaussian target with variance 1 / (beta k)."""
    positions = jnp.where(crystal.mask[:, None], crystal.positions, 0.0)
    lattice = crystal.lattice - lattice_center * jnp.eye(3)
    return 0.5 * stiffness * (jnp.sum(positions**2) + jnp.sum(lattice**2))


def harmonic_energy_fn(crystal):
    return harmonic_energy(crystal), NO_OVERFLOW
