"""The shipped Perov-5 model fine-tuned to rank its own samples (docs/training.md).

`perov5_cpu`'s model continued from the shipped variables (`train.init_from`)
for one epoch of the same steps (32 chains of 300 MALA steps) at a tenth of its
learning rate (1e-4), with one species-swapped copy of each data crystal
(`train.swap_negatives`: the true structure with two sites' species
exchanged, e.g. the cation swap that the shipped model often ranks first)
held at least `train.swap_margin` = 0.1 above the crystal's energy by a
hinge term of the loss.
"""
import dataclasses

from csp_jax.configs import perov5_cpu


def get_config():
    config = perov5_cpu.get_config()
    return dataclasses.replace(
        config, name="perov5_rank",
        train=dataclasses.replace(config.train, num_epochs=1, learning_rate=1e-4, swap_negatives=1,
                                  init_from="perov5"))
