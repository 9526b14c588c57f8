"""One CGCNN' convolution (SPEC §2.6) on pair edges, with a hand-written gradient.

A pair edge (i, j, s) of `csp_jax.neighbors` stands for the directed edges
i <- j and j <- i, which share their length d and hence the edge term
`f = W3 e(d) + b3` and the weight w(d). For node features v ([N, d_v]):

    P = W1 v + b1, Q = W2 v + b2                        (once per node, [N, 2 d_v])
    z_ij = (P_i + Q_j) * f,   z_ji = (P_j + Q_i) * f    (both directions, [E, 2 d_v])
    m = w * sigmoid(z[:d_v]) * z[d_v:]                  (gate, core)
    v <- softplus(v + tanh(sum of incoming m))

The gradient is written out (`jax.custom_vjp`) rather than derived by
autodiff: XLA's CPU fusion of the derived one recomputes per-edge terms and
pads the gate/core halves, which made it 3-6x the forward pass. Cotangents are
returned for every input (node features, all weights, edge features and
weights), so the same function serves sampling (gradient with respect to
positions and lattice) and training (gradient with respect to parameters).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import jraph


def _node_terms(p, q, receivers, senders):
    """(gate, core) halves of P_i + Q_j ("in": to the receiver) and P_j + Q_i ("out"), each [E, d]."""
    d = p.shape[-1] // 2
    p_r, p_s, q_r, q_s = p[receivers], p[senders], q[receivers], q[senders]
    return (p_r[:, :d] + q_s[:, :d], p_r[:, d:] + q_s[:, d:],
            p_s[:, :d] + q_r[:, :d], p_s[:, d:] + q_r[:, d:])


def _forward(nodes, w1, b1, w2, b2, w3, b3, edge_features, edge_weight, receivers, senders):
    """The layer and what its gradient keeps (the per-edge node terms are gathered again there:
    cheaper than keeping them on a memory-bound CPU)."""
    num_nodes, d = nodes.shape
    p = nodes @ w1 + b1
    q = nodes @ w2 + b2
    f_gate = edge_features @ w3[:, :d] + b3[:d]
    f_core = edge_features @ w3[:, d:] + b3[d:]
    a_in_gate, a_in_core, a_out_gate, a_out_core = _node_terms(p, q, receivers, senders)
    gate_in, gate_out = jax.nn.sigmoid(a_in_gate * f_gate), jax.nn.sigmoid(a_out_gate * f_gate)
    # sigmoid(z_gate) * z_core per direction; the message is w times it.
    product_in, product_out = gate_in * a_in_core * f_core, gate_out * a_out_core * f_core
    w = edge_weight[:, None]
    aggregated = (jraph.segment_sum(w * product_in, receivers, num_nodes)
                  + jraph.segment_sum(w * product_out, senders, num_nodes))
    update = jnp.tanh(aggregated)
    pre = nodes + update
    saved = (p, q, f_gate, f_core, gate_in, product_in, gate_out, product_out, update, pre)
    return jax.nn.softplus(pre), saved


@jax.custom_vjp
def pair_conv(nodes, w1, b1, w2, b2, w3, b3, edge_features, edge_weight, receivers, senders):
    """softplus(v + tanh(sum_j m_ij)) over both directions of every pair edge.

    nodes: [N, d]; w1, w2: [d, 2d], b1, b2: [2d] (receiver and sender
    projections); w3: [d_e, 2d], b3: [2d]; edge_features: [E, d_e] (Gaussian
    smearing of d); edge_weight: [E] (w(d), 0 on padding edges); receivers,
    senders: [E] int, the pair's two atoms. Returns [N, d].
    """
    return _forward(nodes, w1, b1, w2, b2, w3, b3, edge_features, edge_weight, receivers, senders)[0]


def _pair_conv_fwd(nodes, w1, b1, w2, b2, w3, b3, edge_features, edge_weight, receivers, senders):
    out, saved = _forward(nodes, w1, b1, w2, b2, w3, b3, edge_features, edge_weight, receivers, senders)
    return out, (nodes, w1, w2, w3, edge_features, edge_weight, receivers, senders, saved)


def _pair_conv_bwd(residuals, grad_out):
    nodes, w1, w2, w3, edge_features, edge_weight, receivers, senders, saved = residuals
    p, q, f_gate, f_core, gate_in, product_in, gate_out, product_out, update, pre = saved
    num_nodes = nodes.shape[0]
    a_in_gate, a_in_core, a_out_gate, a_out_core = _node_terms(p, q, receivers, senders)
    grad_pre = grad_out * jax.nn.sigmoid(pre)  # softplus' = sigmoid
    grad_agg = grad_pre * (1.0 - update**2)
    g_in, g_out = grad_agg[receivers], grad_agg[senders]  # d loss / d message, per direction
    w = edge_weight[:, None]
    grad_weight = jnp.sum(g_in * product_in + g_out * product_out, axis=-1)
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
    grad_nodes = grad_pre + grad_p @ w1.T + grad_q @ w2.T
    return (grad_nodes, nodes.T @ grad_p, grad_p.sum(0), nodes.T @ grad_q, grad_q.sum(0),
            edge_features.T @ grad_f, grad_f.sum(0), grad_f @ w3.T, grad_weight, None, None)


pair_conv.defvjp(_pair_conv_fwd, _pair_conv_bwd)
