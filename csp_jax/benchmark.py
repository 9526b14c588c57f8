"""Speed of the MALA step (SPEC §3) on this machine, against SPEC §8's baseline.

    python experiments/bench.py                       # both SPEC §8 workloads (csp-jax bench)
    python experiments/bench.py --workload perov5 --batch 128 --atoms 5 --json out.json
    python experiments/bench.py --whole-chain         # a whole 1000-step chain, twice: ms/step, compilations
    python experiments/bench.py --train               # training steps vs the sampler, per real atom-step
    python experiments/bench.py --evaluation mp20 --dataset mpts_52 --limit 16   # evaluate's chains
    python experiments/bench.py --scaling --out docs  # docs/scaling.png + docs/scaling.md
    python experiments/bench.py --profile --max-images 128 --max-edges 352   # parts of a step

What is timed: `steps` MALA steps of the chain driver's jitted segment
(`csp_jax.sampling.driver.compiled_segment`: real `EnergyModel` energy with
random weights, Niggli reduce, chains vmapped in chunks), after compilation,
from the same start states each repeat; the median over repeats divided by
`steps` is the time per step. The start states are random crystals advanced
by `warmup` steps of the real 1000-step annealing schedule through
`csp_jax.sampling.sample` itself (capacity refits between segments, overflow
re-runs), so the cells are the ones a chain actually visits; the timed steps
are the schedule's next `steps` steps.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from csp_jax import models
from csp_jax.config import get_config, with_sets
from csp_jax.energy.registry import build_energy
from csp_jax.geometry.capacity import grow_until_no_overflow, largest_needs
from csp_jax.geometry.neighbors import NeighborCapacity
from csp_jax.geometry.niggli import reduce_crystal
from csp_jax.sampling.driver import (chains_per_chunk, chunked_vmap, compiled_chain_programs, compiled_segment,
                                     sample, schedule)
from csp_jax.sampling.kernel import kernel_from
from csp_jax.sampling.mala import random_crystal

# SPEC §8: the authors' PyTorch code on this 2-core CPU (ms per step, crystal-steps per s).
BASELINE = {
    "perov5": {"config": "perov5", "batch": 128, "atoms": 5, "ms_per_step": 309.0, "crystal_steps_per_s": 415.0},
    "mp20": {"config": "mp20", "batch": 16, "atoms": 20, "ms_per_step": 578.0, "crystal_steps_per_s": 28.0},
}


def machine() -> dict:
    """CPU model, cores, load, jax version and backend."""
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "load_avg": os.getloadavg(),
            "jax": jax.__version__, "backend": jax.default_backend(),
            "devices": [str(d) for d in jax.devices()], "python": platform.python_version()}


def species_for(num_atoms: int, batch: int, seed: int = 0) -> np.ndarray:
    """[batch, num_atoms] species: SrTiO3 for 5 atoms, else random Z in 1..83 per crystal."""
    if num_atoms == 5:
        return np.tile(np.array([38, 22, 8, 8, 8], np.int32), (batch, 1))
    rng = np.random.default_rng(seed)
    return np.sort(rng.integers(1, 84, (batch, num_atoms)), axis=1).astype(np.int32)


def bench(config: str = "perov5", batch: int = 128, atoms: int = 5, steps: int = 20,
          warmup: int = 300, repeats: int = 7, seed: int = 0, max_images: int | None = None,
          edge_factor: float | None = None, chunk: int | None = None, log=print) -> dict:
    """Time one MALA step for `batch` crystals of `atoms` atoms with `config`'s model.

    Returns a dict: ms_per_step (median), ms_per_step_best (the fastest repeat,
    the least disturbed by other work on a shared machine), all repeats, crystal_steps_per_s,
    compile_s (the timed segment's lower + compile), capacity used, overflow
    re-runs, acceptance rate of the timed steps, XLA's memory estimate of the
    compiled segment and the process's peak RSS.
    """
    cfg = workload_config(config)
    model = build_energy(cfg.model)
    capacity = NeighborCapacity.for_atoms(
        atoms, cfg.neighbors.max_images if max_images is None else max_images,
        cfg.neighbors.edge_factor if edge_factor is None else edge_factor)
    variables = model.init(jax.random.key(seed))
    step_sizes, betas = schedule(cfg.sampler)
    keys = jax.random.split(jax.random.key(seed + 1), batch)
    species = jnp.asarray(species_for(atoms, batch, seed))

    # The first `warmup` steps through the library's driver, segments of `steps` steps.
    warm = sample(keys, species, model, variables, capacity, (step_sizes[:warmup], betas[:warmup]),
                  segment_length=steps, chunk=chunk)
    states, reruns = warm.states, warm.num_overflow_reruns
    capacity = warm.capacity.fit(*largest_needs(warm.info.needs[:, -steps:]))
    run_keys = jax.vmap(jax.random.split)(keys)[:, 1]
    compile_s = {}

    def timed_segment(capacity):
        """The driver's segment for the next `steps` steps, compiled ahead (timed) and run once."""
        args = (variables, run_keys, states, step_sizes[warmup:warmup + steps],
                betas[warmup:warmup + steps], warmup)
        t0 = time.perf_counter()
        segment = compiled_segment(model, kernel_from(cfg.sampler.kernel), reduce_crystal, capacity, chunk)
        compiled = segment.lower(*args).compile()
        compile_s[capacity] = time.perf_counter() - t0
        out = compiled(*args)
        return (compiled, args, out[1]), out[1].overflow, largest_needs(out[1].needs)

    (compiled, args, info), capacity, more = grow_until_no_overflow(timed_segment, capacity, "in the timed segment")
    reruns += more
    compile_s = compile_s[capacity]
    nbrs = jax.jit(model.batch_energy, static_argnums=2)(variables, states.crystal, capacity)[1]
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - t0)
    ms = 1e3 * statistics.median(times) / steps
    memory = compiled.memory_analysis()
    xla_bytes = None if memory is None else int(
        memory.temp_size_in_bytes + memory.argument_size_in_bytes + memory.output_size_in_bytes)
    result = {
        "config": config, "batch": batch, "atoms": atoms, "steps": steps, "warmup": warmup,
        "chunk": chains_per_chunk(model, capacity) if chunk is None else chunk,
        "ms_per_step": ms, "ms_per_step_best": 1e3 * min(times) / steps,
        "ms_per_step_repeats": [1e3 * t / steps for t in times],
        "crystal_steps_per_s": batch * 1e3 / ms, "compile_s": compile_s,
        "capacity": {"max_images": capacity.max_images, "max_edges": capacity.max_edges},
        "overflow_reruns": reruns,
        "acceptance": float(jnp.mean(info.accepted)),
        "start_edges_mean_max": [float(jnp.mean(nbrs.num_edges)), int(jnp.max(nbrs.num_edges))],
        "start_images_max": int(jnp.max(nbrs.num_images)),
        "xla_memory_bytes": xla_bytes,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
    }
    log(f"{config} batch {batch} x {atoms} atoms (chunk {result['chunk'] or batch}): {ms:.2f} ms/step, "
        f"{result['crystal_steps_per_s']:.0f} crystal-steps/s, compile {compile_s:.1f} s, "
        f"capacity {tuple(capacity)}, re-runs {reruns}, acceptance {result['acceptance']:.2f}, "
        f"timed start states need edges mean/max {result['start_edges_mean_max']}, "
        f"images max {result['start_images_max']}")
    return result


def profile(config: str = "perov5", batch: int = 128, atoms: int = 5, max_images: int = 128,
            max_edges: int = 352, repeats: int = 5, seed: int = 0, chunk: int | None = None,
            log=print) -> dict:
    """Median wall and CPU ms of the parts of one step, on reduced random crystals.

    Parts (each jitted, over the batch in vmapped chunks of `chunk` chains as
    the sampler runs them; None: the library's choice): Niggli reduce + wrap,
    the neighbour list, the energy, the energy with its gradient w.r.t. X and L.
    """
    from csp_jax.geometry.neighbors import neighbor_list

    model = build_energy(workload_config(config).model)
    capacity = NeighborCapacity(max_images, max_edges)
    variables = model.init(jax.random.key(seed))
    keys = jax.random.split(jax.random.key(seed + 1), batch)
    rho0 = model.rho0
    crystals = jax.vmap(lambda k, s: random_crystal(k, s, rho0))(keys, jnp.asarray(species_for(atoms, batch, seed)))
    positions, lattice, _ = jax.vmap(reduce_crystal)(crystals.positions, crystals.lattice)
    crystals = crystals.replace(positions=positions, lattice=lattice)

    def energy_and_grad(variables, crystal):  # value and gradient, as the sampler evaluates them
        def energy(positions, lattice):
            return model.energy(variables, crystal.replace(positions=positions, lattice=lattice), capacity)[0]
        return jax.value_and_grad(energy, argnums=(0, 1))(crystal.positions, crystal.lattice)

    chunk = chains_per_chunk(model, capacity) if chunk is None else chunk
    over_batch = lambda fn: chunked_vmap(fn, chunk)  # noqa: E731
    parts = {
        "niggli_reduce": (over_batch(lambda c: reduce_crystal(c.positions, c.lattice)), (crystals,)),
        "neighbor_list": (over_batch(lambda c: neighbor_list(c, capacity)), (crystals,)),
        "energy": (over_batch(lambda c: model.energy(variables, c, capacity)[0]), (crystals,)),
        "energy_and_grad": (over_batch(lambda c: energy_and_grad(variables, c)), (crystals,)),
    }
    nbrs = parts["neighbor_list"][0](crystals)
    result = {"config": config, "batch": batch, "atoms": atoms, "capacity": list(capacity), "chunk": chunk,
              "edges_mean_max": [float(jnp.mean(nbrs.num_edges)), int(jnp.max(nbrs.num_edges))],
              "images_max": int(jnp.max(nbrs.num_images)), "overflow": int(jnp.sum(nbrs.overflow))}
    log(f"{config} batch {batch} x {atoms} atoms (chunk {chunk}), capacity {tuple(capacity)}: edges mean/max "
        f"{result['edges_mean_max']}, images max {result['images_max']}, overflow {result['overflow']}")
    for name, (fn, args) in parts.items():
        fn = jax.jit(fn)
        jax.block_until_ready(fn(*args))
        wall, cpu = [], []
        for _ in range(repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            jax.block_until_ready(fn(*args))
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        result[name] = {"wall_ms": 1e3 * statistics.median(wall), "cpu_ms": 1e3 * statistics.median(cpu)}
        log(f"  {name:16s} {result[name]['wall_ms']:8.2f} ms wall {result[name]['cpu_ms']:8.2f} ms cpu")
    return result


def whole_chain(config: str = "perov5", batch: int = 128, atoms: int = 5, seed: int = 0,
                log=print) -> dict:
    """A whole chain of the config's schedule through `csp_jax.sampling.sample`, twice in one process.

    Returns, per run, the wall ms per step (compilation included), the
    compilations it caused (new (energy, capacity, shape) programs of the
    driver; programs found in the persistent cache `$CSP_JAX_CACHE/xla` count
    too, but load in well under a second) and the capacities it ran with.
    """
    cfg = workload_config(config)
    model = build_energy(cfg.model)
    variables = model.init(jax.random.key(seed))
    steps = schedule(cfg.sampler)
    species = jnp.asarray(species_for(atoms, batch, seed))
    runs = []
    for run in range(2):
        programs = compiled_chain_programs()
        t0 = time.perf_counter()
        result = sample(jax.random.split(jax.random.key(seed + 1 + run), batch), species, model, variables,
                        NeighborCapacity.from_config(cfg.neighbors, atoms), steps,
                        segment_length=cfg.sampler.segment_length)
        jax.block_until_ready(result.states)
        seconds = time.perf_counter() - t0
        compilations = compiled_chain_programs() - programs
        capacities = [tuple(result.start_capacity), tuple(result.capacity)]
        runs.append({"run": run + 1, "ms_per_step": 1e3 * seconds / len(steps[0]), "seconds": seconds,
                     "compilations": compilations, "first_and_last_capacity": capacities,
                     "overflow_reruns": result.num_overflow_reruns})
        log(f"whole chain {run + 1}: {config} batch {batch} x {atoms} atoms, {len(steps[0])} steps: "
            f"{runs[-1]['ms_per_step']:.1f} ms/step ({seconds:.1f} s), {compilations} compilations, "
            f"capacity {capacities[0]} -> {capacities[1]}, re-runs {result.num_overflow_reruns}")
    return {"config": config, "batch": batch, "atoms": atoms, "runs": runs}


def train_throughput(config: str = "perov5", steps: int = 3, num_steps: int | None = None,
                     data_dir=None, seed: int = 0, warmup: int = 1, log=print) -> dict:
    """Training steps of `config` on real batches (its batch size, its negatives' cells),
    after `warmup` steps, beside the sampler on the same chains.

    num_steps: MALA steps per chain (default the config's). Per step: wall
    seconds, crystal-steps and real-atom-steps per second (chain steps of all
    chains over the step's wall time: chains, update, compilation and host
    work) and the programs compiled during it. Then the sampler alone: the
    last batch's chains run again through the driver in the same groups, all
    programs compiled, no update (`sampler`). `ratio` is the sampler's
    real-atom-steps per second over the median timed training step's.
    """
    from csp_jax.data.datasets import training_splits
    from csp_jax.training.loop import Capacities, compiled_training_programs, make_batch, negatives, run_step
    from csp_jax.training.step import init_train_state, optimizer, update_step

    cfg = workload_config(config)
    if num_steps:
        cfg = dataclasses.replace(cfg, sampler=dataclasses.replace(cfg.sampler, num_steps=num_steps))
    train_set, _ = training_splits(cfg.data, data_dir)
    energy = build_energy(cfg.model)
    capacities = Capacities(cfg.neighbors, train_set.max_atoms)
    state = init_train_state(cfg, jax.random.PRNGKey(seed), energy)
    update = functools.partial(update_step, optimizer=optimizer(cfg.train))
    rng = np.random.default_rng(seed)
    records = []
    for step in range(warmup + steps):
        indices = np.sort(rng.choice(len(train_set), cfg.train.batch_size, replace=False))
        batch, _ = make_batch(cfg, train_set, indices, np.random.default_rng([seed, step]))
        atoms = int(np.count_nonzero(np.asarray(batch.sample_species)))
        programs, t0 = compiled_training_programs(), time.perf_counter()
        (state, _), _, _ = run_step(update, energy, cfg, state, batch, jax.random.PRNGKey(step), capacities)
        jax.block_until_ready(state.variables)
        seconds = time.perf_counter() - t0
        chain_steps = cfg.train.batch_size * cfg.sampler.num_steps
        records.append({"seconds": seconds, "crystal_steps_per_s": chain_steps / seconds,
                        "real_atom_steps_per_s": atoms * cfg.sampler.num_steps / seconds,
                        "real_atoms_mean": atoms / cfg.train.batch_size,
                        "new_programs": compiled_training_programs() - programs})
        log(f"training step {step} ({'warm-up' if step < warmup else 'timed'}): {seconds:.1f} s, "
            f"{records[-1]['crystal_steps_per_s']:.0f} crystal-steps/s, "
            f"{records[-1]['real_atom_steps_per_s']:.0f} real-atom-steps/s, mean "
            f"{atoms / len(indices):.1f} atoms per chain, {records[-1]['new_programs']} programs compiled")
    t0 = time.perf_counter()
    jax.block_until_ready(negatives(cfg, energy, state.variables, batch.sample_species,
                                    jax.random.PRNGKey(step), capacities).samples.positions)
    seconds = time.perf_counter() - t0
    sampler = {"seconds": seconds, "real_atom_steps_per_s": atoms * cfg.sampler.num_steps / seconds,
               "crystal_steps_per_s": cfg.train.batch_size * cfg.sampler.num_steps / seconds}
    timed = records[warmup:]
    median = statistics.median(r["real_atom_steps_per_s"] for r in timed)
    log(f"sampler, the last batch's chains again: {seconds:.1f} s, "
        f"{sampler['real_atom_steps_per_s']:.0f} real-atom-steps/s; training is "
        f"{sampler['real_atom_steps_per_s'] / median:.2f}x slower per real atom-step")
    return {"config": config, "batch": cfg.train.batch_size, "num_steps": cfg.sampler.num_steps,
            "steps": records, "warmup": warmup, "sampler": sampler,
            "crystal_steps_per_s": statistics.median(r["crystal_steps_per_s"] for r in timed),
            "real_atom_steps_per_s": median, "ratio": sampler["real_atom_steps_per_s"] / median}


def evaluation_throughput(checkpoint: str, dataset: str | None = None, split: str = "test",
                          limit: int = 16, num_samples: int = 8, num_steps: int | None = None,
                          batch_size: int | None = None, data_dir=None, log=print) -> dict:
    """The evaluation's own chains on real test crystals, twice in one process, beside the sampler.

    `evaluate.sample_chains` as `evaluate` runs it (the first `limit` test
    crystals of the fixed shuffle sorted by size, `num_samples` chains each,
    batches of `batch_size` at the bucket size of their largest cell, the
    capacity carried and refitted) with a trained model (a shipped name or a
    model folder), `num_steps` of the evaluation schedule (default the config's).
    Run 1 compiles what it needs, run 2 (the same keys) finds every program
    built: their difference is the cost of compilation and overflow re-runs.
    Per run: seconds, crystal-steps and real-atom-steps per second, programs
    compiled, re-runs. `padding`: atom slots the chains ran over real atoms.
    `sampler`: `bench` (random weights) at the same batch and the test
    crystals' mean bucket size, for the steady per-step rate.
    """
    from csp_jax.data.datasets import load_split, subset_indices
    from csp_jax.evaluation.evaluate import chain_rows, sample_chains
    from csp_jax.geometry.crystal import bucket_for

    cfg, energy, variables = models.load(checkpoint)
    if num_steps:
        cfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, num_steps=num_steps))
    if batch_size:
        cfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, batch_size=batch_size))
    data = load_split(dataset or cfg.data.dataset, split, data_dir)
    test = data.subset(subset_indices(len(data), limit))
    species, _ = chain_rows(test, num_samples)
    batch = min(cfg.eval.batch_size, len(species))
    steps = schedule(cfg.sampler, cfg.eval.num_steps)[0].shape[0]
    real = np.count_nonzero(species, axis=1)
    widths = [bucket_for(int(real[b:b + batch].max()), species.shape[1]) for b in range(0, len(species), batch)]
    slots = batch * sum(widths)
    runs = []
    for run in range(2):
        programs, t0 = compiled_chain_programs(), time.perf_counter()
        _, _, reruns, _ = sample_chains(cfg, energy, variables, species, jax.random.PRNGKey(0),
                                        log=lambda line: None)
        seconds = time.perf_counter() - t0
        runs.append({"run": run + 1, "seconds": seconds, "compilations": compiled_chain_programs() - programs,
                     "overflow_reruns": reruns, "crystal_steps_per_s": len(species) * steps / seconds,
                     "real_atom_steps_per_s": int(real.sum()) * steps / seconds})
        log(f"evaluation {run + 1}: {len(test)} crystals x {num_samples} chains, {steps} steps, batch "
            f"{batch}: {seconds:.1f} s, {runs[-1]['crystal_steps_per_s']:.0f} crystal-steps/s, "
            f"{runs[-1]['real_atom_steps_per_s']:.0f} real-atom-steps/s, {runs[-1]['compilations']} "
            f"programs compiled, {reruns} overflow re-runs")
    atoms = int(round(np.mean(widths)))
    sampler = bench(cfg.name, batch, atoms, warmup=100, repeats=3, log=log)
    log(f"sampler at {atoms} atoms, batch {batch}: {sampler['crystal_steps_per_s']:.0f} crystal-steps/s")
    return {"checkpoint": checkpoint, "dataset": dataset or cfg.data.dataset, "split": split,
            "crystals": len(test), "num_samples": num_samples, "steps": steps, "batch": batch,
            "mean_atoms": float(real.mean()), "batch_widths": widths, "padding": slots / int(real.sum()),
            "runs": runs, "sampler": sampler}


def compare(results: list[dict], info: dict) -> str:
    """A Markdown table of results beside SPEC §8's baseline."""
    lines = [f"machine: {info['cpu']}, {info['cores']} cores, jax {info['jax']} ({info['backend']}), "
             f"load average {info['load_avg'][0]:.2f} / {info['load_avg'][1]:.2f} / {info['load_avg'][2]:.2f}",
             "",
             "| workload | batch | atoms | ms/step | best ms/step | crystal-steps/s | compile s "
             "| baseline ms/step | speed-up | best speed-up |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        base = next((b for b in BASELINE.values()
                     if (b["config"], b["batch"], b["atoms"]) == (r["config"], r["batch"], r["atoms"])), None)
        ratio = f"{base['ms_per_step'] / r['ms_per_step']:.1f}x" if base else "-"
        best = f"{base['ms_per_step'] / r['ms_per_step_best']:.1f}x" if base else "-"
        lines.append(f"| {r['config']} | {r['batch']} | {r['atoms']} | {r['ms_per_step']:.2f} | "
                     f"{r['ms_per_step_best']:.2f} | {r['crystal_steps_per_s']:.0f} | {r['compile_s']:.1f} | "
                     f"{base['ms_per_step'] if base else '-'} | {ratio} | {best} |")
    return "\n".join(lines)


def scaling(args) -> list[dict]:
    """Crystal-steps/s against batch size (perov5, 5 atoms) and atoms (mp20 model, batch 16)."""
    results = []
    for batch in args.scaling_batches:
        results.append({"sweep": "batch", **bench("perov5", batch, 5, args.steps, args.scaling_warmup,
                                                   args.repeats)})
    for atoms in args.scaling_atoms:
        results.append({"sweep": "atoms", **bench("mp20", 16, atoms, args.steps, args.scaling_warmup,
                                                   args.repeats)})
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_b, ax_a) = plt.subplots(1, 2, figsize=(9, 3.5))
    by_batch = [r for r in results if r["sweep"] == "batch"]
    by_atoms = [r for r in results if r["sweep"] == "atoms"]
    ax_b.loglog([r["batch"] for r in by_batch], [r["crystal_steps_per_s"] for r in by_batch], "o-")
    ax_b.axhline(BASELINE["perov5"]["crystal_steps_per_s"], color="gray", ls="--", label="SPEC §8 baseline (B=128)")
    ax_b.set(xlabel="batch size", ylabel="crystal-steps / s", title="perov5 model, 5 atoms")
    ax_b.legend(fontsize=8)
    ax_a.loglog([r["atoms"] for r in by_atoms], [r["crystal_steps_per_s"] for r in by_atoms], "o-")
    ax_a.axhline(BASELINE["mp20"]["crystal_steps_per_s"], color="gray", ls="--", label="SPEC §8 baseline (20 atoms)")
    ax_a.set(xlabel="atoms per crystal", ylabel="crystal-steps / s", title="mp20 model, batch 16")
    ax_a.legend(fontsize=8)
    fig.tight_layout()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / "scaling.png", dpi=120)
    table = ["| sweep | model | batch | atoms | ms/step | crystal-steps/s | compile s | XLA MB | peak RSS MB | capacity (I, E) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        xla = "-" if r["xla_memory_bytes"] is None else f"{r['xla_memory_bytes'] / 2**20:.0f}"
        table.append(f"| {r['sweep']} | {r['config']} | {r['batch']} | {r['atoms']} | {r['ms_per_step']:.2f} | "
                     f"{r['crystal_steps_per_s']:.0f} | {r['compile_s']:.1f} | {xla} | {r['peak_rss_mb']:.0f} | "
                     f"{r['capacity']['max_images']}, {r['capacity']['max_edges']} |")
    (out / "scaling.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))
    return results


SETS: list[str] = []  # the command line's --set values, applied to every config a workload loads


def workload_config(name: str):
    """The named config with the command line's `--set section.key=value` applied (`SETS`)."""
    return with_sets(get_config(name), SETS)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workload", choices=sorted(BASELINE), action="append",
                   help="a SPEC §8 workload (repeatable; default both)")
    p.add_argument("--config", help="model config for a custom workload (with --batch, --atoms)")
    p.add_argument("--batch", type=int)
    p.add_argument("--atoms", type=int)
    p.add_argument("--steps", type=int, default=20, help="MALA steps per timed scan")
    p.add_argument("--warmup", type=int, default=300, help="annealing steps run before timing")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--max-images", type=int)
    p.add_argument("--edge-factor", type=float)
    p.add_argument("--chunk", type=int,
                   help="chains vmapped together; the batch runs as lax.map over such chunks "
                        "(default: the library's choice for the capacity; 0: one vmap)")
    p.add_argument("--scaling", action="store_true", help="batch and atom sweeps, <--out>/scaling.{png,md}")
    p.add_argument("--out", help="folder for the figures of --scaling (required with it)")
    p.add_argument("--scaling-batches", type=int, nargs="+", default=[1, 4, 16, 64, 128, 256, 512])
    p.add_argument("--scaling-atoms", type=int, nargs="+", default=[5, 10, 20, 30, 40, 52])
    p.add_argument("--scaling-warmup", type=int, default=100)
    p.add_argument("--profile", action="store_true",
                   help="time the parts of a step (with --config/--batch/--atoms, --max-images, --max-edges)")
    p.add_argument("--max-edges", type=int, default=352, help="pair-edge capacity for --profile")
    p.add_argument("--whole-chain", action="store_true",
                   help="a whole chain of the config's schedule, twice: ms per step and compilations")
    p.add_argument("--train", action="store_true",
                   help="training steps on real batches (with --config, default perov5), beside the "
                        "sampler on the same chains, per real atom-step, with compilations per step")
    p.add_argument("--train-steps", type=int, default=3, help="timed training steps for --train")
    p.add_argument("--train-warmup", type=int, default=1, help="untimed training steps before them")
    p.add_argument("--num-steps", type=int, help="MALA steps per training chain for --train, per "
                                                  "chain for --evaluation (default: the config's)")
    p.add_argument("--data-dir", help="dataset folder for --train and --evaluation (default: $CSP_JAX_DATA)")
    p.add_argument("--evaluation", metavar="MODEL",
                   help="the evaluation's chains of this trained model (a name or folder) on test "
                        "crystals, twice, beside the sampler (with --dataset, --limit, --num-samples, "
                        "--num-steps, --batch)")
    p.add_argument("--dataset", help="dataset for --evaluation (default: the model's)")
    p.add_argument("--limit", type=int, default=16, help="test crystals for --evaluation")
    p.add_argument("--num-samples", type=int, default=8, help="chains per crystal for --evaluation")
    p.add_argument("--json", help="write the results and the machine description here")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="set a value of the workloads' configs, e.g. sampler.segment_length=50 (repeatable)")
    args = p.parse_args(argv)
    SETS[:] = args.set

    info = machine()
    print(f"machine: {info['cpu']}, {info['cores']} cores, load {info['load_avg']}, "
          f"jax {info['jax']}, backend {info['backend']}", flush=True)
    if args.profile:
        result = profile(args.config or "perov5", args.batch or 128, args.atoms or 5,
                         args.max_images or 128, args.max_edges, args.repeats, chunk=args.chunk)
        if args.json:
            Path(args.json).write_text(json.dumps({"machine": info, "command": " ".join(sys.argv),
                                                   "profile": result}, indent=1))
        return
    if args.whole_chain or args.train or args.evaluation:
        if args.whole_chain:
            result = whole_chain(args.config or "perov5", args.batch or 128, args.atoms or 5)
        elif args.train:
            result = train_throughput(args.config or "perov5", args.train_steps, args.num_steps,
                                      args.data_dir, warmup=args.train_warmup)
        else:
            result = evaluation_throughput(args.evaluation, args.dataset, limit=args.limit,
                                           num_samples=args.num_samples, num_steps=args.num_steps,
                                           batch_size=args.batch, data_dir=args.data_dir)
        if args.json:
            Path(args.json).write_text(json.dumps({"machine": info, "command": " ".join(sys.argv),
                                                   "result": result}, indent=1))
        return
    if args.scaling:
        if not args.out:
            p.error("--scaling writes scaling.png and scaling.md: give the folder with --out")
        results = scaling(args)
    elif args.config:
        results = [bench(args.config, args.batch, args.atoms, args.steps, args.warmup, args.repeats,
                         max_images=args.max_images, edge_factor=args.edge_factor, chunk=args.chunk)]
    else:
        results = [bench(BASELINE[w]["config"], args.batch or BASELINE[w]["batch"],
                         args.atoms or BASELINE[w]["atoms"], args.steps, args.warmup, args.repeats,
                         max_images=args.max_images, edge_factor=args.edge_factor, chunk=args.chunk)
                   for w in (args.workload or sorted(BASELINE, reverse=True))]
    info = {**info, "load_avg": os.getloadavg()}
    print(compare(results, info))
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": info, "command": " ".join(sys.argv),
                                               "results": results}, indent=1))


if __name__ == "__main__":
    main()
