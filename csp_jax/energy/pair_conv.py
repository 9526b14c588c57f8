"""One CGCNN' convolution (SPEC §2.6) on pair edges, with a hand-written gradient.

A pair edge (i, j, s) of `csp_jax.geometry.neighbors` stands for the directed edges
i <- j and j <- i, which share their length d and hence the edge term
`f = W3 e(d) + b3` and the weight w(d). For node features v ([N, d_v]):

    P = W1 v + b1, Q = W2 v + b2                        (once per node, [N, 2 d_v])
    z_ij = (P_i + Q_j) * f,   z_ji = (P_j + Q_i) * f    (both directions, [E, 2 d_v])
    m = w * sigmoid(z[:d_v]) * z[d_v:]                  (gate, core)
    v <- softplus(v + tanh(sum of incoming m))

Two implementations of the per-edge part (gathers, gate and core, messages,
their sum, and the gradient of all that), with the same inputs and numbers:

- on CPU in float32, the fused pair convolution of `csp_jax.energy.native` (one pass over the
  edges forward, one backward; about 1.5-2x faster for a whole MALA step);
- otherwise (GPU, float64, no C++ compiler) XLA ops, with the gradient written
  out (`jax.custom_vjp`): XLA's CPU fusion of the derived one recomputes
  per-edge terms and pads the gate/core halves, 3-6x the forward pass.

Both return cotangents for every input (node features, all weights, edge
features and weights), so the same function serves sampling (gradient with
respect to positions and lattice) and training (gradient with respect to
parameters). The matmuls (node projections, W3 e + b3 and their transposes)
are XLA's in both.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import jraph

from csp_jax.energy import native


def pair_conv(nodes, w1, b1, w2, b2, w3, b3, edge_features, edge_weight, edge_mask, receivers, senders):
    """softplus(v + tanh(sum_j m_ij)) over both directions of every pair edge.

    nodes: [N, d]; w1, w2: [d, 2d], b1, b2: [2d] (receiver and sender
    projections); w3: [d_e, 2d], b3: [2d]; edge_features: [E, d_e] (Gaussian
    smearing of d); edge_weight: [E] (w(d), 0 on padding edges); edge_mask:
    [E] bool (False on padding edges, which carry no message and get zero
    cotangents); receivers, senders: [E] int, the pair's two atoms. Returns [N, d].
    """
    args = (nodes, w1, b1, w2, b2, w3, b3, edge_features, edge_weight, edge_mask, receivers, senders)
    if native.usable(nodes, w1, b1, w2, b2, w3, b3, edge_features, edge_weight):
        return _native_pair_conv(*args)
    return _xla_pair_conv(*args)


# Shared by both implementations: everything but the per-edge part.

def _terms(nodes, w1, b1, w2, b2, w3, edge_features):
    """P, Q: [N, 2d] and the edge term without its bias, W3 e: [E, 2d]."""
    return nodes @ w1 + b1, nodes @ w2 + b2, edge_features @ w3


def _node_update(nodes, aggregated):
    """softplus(v + tanh(aggregated)) and (tanh(aggregated), v + tanh(aggregated)) for the gradient."""
    update = jnp.tanh(aggregated)
    pre = nodes + update
    return jax.nn.softplus(pre), (update, pre)


def _grad_aggregated(grad_out, update, pre):
    """(d loss / d pre, d loss / d aggregated), both [N, d]."""
    grad_pre = grad_out * jax.nn.sigmoid(pre)  # softplus' = sigmoid
    return grad_pre, grad_pre * (1.0 - update**2)


def _input_cotangents(nodes, w1, w2, w3, edge_features, grad_pre, grad_p, grad_q, grad_f, grad_weight):
    """Cotangents of every input of `pair_conv`, from those of P, Q, f and w."""
    grad_nodes = grad_pre + grad_p @ w1.T + grad_q @ w2.T
    return (grad_nodes, nodes.T @ grad_p, grad_p.sum(0), nodes.T @ grad_q, grad_q.sum(0),
            edge_features.T @ grad_f, grad_f.sum(0), grad_f @ w3.T, grad_weight, None, None, None)


# The fused CPU pair convolution.

def _native_forward(nodes, w1, b1, w2, b2, w3, b3, edge_features, edge_weight, edge_mask, receivers, senders):
    p, q, u = _terms(nodes, w1, b1, w2, b2, w3, edge_features)  # b3 is added in the fused convolution
    aggregated = native.aggregate(p, q, u, b3, edge_weight, edge_mask, receivers, senders)
    out, (update, pre) = _node_update(nodes, aggregated)
    return out, (nodes, w1, w2, w3, b3, edge_features, edge_weight, edge_mask, receivers, senders,
                 p, q, u, update, pre)


@jax.custom_vjp
def _native_pair_conv(*args):
    return _native_forward(*args)[0]


def _native_backward(residuals, grad_out):
    (nodes, w1, w2, w3, b3, edge_features, edge_weight, edge_mask, receivers, senders,
     p, q, u, update, pre) = residuals
    grad_pre, grad_agg = _grad_aggregated(grad_out, update, pre)
    grad_p, grad_q, grad_f, grad_weight = native.aggregate_vjp(
        p, q, u, b3, edge_weight, edge_mask, receivers, senders, grad_agg)
    return _input_cotangents(nodes, w1, w2, w3, edge_features, grad_pre, grad_p, grad_q, grad_f,
                             grad_weight)


_native_pair_conv.defvjp(_native_forward, _native_backward)


# XLA ops.

def _node_terms(p, q, receivers, senders):
    """(gate, core) halves of P_i + Q_j ("in": to the receiver) and P_j + Q_i ("out"), each [E, d]."""
    d = p.shape[-1] // 2
    p_r, p_s, q_r, q_s = p[receivers], p[senders], q[receivers], q[senders]
    return (p_r[:, :d] + q_s[:, :d], p_r[:, d:] + q_s[:, d:],
            p_s[:, :d] + q_r[:, :d], p_s[:, d:] + q_r[:, d:])


def _xla_forward(nodes, w1, b1, w2, b2, w3, b3, edge_features, edge_weight, edge_mask, receivers, senders):
    """The layer and what its gradient keeps (the per-edge node terms are gathered again there:
    cheaper than keeping them on a memory-bound CPU). Padding edges have weight 0, hence no
    message; their weight cotangent is 0 as in the fused convolution."""
    num_nodes, d = nodes.shape
    p, q, u = _terms(nodes, w1, b1, w2, b2, w3, edge_features)
    f = u + b3
    f_gate, f_core = f[:, :d], f[:, d:]
    a_in_gate, a_in_core, a_out_gate, a_out_core = _node_terms(p, q, receivers, senders)
    gate_in, gate_out = jax.nn.sigmoid(a_in_gate * f_gate), jax.nn.sigmoid(a_out_gate * f_gate)
    # sigmoid(z_gate) * z_core per direction; the message is w times it.
    product_in, product_out = gate_in * a_in_core * f_core, gate_out * a_out_core * f_core
    w = edge_weight[:, None]
    aggregated = (jraph.segment_sum(w * product_in, receivers, num_nodes)
                  + jraph.segment_sum(w * product_out, senders, num_nodes))
    out, (update, pre) = _node_update(nodes, aggregated)
    return out, (nodes, w1, w2, w3, edge_features, edge_weight, edge_mask, receivers, senders,
                 p, q, f_gate, f_core, gate_in, product_in, gate_out, product_out, update, pre)


@jax.custom_vjp
def _xla_pair_conv(*args):
    return _xla_forward(*args)[0]


def _xla_backward(residuals, grad_out):
    (nodes, w1, w2, w3, edge_features, edge_weight, edge_mask, receivers, senders,
     p, q, f_gate, f_core, gate_in, product_in, gate_out, product_out, update, pre) = residuals
    num_nodes = nodes.shape[0]
    a_in_gate, a_in_core, a_out_gate, a_out_core = _node_terms(p, q, receivers, senders)
    grad_pre, grad_agg = _grad_aggregated(grad_out, update, pre)
    g_in, g_out = grad_agg[receivers], grad_agg[senders]  # d loss / d message, per direction
    w = edge_weight[:, None]
    grad_weight = jnp.where(edge_mask, jnp.sum(g_in * product_in + g_out * product_out, axis=-1), 0.0)
    # d/dz of m = w sigmoid(z_gate) z_core, per direction.
    dz_in_core = g_in * w * gate_in
    dz_in_gate = g_in * w * product_in * (1.0 - gate_in)
    dz_out_core = g_out * w * gate_out
    dz_out_gate = g_out * w * product_out * (1.0 - gate_out)
    grad_a_in = jnp.concatenate([dz_in_gate * f_gate, dz_in_core * f_core], axis=-1)
    grad_a_out = jnp.concatenate([dz_out_gate * f_gate, dz_out_core * f_core], axis=-1)
    grad_f = jnp.concatenate([dz_in_gate * a_in_gate + dz_out_gate * a_out_gate,
                              dz_in_core * a_in_core + dz_out_core * a_out_core], axis=-1)
    # a_in = P_i + Q_j, a_out = P_j + Q_i.
    grad_p = (jraph.segment_sum(grad_a_in, receivers, num_nodes)
              + jraph.segment_sum(grad_a_out, senders, num_nodes))
    grad_q = (jraph.segment_sum(grad_a_in, senders, num_nodes)
              + jraph.segment_sum(grad_a_out, receivers, num_nodes))
    return _input_cotangents(nodes, w1, w2, w3, edge_features, grad_pre, grad_p, grad_q, grad_f,
                             grad_weight)


_xla_pair_conv.defvjp(_xla_forward, _xla_backward)
