"""Speed of the MALA step against the authors' code (SPEC §8): `csp_jax.benchmark`.

    python experiments/bench.py [--workload perov5] [--whole-chain] [--profile] [--scaling]

The same as `csp-jax bench`; see `python experiments/bench.py --help`.
"""
from csp_jax.benchmark import main

if __name__ == "__main__":
    main()
