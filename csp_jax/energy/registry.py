"""The energies a config can name (`model.energy`), and the one place that builds them.

    energy = build_energy(config.model)      # what training, evaluation and predict run

`model.energy` is a name of ENERGIES or an import path "package.module:Class"
for an energy that lives outside the package (e.g. a test's toy energy). The
class is built with `Class.from_config(model_config)` when it has that
classmethod (the paper's `EnergyModel` reads its sizes from the config), else
with `Class()`.
"""
from __future__ import annotations

from csp_jax.config import ModelConfig, lookup
from csp_jax.energy.base import Energy
from csp_jax.energy.continuousp import EnergyModel

ENERGIES = {"continuousp": EnergyModel}  # the paper's CGCNN' energy with the density penalty


def build_energy(model_config: ModelConfig) -> Energy:
    """The energy `model_config.energy` names, sized by `model_config`; ValueError (one
    line) for a name that does not resolve or an object that is not an `Energy`."""
    cls = lookup("model.energy", model_config.energy, ENERGIES)
    energy = cls.from_config(model_config) if hasattr(cls, "from_config") else cls()
    if not isinstance(energy, Energy):
        raise ValueError(f"model.energy={model_config.energy!r} is not an energy: it lacks "
                         f"the members of csp_jax.energy.base.Energy")
    return energy
