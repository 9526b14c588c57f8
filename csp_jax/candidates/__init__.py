"""The stage after sampling: a formula's or test crystal's samples as candidates.

`matching` (StructureMatcher in a pool of worker processes), `ranking` (groups of
matching samples, the order a user reads them in, intervals), `relax` (a universal
interatomic potential's relaxation and energy, through ASE).
"""
