"""csp_jax: ContinuouSP (energy-based crystal structure prediction) in JAX."""
