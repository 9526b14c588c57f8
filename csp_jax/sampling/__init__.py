"""Sampling crystals: the pure MALA kernel for one chain and the host driver for batches.

- `mala`: `mala(energy_fn, reduce_fn) -> (init_fn, step_fn)`, random starts,
  the annealing schedule and `run_chain` (a `lax.scan`), all for ONE chain;
- `driver`: `sample` / `sample_rows`, which every batch of chains in csp_jax
  goes through (segments, overflow re-runs, capacity refits, chunked vmap).
"""
from csp_jax.sampling.driver import (SampleResult, Schedule, enable_compilation_cache, sample,
                                     sample_rows, schedule)
from csp_jax.sampling.mala import (MALAInfo, MALAState, annealing_schedule, mala, random_crystal,
                                   run_chain)

__all__ = ["MALAInfo", "MALAState", "SampleResult", "Schedule", "annealing_schedule",
           "enable_compilation_cache", "mala", "random_crystal", "run_chain", "sample",
           "sample_rows", "schedule"]
