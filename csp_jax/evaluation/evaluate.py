"""The paper's Table 1 evaluation of a trained energy (SPEC §5).

`evaluate` draws K independent chains per test crystal with the crystal's own
species vector (through the chain driver, `csp_jax.sampling.sample_rows`),
writes the samples batch by batch into `<split>_parts/` so that an
interrupted evaluation continues with `resume=True` where it stopped (chain r
uses the key `fold_in(key, r)` and the stored capacity carries over, so the
result equals an uninterrupted run), then stores them (`<split>_samples.npz`,
the sampling's time and counts in `<split>_sampling.json`, CIFs of the first
sample per crystal in `cifs/`) and writes the match metrics
(`<split>_metrics.json` and `.md`, beside the paper's numbers) and two
pictures (`<split>_rmse.png`: best RMSE per crystal; `<split>_match_rate.png`:
match rate against the number of samples). `recompute`
scores a stored sample file again without sampling.
"""
from __future__ import annotations

import hashlib
import io
import json
import shutil
import time
from pathlib import Path
from typing import Callable, Sequence

import jax
import numpy as np

from csp_jax.candidates.relax import calculator
from csp_jax.config import Config
from csp_jax.distributed import barrier, is_main, share
from csp_jax.data.dataset import CrystalDataset
from csp_jax.data.datasets import subset_indices
from csp_jax.energy.base import Energy
from csp_jax.evaluation.figures import evaluation_pngs
from csp_jax.evaluation.parts import SETTINGS_FILE, open_parts, refuse_without_resume
from csp_jax.evaluation.metrics import add_splits, concatenated, evaluate_samples, match_crystals, summarize
from csp_jax.evaluation.polymorphs import other_structures, polymorph_metrics
from csp_jax.evaluation.relaxed import RELAXED, RELAXED_WHAT, relax_and_score
from csp_jax.evaluation.report import write_report
from csp_jax.evaluation.samples import load_samples, sample_at, save_samples
from csp_jax.geometry.validity import valid_structure
from csp_jax.files import write_atomic
from csp_jax.geometry.crystal import Crystal, to_structure
from csp_jax.geometry.neighbors import NeighborCapacity
from csp_jax.progress import format_duration
from csp_jax.sampling.driver import compiled_chain_programs, sample_rows, schedule
from csp_jax.sampling.kernel import kernel_from



def _runs(begins: list[int], step: int) -> list[list[int]]:
    """`begins` (sorted) in runs of consecutive batches (each `step` after the previous)."""
    runs = []
    for begin in begins:
        if runs and begin == runs[-1][-1] + step:
            runs[-1].append(begin)
        else:
            runs.append([begin])
    return runs


def sample_chains(config: Config, energy: Energy, variables, species, key, *,
                  parts_dir: Path | None = None, log: Callable[[str], None] = print):
    """Annealed chains (the config's evaluation schedule and kernel) from random starts, one
    per row, in batches of `eval.batch_size`.

    species: [M, N] int (0 = padding); row r uses the key `fold_in(key, r)`.
    With `parts_dir`, every batch of rows is saved there as it finishes
    (`rows_<first row>.npz`, with the capacity the next batch starts from) and
    batches already there are loaded instead of sampled again. With several
    processes (`csp_jax.distributed`), each samples its share of the batches
    (`distributed.share`) and saves them in `parts_dir` (required then, on a
    filesystem every process sees); after a barrier every process reads every
    batch. Returns (crystals: Crystal [M, N] numpy, energies [M], overflow
    re-runs, non-finite proposals rejected).
    """
    species = np.asarray(species, np.int32)
    num_rows = species.shape[0]
    batch_size = min(config.eval.batch_size, num_rows)
    steps = schedule(config.sampler, config.eval.num_steps)
    start_capacity = NeighborCapacity.from_config(config.neighbors, species.shape[1])
    begins = list(range(0, num_rows, batch_size))
    if jax.process_count() > 1 and parts_dir is None:
        raise ValueError("several processes share their chains through a parts folder: give parts_dir")
    path = lambda begin: parts_dir / f"rows_{begin:08d}.npz"  # noqa: E731

    def load(begin: int) -> dict:
        with np.load(path(begin)) as part:
            return {k: part[k] for k in part.files}

    parts = {}
    if parts_dir is not None:
        parts_dir.mkdir(parents=True, exist_ok=True)
        parts = {begin: load(begin) for begin in begins if path(begin).is_file()}
        if parts:
            log(f"resuming: {len(parts)} batches of {batch_size} chains already in {parts_dir}")

    def save_part(begin, crystals, energies, capacity, reruns, non_finite):
        part = {"positions": crystals.positions, "lattice": crystals.lattice, "energies": energies,
                "capacity": np.array(capacity), "reruns": np.array(reruns),
                "non_finite": np.array(non_finite)}
        parts[begin] = part
        if parts_dir is not None:
            buffer = io.BytesIO()
            np.savez(buffer, **part)
            write_atomic(path(begin), buffer.getvalue())

    todo = [begins[i] for i in share(len(begins)) if begins[i] not in parts]
    if jax.process_count() > 1:
        log(f"process {jax.process_index()} of {jax.process_count()}: sampling the batches from rows "
            f"{', '.join(map(str, todo)) or '(none left)'}")
    for run in _runs(todo, batch_size):
        earlier = [begin for begin in parts if begin < run[0]]  # its capacity carries over
        capacity = NeighborCapacity(*(int(c) for c in parts[max(earlier)]["capacity"])) if earlier \
            else start_capacity
        sample_rows(key, species[run[0]:run[-1] + batch_size], energy, variables, capacity, steps,
                    batch_size=batch_size, segment_length=config.sampler.segment_length,
                    kernel=kernel_from(config.sampler.kernel), first_row=run[0], log=log, on_batch=save_part)
    if jax.process_count() > 1:
        barrier("sampled")
        parts = {begin: load(begin) for begin in begins}
    done = [parts[begin] for begin in begins]
    crystals = Crystal(species, np.concatenate([p["positions"] for p in done]),
                       np.concatenate([p["lattice"] for p in done]))
    return (crystals, np.concatenate([p["energies"] for p in done]),
            int(sum(int(p["reruns"]) for p in done)),
            int(sum(int(p.get("non_finite", 0)) for p in done)))  # parts written before the count: 0


def chain_rows(test: CrystalDataset, num_samples: int) -> tuple[np.ndarray, np.ndarray]:
    """(species [T K, N], order [T]): the chains of T test crystals, K = num_samples each, in
    the order they run: the test crystals sorted by size (stable, `order`), so that a batch
    holds cells of similar size and runs at their width."""
    order = np.argsort(test.num_atoms, kind="stable")
    return np.repeat(test.species[order], num_samples, axis=0), order


def _write_first_sample_cifs(samples: Crystal, material_ids, cif_dir: Path) -> None:
    """CIF of sample 0 of every test crystal whose first sample is a valid crystal."""
    from pymatgen.io.cif import CifWriter

    cif_dir.mkdir(parents=True, exist_ok=True)
    for t, material_id in enumerate(material_ids):
        first = sample_at(samples, t, 0)
        if valid_structure(first) is not None:
            CifWriter(to_structure(first)).write_file(cif_dir / f"{material_id}.cif")


def add_polymorphs(results: dict, test: CrystalDataset, samples: Crystal, energies,
                   references: Sequence[CrystalDataset], timeout_s: float, workers: int | None,
                   log: Callable[[str], None]) -> None:
    """Add `polymorphs` (`polymorphs.polymorph_metrics`) to `results` when references are given.

    test: the T test crystals, in the samples' order; samples: [T, K, N]; energies: [T, K].
    """
    if not references:
        return
    log("matching each test crystal against the references of its composition, and the "
        "top-ranked samples against their other structures")
    others = other_structures(test, references, timeout_s, workers)
    results["polymorphs"] = polymorph_metrics(results, samples, energies, others, timeout_s, workers)


def _fingerprint(variables) -> str:
    """SHA-256 of a model's variables (every leaf's bytes, in tree order): parts sampled
    with other weights do not resume."""
    digest = hashlib.sha256()
    for leaf in jax.tree.leaves(variables):
        digest.update(np.ascontiguousarray(leaf).tobytes())
    return digest.hexdigest()


def _paths(out_dir, split: str) -> tuple[Path, Path]:
    """(samples file, metrics stem) of a split in out_dir."""
    return Path(out_dir) / f"{split}_samples.npz", Path(out_dir) / f"{split}_metrics"


def _sampling_path(out_dir, split: str) -> Path:
    """The sampling record of a split's finished samples, written with them."""
    return Path(out_dir) / f"{split}_sampling.json"


def _sampled_before(out_dir, split: str) -> dict | None:
    """The sampling record of samples made before: from `_sampling_path`, else from an earlier
    report (evaluations from before that file); None when neither has one."""
    if _sampling_path(out_dir, split).is_file():
        return json.loads(_sampling_path(out_dir, split).read_text())
    previous = Path(f"{_paths(out_dir, split)[1]}.json")
    return json.loads(previous.read_text()).get("sampling") if previous.is_file() else None


def evaluate(config: Config, energy: Energy, variables, dataset: CrystalDataset, out_dir, *,
             workers: int | None = None, resume: bool = False, training: CrystalDataset | None = None,
             references: Sequence[CrystalDataset] = (), dataset_name: str | None = None, selection: str = "",
             log: Callable[[str], None] = print) -> dict:
    """Sample, store and score one split (SPEC §5); returns the results of `metrics.evaluate_samples`.

    dataset: the whole split (its length is the total the report compares with), or
    the crystals selected from it, which `selection` then describes (a sentence
    for the report, e.g. "the 4 of the 9 mpts_52/test crystals of at most 20
    atoms"); dataset_name: the report's dataset (default: config.data.dataset).
    The options are the config's: `eval.split` (the files' names), `eval.num_samples`
    chains per crystal, `eval.limit`, `eval.batch_size`, the key PRNGKey(`eval.seed`),
    `eval.match_timeout`, the sampler `sampler.kernel`. training: the training crystals; the
    results then gain `by_composition_in_training` ("seen" / "unseen": the metrics
    of the test crystals whose reduced composition occurs among them, or not).
    references: the dataset's splits at hand; the results then gain
    `polymorphs` (`polymorphs.polymorph_metrics`: the top-ranked sample
    against the other structures of the test crystal's composition).
    limit > 0 evaluates `subset_indices(len(dataset), limit, eval.skip)` only (the report
    says so; `eval.skip` leaves out the first crystals of that shuffle). Samples are saved
    batch by batch in `<split>_parts/`; `resume` continues from them (with the same settings
    and model variables, checked), otherwise an existing `<split>_parts/` is an error. The results gain `sampling`:
    chains, steps, seconds, overflow re-runs, chain programs compiled. Writes `<split>_samples.npz`,
    `cifs/`, `<split>_metrics.json|.md` in out_dir.
    """
    e = config.eval
    split, num_samples, limit, batch_size = e.split, e.num_samples, e.limit, e.batch_size
    key = jax.random.PRNGKey(e.seed)
    test = dataset.subset(subset_indices(len(dataset), limit, e.skip))  # before anything is written
    if config.relax.enabled:  # a potential that is not installed stops here, not after the sampling
        for potential in filter(None, (config.relax.potential, config.relax.refine)):
            calculator(potential)
    out_dir = Path(out_dir)
    if config.relax.enabled:  # before sampling again over the samples they came from
        refuse_without_resume(out_dir / f"{split}_{RELAXED}", resume, RELAXED_WHAT)
    out_dir.mkdir(parents=True, exist_ok=True)
    samples_path, stem = _paths(out_dir, split)
    num_steps = int(schedule(config.sampler, e.num_steps)[0].shape[0])

    num_test = len(test)
    parts_dir = out_dir / f"{split}_parts"
    sampled_settings = out_dir / f"{split}_{SETTINGS_FILE}"  # the finished samples' settings
    settings = {"split": split, "num_test": num_test, "num_samples": num_samples, "steps": num_steps,
                "batch_size": batch_size, "key": np.asarray(jax.random.key_data(key)).tolist(),
                "order": "by_size", "selection": selection,  # the chains' row order (parts of another order do not resume)
                "model": _fingerprint(variables)}
    if e.skip:  # only then, so that the parts of evaluations from before the option resume
        settings["skip"] = e.skip
    if resume and not parts_dir.is_dir() and samples_path.is_file() and sampled_settings.is_file():
        if json.loads(sampled_settings.read_text()) != settings:
            raise ValueError(f"--resume: {samples_path} was sampled with other settings "
                             f"({sampled_settings.read_text().strip()}); use the same options or delete it")
        log(f"resuming: the samples in {samples_path} are complete; scoring them")
        samples, energies, _ = load_samples(samples_path)
        return _score(config, test, samples, energies, out_dir, split, len(dataset), None, resume=True,
                      workers=workers, training=training, references=references,
                      dataset_name=dataset_name, selection=selection, log=log)
    open_parts(parts_dir, settings, resume, "an interrupted evaluation")
    log(f"sampling {num_test} of {len(dataset)} {split} crystals x {num_samples} chains, "
        f"{num_steps} steps, batch {batch_size}")
    start, programs = time.perf_counter(), compiled_chain_programs()
    species, by_size = chain_rows(test, num_samples)  # the results go back to the test order below
    crystals, energies, reruns, non_finite = sample_chains(config, energy, variables, species, key,
                                                           parts_dir=parts_dir, log=log)
    seconds, programs = time.perf_counter() - start, compiled_chain_programs() - programs
    log(f"sampled in {format_duration(seconds)}; neighbour-capacity overflow re-runs: {reruns}; "
        f"non-finite proposals rejected: {non_finite}; chain programs compiled: {programs}")
    unsort = np.argsort(by_size)
    samples = jax.tree.map(lambda a: a.reshape((num_test, num_samples) + a.shape[1:])[unsort], crystals)
    energies = energies.reshape(num_test, num_samples)[unsort]
    sampling = {"chains": num_test * num_samples, "steps": num_steps, "batch_size": batch_size,
                "seconds": seconds, "overflow_reruns": reruns, "non_finite_proposals": non_finite,
                "compiled_programs": programs}
    barrier("samples read")  # every process read every part before the main one removes them
    if is_main():
        save_samples(samples_path, samples, energies, test.material_ids)
        write_atomic(_sampling_path(out_dir, split), json.dumps(sampling))  # for a report after a stop
        write_atomic(sampled_settings, json.dumps(settings))
        shutil.rmtree(parts_dir)
        _write_first_sample_cifs(samples, test.material_ids, out_dir / "cifs")
    return _score(config, test, samples, energies, out_dir, split, len(dataset), sampling, resume=resume,
                  workers=workers, training=training, references=references, dataset_name=dataset_name,
                  selection=selection, log=log)


def _score(config: Config, test: CrystalDataset, samples: Crystal, energies, out_dir: Path, split: str,
           num_test_total: int, sampling: dict | None, *, resume: bool, workers, training, references,
           dataset_name, selection: str, log) -> dict:
    """Match the samples [T, K, N] of the T test crystals, relax them when `relax.enabled`, and write
    the report (`sampling`: the sampling record, None when the samples were sampled before).

    With several processes, each matches and relaxes its share of the crystals; the main one
    merges them and writes the report, and alone returns the results (the others: None).
    """
    num_test, num_samples = energies.shape
    timeout_s = config.eval.match_timeout
    stem = _paths(out_dir, split)[1]
    truths = [test.structure(i) for i in range(num_test)]

    mine = share(num_test)
    log(f"matching {len(mine) * num_samples} pairs, then the matched ones at strict tolerances "
        f"and the samples of each crystal against each other")
    matched = match_crystals([truths[t] for t in mine], jax.tree.map(lambda a: a[mine], samples),
                             timeout_s, workers, energies=energies[mine])
    if jax.process_count() > 1:
        matched = _merged(matched, mine, out_dir / f"{split}_scored")
    results = summarize(matched, energies)
    if config.relax.enabled:
        log(f"relaxing the samples of {num_test} crystals with {config.relax.potential}")
        relaxed = relax_and_score(config, truths, samples, energies, results["matches"], test.material_ids,
                                  out_dir, split, resume=resume, workers=workers, log=log)
        if relaxed is not None:
            results["relaxed"] = relaxed
    if not is_main():
        return None
    add_splits(results, test.species, energies, training)
    add_polymorphs(results, test, samples, energies, references, timeout_s, workers, log)
    sampling = sampling or _sampled_before(out_dir, split)
    if sampling is not None:
        results["sampling"] = sampling
    if selection:
        results["selection"] = selection
    if config.eval.skip:
        results["skip"] = config.eval.skip
    json_path, md_path = write_report(results, stem, dataset_name or config.data.dataset, num_test_total)
    pngs = evaluation_pngs(results, out_dir, split)
    log(f"wrote {json_path}, {md_path}, {pngs[0].name}, {pngs[1].name}")
    return results


def _merged(matched: dict, mine: list[int], folder: Path) -> dict:
    """Every process's `match_crystals` records (this one's: `matched`, of the crystals `mine`),
    exchanged through files in `folder`, as one in the crystals' order."""
    folder.mkdir(parents=True, exist_ok=True)
    write_atomic(folder / f"{jax.process_index()}.json", json.dumps({"crystals": mine, **matched}))
    barrier("scored")
    parts = [json.loads((folder / f"{p}.json").read_text()) for p in range(jax.process_count())]
    barrier("scores read")
    if is_main():
        shutil.rmtree(folder)
    crystals = [t for part in parts for t in part.pop("crystals")]
    return concatenated(parts, np.argsort(crystals))


def recompute(samples_path, dataset: CrystalDataset, dataset_name: str, *,
              timeout_s: float, workers: int | None = None, training: CrystalDataset | None = None,
              references: Sequence[CrystalDataset] = (), selection: str = "",
              log: Callable[[str], None] = print) -> dict:
    """Score a stored `<split>_samples.npz` again (no sampling) and rewrite `<split>_metrics.json|.md`.

    dataset: the split the samples came from, or the crystals selected from it
    as `evaluate` had them (ground truth found by material id); dataset_name,
    training, references, selection: as for `evaluate`. The samples' `sampling` record
    (`<split>_sampling.json`, or an earlier metrics JSON beside them) is kept.
    """
    samples_path = Path(samples_path)
    if not samples_path.name.endswith("_samples.npz"):
        raise ValueError(f"{samples_path} is not a <split>_samples.npz file")
    samples, energies, material_ids = load_samples(samples_path)
    row_of = {str(m): i for i, m in enumerate(dataset.material_ids)}
    missing = [str(m) for m in material_ids if str(m) not in row_of]
    if missing:
        raise ValueError(f"{len(missing)} sampled crystals are not in the dataset "
                         f"(first: {missing[0]}); wrong split or dataset?")
    log(f"matching {samples.species.shape[0] * samples.species.shape[1]} pairs of {samples_path}, "
        f"then the matched ones at strict tolerances and the samples against each other")
    test = dataset.subset(np.array([row_of[str(m)] for m in material_ids], np.int64))
    results = evaluate_samples([test.structure(t) for t in range(len(test))],
                               samples, timeout_s, workers, energies=energies)
    add_splits(results, samples.species[:, 0], energies, training)
    add_polymorphs(results, test, samples, energies, references, timeout_s, workers, log)
    if selection:
        results["selection"] = selection
    split = samples_path.name[:-len("_samples.npz")]
    if (sampling := _sampled_before(samples_path.parent, split)) is not None:
        results["sampling"] = sampling
    json_path, md_path = write_report(results, _paths(samples_path.parent, split)[1], dataset_name, len(dataset))
    pngs = evaluation_pngs(results, samples_path.parent, split)
    log(f"wrote {json_path}, {md_path}, {pngs[0].name}, {pngs[1].name}")
    return results
