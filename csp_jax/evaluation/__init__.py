"""Evaluating a trained energy: the paper's Table 1 and Figure 2.

- `evaluate`: samples per test crystal (resumable), stored and scored;
- `samples`: the sample file of a split;
- `metrics`: match rate / RMSE, intervals, the splits by cell size, elements, seen / unseen;
- `report`: the results as JSON and Markdown beside the paper's table;
- `relaxed`: the relaxed samples' rates (`relax.enabled`);
- `polymorphs`: the other structures of a test crystal's composition;
- `selection`: which crystals an evaluation tests;
- `figures`: RMSE histogram, match rate against k;
- `displacement`: energy against the displacement of one atom (SPEC §6).
"""
from csp_jax.evaluation.displacement import displacement_experiment
from csp_jax.evaluation.evaluate import evaluate, recompute

__all__ = ["displacement_experiment", "evaluate", "recompute"]
