"""ContinuouSP in JAX: train, evaluate, predict, the displacement figure, the benchmark.

    python experiments/run.py --config perov5 [--out DIR] [--resume] [--set sampler.num_steps=200]
    python experiments/run.py evaluate --checkpoint DIR [--limit 200] [--resume]
    python experiments/run.py predict --checkpoint DIR --formula SrTiO3 --num-samples 20
    python experiments/run.py displacement --checkpoint DIR

The same as the installed `csp-jax` command (`csp_jax.cli`); the logic lives
in the library.
"""
import sys

from csp_jax.cli import main

if __name__ == "__main__":
    sys.exit(main())
