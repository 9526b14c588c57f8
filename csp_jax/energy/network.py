"""The CGCNN' network of ContinuouSP (SPEC §2.3-2.7), as Flax Linen modules.

`CGCNN` maps one crystal's species and edge lengths to the network's scalar
output NN (the density penalty is added in `csp_jax.energy.continuousp`). Spectral
normalisation of the readout keeps its power-iteration vectors `u`, `v` in the
`"spectral"` collection; they are state, not parameters, and are advanced only
by `EnergyModel.training_variables` (once per training forward pass), so the
network itself is a pure function of (params, spectral state, inputs).
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from csp_jax.geometry.crystal import MAX_Z
from csp_jax.energy.pair_conv import pair_conv

GAUSSIAN_STOP = 20.0  # mu = linspace(0, 20, d_e)
GAUSSIAN_WIDTH = 3.0  # s = 3 * spacing of the centres
SPECTRAL_EPS = 1e-12
INIT_POWER_ITERATIONS = 15


def torch_linear_init(fan_in: int):
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)), the default of torch.nn.Linear (weights and biases)."""
    bound = 1.0 / math.sqrt(fan_in)
    return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


def linear_params(module: nn.Module, fan_in: int, features: int):
    """(kernel [in, out], bias [out]) of `module`, initialised as torch.nn.Linear."""
    init = torch_linear_init(fan_in)
    return module.param("kernel", init, (fan_in, features)), module.param("bias", init, (features,))


class Linear(nn.Module):
    """Dense layer with torch.nn.Linear's initialisation; kernel [in, out]."""

    features: int

    @nn.compact
    def __call__(self, x):
        kernel, bias = linear_params(self, x.shape[-1], self.features)
        return x @ kernel + bias


class LinearParams(nn.Module):
    """The (kernel [fan_in, features], bias [features]) of a linear layer, not applied."""

    fan_in: int
    features: int

    @nn.compact
    def __call__(self):
        return linear_params(self, self.fan_in, self.features)


def l2_normalize(x):
    return x / jnp.maximum(jnp.linalg.norm(x), SPECTRAL_EPS)


def power_iteration_step(kernel, u, v):
    """One power iteration for W = kernel.T ([out, in]): v <- W^T u / |.|, u <- W v / |.|."""
    v = l2_normalize(kernel @ u)
    u = l2_normalize(kernel.T @ v)
    return u, v


class SpectralLinear(nn.Module):
    """Linear layer divided by its spectral norm sigma = u^T W v (u, v held fixed).

    u: [out], v: [in] in the "spectral" collection; initialised like
    torch's spectral_norm (random unit vectors, then 15 power iterations).
    """

    features: int

    @nn.compact
    def __call__(self, x):
        kernel, bias = linear_params(self, x.shape[-1], self.features)

        def init_uv():
            ku, kv = jax.random.split(self.make_rng("params"))
            u = l2_normalize(jax.random.normal(ku, (self.features,)))
            v = l2_normalize(jax.random.normal(kv, (x.shape[-1],)))
            for _ in range(INIT_POWER_ITERATIONS):
                u, v = power_iteration_step(kernel, u, v)
            return {"u": u, "v": v}

        uv = jax.lax.stop_gradient(self.variable("spectral", "uv", init_uv).value)
        u, v = uv["u"], uv["v"]
        sigma = u @ (kernel.T @ v)
        return x @ (kernel / sigma) + bias


class GraphConv(nn.Module):
    """One CGCNN' convolution (SPEC §2.6) over pair edges, softplus included.

    nodes: [N, d]; edge_features: [E, d_e]; edge_weight: [E] (0 on padding
    edges); edge_mask: [E] bool (False on padding edges); receivers, senders:
    [E], the two atoms of each pair edge (both directions carry a message,
    `csp_jax.energy.pair_conv`). Returns [N, d].
    """

    @nn.compact
    def __call__(self, nodes, edge_features, edge_weight, edge_mask, receivers, senders):
        d, d_e = nodes.shape[-1], edge_features.shape[-1]
        w1, b1 = LinearParams(d, 2 * d, name="W1")()
        w2, b2 = LinearParams(d, 2 * d, name="W2")()
        w3, b3 = LinearParams(d_e, 2 * d, name="W3")()
        return pair_conv(nodes, w1, b1, w2, b2, w3, b3, edge_features, edge_weight, edge_mask,
                         receivers, senders)


def gaussian_smearing(dist, num: int):
    """[E] -> [E, num]: exp(-(d - mu_k)^2 / (2 s^2)), mu = linspace(0, 20, num), s = 3 * 20 / (num - 1)."""
    mu = jnp.linspace(0.0, GAUSSIAN_STOP, num, dtype=dist.dtype)
    s = GAUSSIAN_WIDTH * GAUSSIAN_STOP / (num - 1)
    return jnp.exp(-((dist[:, None] - mu) ** 2) / (2.0 * s**2))


def edge_weight(dist, cutoff):
    """w(d) = 1 + cos(pi d / D): 2 at d = 0, 0 at the cutoff."""
    return 1.0 + jnp.cos(jnp.pi * dist / cutoff)


class CGCNN(nn.Module):
    """The network NN of H = NN + density penalty, for one crystal.

    species: [N] int (0 = padding); dist: [E] pair-edge lengths; cutoff: scalar D;
    senders, receivers: [E], the two atoms of each pair edge (`csp_jax.geometry.neighbors`:
    each stands for both directions); edge_mask: [E] bool. Returns a scalar.
    """

    features: int
    num_conv: int
    num_fc: int

    @nn.compact
    def __call__(self, species, dist, cutoff, senders, receivers, edge_mask):
        node_mask = species > 0
        embed = nn.Embed(MAX_Z, self.features, embedding_init=nn.initializers.normal(1.0), name="embed")
        nodes = jnp.tanh(embed(jnp.maximum(species, 1) - 1))
        weight = jnp.where(edge_mask, edge_weight(dist, cutoff), 0.0)
        edge_features = gaussian_smearing(dist, self.features)
        for _ in range(self.num_conv):
            nodes = GraphConv()(nodes, edge_features, weight, edge_mask, receivers, senders)
        pooled = jnp.sum(jnp.where(node_mask[:, None], nodes, 0.0), 0) / jnp.maximum(jnp.sum(node_mask), 1)
        h = pooled
        for _ in range(self.num_fc - 1):
            h = jax.nn.softplus(SpectralLinear(self.features)(h))
        return Linear(1, name="out")(h)[0]
