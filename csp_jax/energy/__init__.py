"""Energies H(A, X, L): the declared interface and ContinuouSP's CGCNN' energy.

- `base`: the `Energy` protocol that the sampler, trainer, evaluation and
  prediction rely on (and nothing else);
- `continuousp`: `EnergyModel`, the paper's energy (network + density penalty);
- `network`: the CGCNN' Flax module; `pair_conv`: its graph convolution over
  pair edges; `native`: the fused CPU pair convolution of that convolution.
"""
from csp_jax.energy.base import Energy
from csp_jax.energy.continuousp import EnergyModel, density_penalty, num_parameters

__all__ = ["Energy", "EnergyModel", "density_penalty", "num_parameters"]
