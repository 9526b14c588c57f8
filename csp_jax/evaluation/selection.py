"""Which crystals an evaluation tests, and which it compares them with.

    test, selection = test_crystals(config, data_dir)

`eval.dataset` (default the model's `data.dataset`), `eval.split`,
`eval.max_cell_atoms` and `eval.exclude` choose the test crystals; the
training crystals give the report's seen / unseen split, and every split of
the tested dataset at hand its other structures per composition.
"""
from __future__ import annotations

from typing import Callable

from csp_jax.config import Config
from csp_jax.data.datasets import load_split, splits_at_hand, training_splits
from csp_jax.errors import one_line


def tested_dataset(config: Config) -> str:
    """The dataset whose split is tested: `eval.dataset`, else the model's."""
    return config.eval.dataset or config.data.dataset


def test_crystals(config: Config, data_dir=None, log: Callable[[str], None] = print):
    """(the crystals `evaluate` draws from, a sentence saying how they were selected, or "").

    ValueError (one line) for an `eval.exclude` entry that is not DATASET/SPLIT.
    """
    e, dataset = config.eval, tested_dataset(config)
    crystals = load_split(dataset, e.split, data_dir)
    excludes = [name.strip() for name in e.exclude.split(",") if name.strip()]
    if not e.max_cell_atoms and not excludes:
        return crystals, ""
    excluded = set()
    for name in excludes:
        other, _, other_split = name.partition("/")
        if not other_split:
            raise ValueError(f"eval.exclude {name!r}: expected DATASET/SPLIT, e.g. mp_20_biternary/val")
        excluded.update(load_split(other, other_split, data_dir).material_ids.astype(str).tolist())
    selected = crystals.select(most_atoms=e.max_cell_atoms or None, exclude_ids=excluded)
    rules = ([f"of at most {e.max_cell_atoms} atoms"] if e.max_cell_atoms else []) + (
        [f"whose material_id is not in {' or '.join(excludes)}"] if excludes else [])
    selection = f"the {len(selected)} of the {len(crystals)} {dataset}/{e.split} crystals " + " and ".join(rules)
    log(f"testing {selection}")
    return selected, selection


def reference_crystals(config: Config, data_dir=None, log: Callable[[str], None] = print) -> list:
    """Every split of the tested dataset at hand (for the report's other structures of a
    test crystal's composition); a note names the splits that are not."""
    dataset = tested_dataset(config)
    found, missing = splits_at_hand(dataset, data_dir)
    if missing:
        log(f"note: the report's other structures per composition leave out {dataset}/"
            f"{', '.join(missing)} (not at hand)")
    return found


def training_crystals(config: Config, data_dir=None, log: Callable[[str], None] = print):
    """The config's training crystals (for the seen / unseen split of the report), or None
    with a note when the training split is not at hand."""
    try:
        return training_splits(config.data, data_dir)[0]
    except (FileNotFoundError, OSError, ValueError) as error:
        log(f"note: no seen / unseen split of the report ({one_line(error)})")
        return None
