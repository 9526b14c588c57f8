"""MPTS-52 on a 2-core CPU: trained on its val split, tested on its test split (`pretrained/mpts52`).

MPTS-52 is split by the year a structure was first published (train up to
2004, val 1997-2004 after train's crystals, test 2004-2013). Its train split
is not available here, so this recipe trains on `val` (5,000 crystals of
1-52 atoms, less a fixed hold-out of 128 that validates) and is tested on
`test`: everything the model sees predates what it is asked. The paper
trained on the 27,380-crystal train split, 5.5x more crystals.

The steps are `mp20_cpu`'s (docs/training.md): a 32 / 3 / 2 model, 32 chains
per batch of 300 MALA steps, negatives with the data cells' own sizes
(`expand_from="cell"`, q = 0), chains in groups of 8 of similar size at the
bucket size of their largest cell, the capacity refitted every 50 steps.
Evaluation and prediction chains keep the paper's 1000 steps.
"""
import dataclasses

from csp_jax.configs import mp20_cpu


def get_config():
    config = mp20_cpu.get_config()
    return dataclasses.replace(
        config, name="mpts52_cpu",
        data=dataclasses.replace(config.data, dataset="mpts_52", max_atoms=52),
        train=dataclasses.replace(config.train, num_epochs=8, checkpoint_every=19))
