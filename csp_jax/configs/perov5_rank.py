"""The shipped Perov-5 model fine-tuned to rank its own samples (docs/training.md).

`perov5_cpu`'s model continued from the shipped variables (`train.init_from`)
for one epoch of the same steps (32 chains of 300 MALA steps), with one
species-swapped copy of each data crystal beside the chains' negatives
(`train.swap_negatives`): the true structure with two sites' species
exchanged, the cation swap that the shipped model often ranks first.
"""
import dataclasses

from csp_jax.configs import perov5_cpu


def get_config():
    config = perov5_cpu.get_config()
    return dataclasses.replace(
        config, name="perov5_rank",
        train=dataclasses.replace(config.train, num_epochs=1, swap_negatives=1, init_from="perov5"))
