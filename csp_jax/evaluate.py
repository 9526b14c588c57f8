"""The paper's Table 1 evaluation of a trained energy (SPEC §5).

`sample_species` runs annealed MALA for many species vectors in fixed-size
chunks (one compilation for all of them) with progress lines; `evaluate` draws
K independent chains per test crystal with the crystal's own species vector,
stores the samples (`<split>_samples.npz`, CIFs of the first sample per crystal
in `cifs/`) and writes the match metrics (`<split>_metrics.json` and `.md`,
beside the paper's numbers); `recompute` scores a stored sample file again
without sampling.

The samples depend on the key and on the batch size (each chunk draws its
chains from `fold_in(key, chunk index)`).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import jax
import numpy as np

from csp_jax import metrics
from csp_jax.config import Config
from csp_jax.crystal import Crystal, to_structure
from csp_jax.data import CrystalDataset
from csp_jax.energy import EnergyModel
from csp_jax.matching import DEFAULT_TIMEOUT_S, sample_structure
from csp_jax.neighbors import NeighborCapacity
from csp_jax.progress import format_duration
from csp_jax.sampler import sample
from csp_jax.train import schedule

SUBSET_SEED = 0  # the fixed shuffle that `limit` takes the first N of


def sample_species(config: Config, model: EnergyModel, variables, species, key, *,
                   batch_size: int, log: Callable[[str], None] = print):
    """Annealed MALA (the config's schedule) from random starts, one chain per row.

    species: [M, N] int (0 = padding). The rows run in chunks of
    min(batch_size, M) chains; the last chunk is filled up with copies of its
    first row (results dropped), so every chunk has the same shape. The
    neighbour capacity starts at `NeighborCapacity.for_atoms(N)` and keeps what
    the sampler grew it to. Returns (crystals: Crystal [M, N] numpy,
    energies [M], num_overflow_reruns summed over chunks).
    """
    species = np.asarray(species, np.int32)
    num_rows, max_atoms = species.shape
    chunk = min(batch_size, num_rows)
    num_chunks = -(-num_rows // chunk)
    steps = schedule(config, evaluation=True)
    num_steps = int(steps[0].shape[0])
    capacity = NeighborCapacity.for_atoms(max_atoms, config.neighbors.max_images,
                                          config.neighbors.edge_factor)
    crystals, energies, reruns, chunk_seconds = [], [], 0, []
    for i in range(num_chunks):
        start_time = time.perf_counter()
        rows = species[i * chunk:(i + 1) * chunk]
        filled = np.concatenate([rows, np.repeat(rows[:1], chunk - len(rows), axis=0)])
        result = sample(jax.random.fold_in(key, i), filled, model.energy_fn, None, capacity,
                        steps, energy_args=(variables,),
                        segment_length=min(config.sampler.segment_length, num_steps))
        capacity = result.capacity
        reruns += result.num_overflow_reruns
        states = jax.device_get(result.states)
        crystals.append(jax.tree.map(lambda a: a[:len(rows)], states.crystal))
        energies.append(states.energy[:len(rows)])
        chunk_seconds.append(time.perf_counter() - start_time)
        # The first chunk includes compilation: the rate and ETA use the later ones when there are any.
        steady = chunk_seconds[1:] or chunk_seconds
        per_chunk = sum(steady) / len(steady)
        log(f"chunk {i + 1}/{num_chunks}: {min((i + 1) * chunk, num_rows)}/{num_rows} chains, "
            f"{chunk * num_steps / per_chunk:.0f} crystal-steps/s{' (with compilation)' if i == 0 else ''}, "
            f"elapsed {format_duration(sum(chunk_seconds))}, ETA {format_duration(per_chunk * (num_chunks - i - 1))}, "
            f"overflow re-runs {reruns}")
    crystals = jax.tree.map(lambda *a: np.concatenate(a), *crystals)
    return crystals, np.concatenate(energies), reruns


def subset_indices(num_crystals: int, limit: int) -> np.ndarray:
    """The first `limit` of a fixed-seed permutation of range(num_crystals), sorted; all when limit <= 0."""
    if limit <= 0 or limit >= num_crystals:
        return np.arange(num_crystals)
    return np.sort(np.random.default_rng(SUBSET_SEED).permutation(num_crystals)[:limit])


def _write_first_sample_cifs(samples: Crystal, material_ids, cif_dir: Path) -> None:
    """CIF of sample 0 of every test crystal whose first sample is a valid crystal."""
    from pymatgen.io.cif import CifWriter

    cif_dir.mkdir(parents=True, exist_ok=True)
    for t, material_id in enumerate(material_ids):
        first = metrics.sample_at(samples, t, 0)
        if sample_structure(first) is not None:
            CifWriter(to_structure(first)).write_file(cif_dir / f"{material_id}.cif")


def _paths(out_dir, split: str) -> tuple[Path, Path]:
    """(samples file, metrics stem) of a split in out_dir."""
    return Path(out_dir) / f"{split}_samples.npz", Path(out_dir) / f"{split}_metrics"


def evaluate(config: Config, model: EnergyModel, variables, dataset: CrystalDataset, out_dir, *,
             split: str | None = None, num_samples: int | None = None, limit: int | None = None,
             batch_size: int | None = None, key=None, timeout_s: float | None = None,
             workers: int | None = None, log: Callable[[str], None] = print) -> dict:
    """Sample, store and score one split (SPEC §5); returns the results of `metrics.evaluate_samples`.

    dataset: the whole split (its length is the total the report compares with).
    Options left None take `config.eval` values; key defaults to PRNGKey(0).
    limit > 0 evaluates `subset_indices(len(dataset), limit)` only (the report
    says so). The results gain `sampling`: chains, steps, seconds, overflow
    re-runs. Writes `<split>_samples.npz`, `cifs/`, `<split>_metrics.json|.md`
    in out_dir.
    """
    e = config.eval
    split = e.split if split is None else split
    num_samples = e.num_samples if num_samples is None else num_samples
    limit = e.limit if limit is None else limit
    batch_size = e.batch_size if batch_size is None else batch_size
    timeout_s = e.match_timeout if timeout_s is None else timeout_s
    key = jax.random.PRNGKey(0) if key is None else key
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    samples_path, stem = _paths(out_dir, split)

    test = dataset.subset(subset_indices(len(dataset), limit))
    num_test = len(test)
    log(f"sampling {num_test} of {len(dataset)} {split} crystals x {num_samples} chains, "
        f"{config.sampler.num_steps} steps, batch {batch_size}")
    start = time.perf_counter()
    crystals, energies, reruns = sample_species(
        config, model, variables, np.repeat(test.species, num_samples, axis=0), key,
        batch_size=batch_size, log=log)
    seconds = time.perf_counter() - start
    log(f"sampled in {format_duration(seconds)}; neighbour-capacity overflow re-runs: {reruns}")
    samples = jax.tree.map(lambda a: a.reshape((num_test, num_samples) + a.shape[1:]), crystals)
    metrics.save_samples(samples_path, samples, energies.reshape(num_test, num_samples),
                         test.material_ids)
    _write_first_sample_cifs(samples, test.material_ids, out_dir / "cifs")

    log(f"matching {num_test * num_samples} pairs")
    results = metrics.evaluate_samples([test.structure(i) for i in range(num_test)], samples,
                                       timeout_s, workers)
    results["sampling"] = {"chains": num_test * num_samples, "steps": config.sampler.num_steps,
                           "batch_size": batch_size, "seconds": seconds,
                           "overflow_reruns": reruns}
    json_path, md_path = metrics.write_report(results, stem, config.data.dataset, len(dataset))
    log(f"wrote {samples_path}, {json_path}, {md_path}")
    return results


def recompute(samples_path, dataset: CrystalDataset, dataset_name: str, *,
              timeout_s: float = DEFAULT_TIMEOUT_S, workers: int | None = None,
              log: Callable[[str], None] = print) -> dict:
    """Score a stored `<split>_samples.npz` again (no sampling) and rewrite `<split>_metrics.json|.md`.

    dataset: the whole split the samples came from (ground truth found by
    material id); dataset_name: e.g. "perov_5", for the report. The `sampling`
    record of an existing metrics JSON beside the samples is kept.
    """
    samples_path = Path(samples_path)
    if not samples_path.name.endswith("_samples.npz"):
        raise ValueError(f"{samples_path} is not a <split>_samples.npz file")
    samples, _, material_ids = metrics.load_samples(samples_path)
    row_of = {str(m): i for i, m in enumerate(dataset.material_ids)}
    missing = [str(m) for m in material_ids if str(m) not in row_of]
    if missing:
        raise ValueError(f"{len(missing)} sampled crystals are not in the dataset "
                         f"(first: {missing[0]}); wrong split or dataset?")
    log(f"matching {samples.species.shape[0] * samples.species.shape[1]} pairs of {samples_path}")
    results = metrics.evaluate_samples([dataset.structure(row_of[str(m)]) for m in material_ids],
                                       samples, timeout_s, workers)
    stem = samples_path.with_name(samples_path.name[:-len("_samples.npz")] + "_metrics")
    previous = Path(f"{stem}.json")
    if previous.is_file() and "sampling" in (record := json.loads(previous.read_text())):
        results["sampling"] = record["sampling"]
    json_path, md_path = metrics.write_report(results, stem, dataset_name, len(dataset))
    log(f"wrote {json_path}, {md_path}")
    return results
