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
from csp_jax.config import (Config, DataConfig, EvalConfig, ModelConfig, SamplerConfig,
                            TrainConfig)


def get_config() -> Config:
    return Config(
        name="mpts52_cpu",
        model=ModelConfig(features=32, num_conv=3, num_fc=2),
        data=DataConfig(dataset="mpts_52", train_split="val", val_split="", val_holdout=128,
                        val_limit=64, max_atoms=52, expand_from="cell", geometric_q=0.0),
        sampler=SamplerConfig(num_steps=300, segment_length=50),
        train=TrainConfig(batch_size=32, num_epochs=8, checkpoint_every=19, keep_checkpoints=0,
                          chains_per_group=8),
        eval=EvalConfig(num_steps=1000),
    )
