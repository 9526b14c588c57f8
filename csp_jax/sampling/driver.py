"""The host-side chain driver: every batch of chains in csp_jax runs here.

Training negatives, evaluation and prediction samples and the benchmark all
call `sample` (or `sample_rows`, which feeds it fixed-size batches). The driver

- runs a `Kernel` (`csp_jax.sampling.kernel`: the config's `sampler.kernel`,
  MALA by default) for a batch of chains from random starts, in
  jitted segments of the schedule, chains vmapped in chunks sized by the
  energy's declared cost (`chains_per_chunk`);
- checks the energy's overflow flags after every segment and re-runs an
  overflowing segment from its saved start with a grown capacity
  (`csp_jax.geometry.capacity.grow_until_no_overflow`),
  so a result never depends on a capacity that was too small;
- refits the capacity to the chains' needs between segments (chains need
  fewer neighbours as they settle, and the work is per edge of capacity);
- caches its compilations per (energy, kernel, reduce_fn, capacity) in the
  process, and in JAX's persistent cache across processes
  (`enable_compilation_cache`, under `csp_jax.files.cache_dir()/xla`).

Chain c of a batch uses `keys[c]` only: its random start from
`split(keys[c])[0]`, step k from `fold_in(split(keys[c])[1], k)`, so a chain's
result does not depend on the batch it runs in, up to float32 rounding of
other padded shapes.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from csp_jax.config import SamplerConfig
from csp_jax.energy.base import Energy
from csp_jax.files import cache_dir
from csp_jax.geometry.capacity import at_least, grow_until_no_overflow, largest_needs
from csp_jax.geometry.crystal import Crystal, bucket_for
from csp_jax.geometry.niggli import reduce_crystal
from csp_jax.progress import Progress
from csp_jax.sampling.devices import padded_rows, split_over_devices
from csp_jax.sampling.kernel import Kernel, KernelInfo, KernelState, kernel_from
from csp_jax.sampling.mala import annealing_schedule, random_crystal, run_chain

class Schedule(NamedTuple):
    """An annealing schedule of K steps: step_sizes [K] (alpha_k) and betas [K] (1 / T_k)."""

    step_sizes: Any
    betas: Any

    @property
    def num_steps(self) -> int:
        return int(np.shape(self.step_sizes)[0])


def schedule(sampler_config, num_steps: int | None = None) -> Schedule:
    """The `Schedule` of a `SamplerConfig`; K = `num_steps` or its own."""
    s = sampler_config
    return Schedule(*annealing_schedule(num_steps or s.num_steps, (s.step_size_start, s.step_size_end),
                                        (s.temperature_start, s.temperature_end)))


def enable_compilation_cache() -> None:
    """Keep XLA compilations in `<cache_dir()>/xla` (`csp_jax.files.cache_dir`), so a
    second process does not compile the same chains again."""
    jax.config.update("jax_compilation_cache_dir", str(cache_dir() / "xla"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def chains_per_chunk(energy: Energy, capacity) -> int:
    """Chains to vmap together: the largest power of two, at least 1, whose pair edges
    (chains x `capacity.max_edges`) stay within the energy's `edges_per_chunk`
    (its declared cost: 128 chains for perov5 at 5 atoms, 16 for mp20 at 20 atoms,
    with ContinuouSP's fused CPU pair convolution). A capacity without `max_edges` counts as
    one edge per chain."""
    target = max(1, energy.edges_per_chunk // getattr(capacity, "max_edges", 1))
    return 1 << (target.bit_length() - 1)


def chunked_vmap(fn: Callable, chunk: int) -> Callable:
    """`jax.vmap(fn)` over the leading axis, run as `lax.map` over chunks of chains.

    The per-chunk working set stays in cache (see docs/performance.md). The
    chunk holds gcd(batch, `chunk`) elements, so every batch size works;
    chunk c holds elements c, c + M, c + 2M, ... (M the number of chunks), so
    a batch split over devices along its leading axis stays split inside
    every chunk. `chunk <= 0`, or a batch not larger than it, runs as one vmap.
    """
    batched = jax.vmap(fn)

    def mapped(*args):
        size = jax.tree.leaves(args)[0].shape[0]
        if chunk <= 0 or size <= chunk:
            return batched(*args)
        num = size // math.gcd(size, chunk)
        split = lambda a: a.reshape((size // num, num) + a.shape[1:]).swapaxes(0, 1)  # noqa: E731
        merge = lambda a: a.swapaxes(0, 1).reshape((size,) + a.shape[2:])  # noqa: E731
        out = lax.map(lambda chunk_args: batched(*chunk_args), jax.tree.map(split, args))
        return jax.tree.map(merge, out)

    return mapped


def _energy_fn(energy: Energy, variables, capacity):
    return lambda crystal: energy.energy(variables, crystal, capacity)


# Programs kept per process, per kind (initialisation, segment). Each compiled CPU program
# holds its machine code in about 700 memory mappings (the mp20 model); Linux allows a
# process 65,530 by default (vm.max_map_count), which a training run that kept ~90 programs
# exhausted ("LLVM compilation error: Cannot allocate memory"). An evicted program comes
# back from the persistent compilation cache.
PROGRAMS_KEPT = 32


@functools.lru_cache(maxsize=PROGRAMS_KEPT)
def compiled_init(energy: Energy, kernel: Kernel, reduce_fn: Callable, capacity, chunk: int | None = None):
    """jit((variables, keys [B], species [B, N]) -> KernelState [B]): random starts, reduced and
    evaluated, in vmapped chunks of `chunk` chains (None: `chains_per_chunk`; 0: one vmap), the
    chains split over the local devices (`devices.split_over_devices`; B a multiple of their count)."""
    chunk = chains_per_chunk(energy, capacity) if chunk is None else chunk

    def chain_init(variables, keys, species):
        init_fn, _ = kernel(_energy_fn(energy, variables, capacity), reduce_fn)
        start = lambda key, s: init_fn(random_crystal(key, s, energy.rho0))  # noqa: E731
        return chunked_vmap(start, chunk)(keys, species)

    return jax.jit(split_over_devices(chain_init, (False, True, True), True))


@functools.lru_cache(maxsize=PROGRAMS_KEPT)
def compiled_segment(energy: Energy, kernel: Kernel, reduce_fn: Callable, capacity,
                     chunk: int | None = None):
    """jit((variables, keys [B], states [B], step_sizes [S], betas [S], first_step) ->
    (states [B], KernelInfo [B, S])): S steps of every chain, starting at schedule step
    `first_step`, in vmapped chunks of `chunk` chains (None: `chains_per_chunk`), the chains split
    over the local devices."""
    chunk = chains_per_chunk(energy, capacity) if chunk is None else chunk

    def chain_segment(variables, keys, states, step_sizes, betas, first_step):
        _, step_fn = kernel(_energy_fn(energy, variables, capacity), reduce_fn)

        def chain(key, state):
            state, info, _ = run_chain(key, state, step_fn, step_sizes, betas, first_step=first_step)
            return state, info

        return chunked_vmap(chain, chunk)(keys, states)

    return jax.jit(split_over_devices(chain_segment, (False, True, True, False, False, False), (True, True)))


_COMPILED = {"chain_init": 0, "chain_segment": 0}  # XLA compilations of the two programs above


def _count_compilation(event: str, seconds: float, fun_name: str = "", **_) -> None:
    name = fun_name.removeprefix("jit(").removesuffix(")")  # jax names them "jit(chain_init)"
    if event == "/jax/core/compile/backend_compile_duration" and name in _COMPILED:
        _COMPILED[name] += 1


jax.monitoring.register_event_duration_secs_listener(_count_compilation)


def compiled_chain_programs() -> int:
    """Chain programs (initialisations and segments) compiled so far in this process, one per
    (energy, kernel, capacity, batch shape); programs loaded from the persistent cache count too."""
    return sum(_COMPILED.values())


class SampleResult(NamedTuple):
    """Output of `sample`.

    states:              KernelState [B, ...], the final states.
    info:                KernelInfo [B, K] (numpy), every step of every chain.
    capacities:          the capacity each segment ran with, in order (the
                         `floors` of a later batch like this one).
    num_overflow_reruns: how many times a segment (or the initialisation) was
                         run again with a grown capacity.
    """

    states: KernelState
    info: KernelInfo
    capacities: tuple
    num_overflow_reruns: int

    @property
    def capacity(self):
        """The capacity the last segment ran with."""
        return self.capacities[-1]

    @property
    def start_capacity(self):
        """The capacity the first segment ran with (what random starts needed)."""
        return self.capacities[0]


def sample(keys, species, energy: Energy, variables, capacity, annealing: Schedule, *,
           segment_length: int = SamplerConfig.segment_length, kernel: Kernel | None = None,
           reduce_fn: Callable | None = None,
           refit: bool = True, floors: tuple = (), chunk: int | None = None) -> SampleResult:
    """Annealed chains from random starts for a batch of species vectors.

    keys: [B] PRNG keys, one per chain (e.g. `jax.random.split(key, B)`);
    species: [B, N] int (0 = padding); annealing: a `Schedule` (step_sizes [K], betas [K]);
    variables: the energy's (traced: new values do not recompile); capacity:
    the energy's starting capacity, grown on overflow and, with `refit`,
    fitted to the previous segment's needs before every later segment
    (`capacity.fit(*needs)`). floors: capacities per segment (an earlier
    batch's `SampleResult.capacities`): segment i runs at least at floors[i]
    (none past the end), so batches of one shape settle on one capacity per
    segment and compile nothing new. reduce_fn: None for Niggli + wrap. chunk:
    chains vmapped together (None: `chains_per_chunk`, the CPU-tuned choice).

    The chains are split over the local devices (`csp_jax.sampling.devices`: the
    states come back sharded along the chain axis, each device holding its rows).
    They run in segments of `segment_length` steps; a segment (or the
    initialisation) that overflowed is run again from its saved start states
    and keys with a grown capacity, so the result equals a run that had the
    final capacity from the start.
    """
    species = jnp.asarray(species, jnp.int32)
    step_sizes, betas = (jnp.asarray(a) for a in annealing)
    kernel = kernel_from() if kernel is None else kernel
    reduce_fn = reduce_crystal if reduce_fn is None else reduce_fn
    num_chains = species.shape[0]
    extra = padded_rows(num_chains) - num_chains  # copies of chain 0 so every device gets as many
    if extra:
        keys = jnp.concatenate([keys, jnp.repeat(keys[:1], extra, axis=0)])
        species = jnp.concatenate([species, jnp.repeat(species[:1], extra, axis=0)])
    split = jax.vmap(jax.random.split)(keys)
    init_keys, run_keys = split[:, 0], split[:, 1]

    def init_at(capacity):
        states = compiled_init(energy, kernel, reduce_fn, capacity, chunk)(variables, init_keys, species)
        return states, states.overflow, ()

    states, capacity, reruns = grow_until_no_overflow(init_at, at_least(capacity, floors[0] if floors else None),
                                                      "at initialisation")
    infos, capacities = [], []
    for start in range(0, step_sizes.shape[0], segment_length):
        stop = start + segment_length
        if infos and refit and hasattr(capacity, "fit"):
            needs = largest_needs(infos[-1].needs)
            capacity = capacity.fit(*needs) if needs else capacity
        if len(capacities) < len(floors):
            capacity = at_least(capacity, floors[len(capacities)])

        def segment_at(capacity, states=states, start=start, stop=stop):
            out = compiled_segment(energy, kernel, reduce_fn, capacity, chunk)(
                variables, run_keys, states, step_sizes[start:stop], betas[start:stop], start)
            return out, out[1].overflow, largest_needs(out[1].needs)

        (states, info), capacity, more = grow_until_no_overflow(
            segment_at, capacity, f"in the segment from step {start}")
        reruns += more
        capacities.append(capacity)
        infos.append(jax.device_get(info))
    info = jax.tree.map(lambda *a: np.concatenate(a, axis=1)[:num_chains], *infos)
    if extra:
        states = jax.tree.map(lambda a: a[:num_chains], states)
    return SampleResult(states, info, tuple(capacities), reruns)


def _pad_atoms(positions, num_atoms: int) -> np.ndarray:
    """positions [B, n, 3] padded with zeros to [B, num_atoms, 3]."""
    return np.pad(positions, ((0, 0), (0, num_atoms - positions.shape[1]), (0, 0)))


class Rows(NamedTuple):
    """Output of `sample_rows`: crystals (Crystal [M, N] numpy), energies [M] of the final
    states, overflow re-runs summed, the final capacity, the energy after every step
    ([M, K], with `trace`; else None) and the non-finite proposals rejected in the M chains."""

    crystals: Any
    energies: np.ndarray
    num_overflow_reruns: int
    capacity: Any
    trace: np.ndarray | None
    num_non_finite: int


def sample_rows(key, species, energy: Energy, variables, capacity, annealing: Schedule, *,
                batch_size: int, segment_length: int = SamplerConfig.segment_length,
                kernel: Kernel | None = None, refit: bool = True,
                first_row: int = 0, on_batch: Callable | None = None, trace: bool = False,
                log: Callable[[str], None] = print) -> Rows:
    """`sample` for many rows in fixed-size batches, with a progress line.

    species: [M, N] int. Row r (counting from `first_row`, so a long job can
    continue where it stopped) uses the key `fold_in(key, r)`. Rows run in
    batches of min(batch_size, M) chains; the last batch is filled up with
    copies of its first row (results dropped), so every batch has one shape.
    A batch runs at the bucket size of its largest cell (`bucket_for`, at
    most N), and its results are padded back to N: rows sorted by size make
    batches of small cells cheap.
    The capacity carries over from batch to batch; `refit` as in `sample`
    (False for a job of a batch or two: the capacity only grows, to a few
    values, instead of being compiled anew for most segments). After each batch,
    `on_batch(first row, crystals, energies, capacity, overflow re-runs,
    non-finite proposals)` is called with that batch's numpy results.
    """
    species = np.asarray(species, np.int32)
    num_rows = species.shape[0]
    batch = min(batch_size, num_rows)
    num_steps = Schedule(*annealing).num_steps
    crystals, energies, traces, reruns, non_finite = [], [], [], 0, 0
    progress = Progress(num_rows * num_steps, "sampling", unit="crystal-steps", log=log, unit_scale=True)
    for begin in range(0, num_rows, batch):
        rows = species[begin:begin + batch]
        filled = np.concatenate([rows, np.repeat(rows[:1], batch - len(rows), axis=0)])
        row_ids = first_row + begin + np.minimum(np.arange(batch), len(rows) - 1)
        keys = jax.vmap(lambda r: jax.random.fold_in(key, r))(jnp.asarray(row_ids))
        width = bucket_for(int(np.count_nonzero(filled, axis=1).max()), species.shape[1])
        result = sample(keys, filled[:, :width], energy, variables, capacity, annealing,
                        segment_length=min(segment_length, num_steps), kernel=kernel, refit=refit)
        capacity = result.capacity
        reruns += result.num_overflow_reruns
        batch_non_finite = int(np.sum(~result.info.finite[:len(rows)]))
        non_finite += batch_non_finite
        states = jax.device_get(result.states)
        crystal = states.crystal
        crystals.append(Crystal(rows, _pad_atoms(crystal.positions[:len(rows)], species.shape[1]),
                                crystal.lattice[:len(rows)]))
        energies.append(states.energy[:len(rows)])
        if trace:
            traces.append(result.info.energy[:len(rows)])
        if on_batch is not None:
            on_batch(first_row + begin, crystals[-1], energies[-1], capacity, result.num_overflow_reruns,
                     batch_non_finite)
        progress.update(len(rows) * num_steps, f"{begin + len(rows)}/{num_rows} chains, "
                                               f"overflow re-runs {reruns}"
                                               + (f", non-finite proposals {non_finite}" if non_finite else ""))
    progress.close()
    crystals = jax.tree.map(lambda *a: np.concatenate(a), *crystals)
    return Rows(crystals, np.concatenate(energies), reruns, capacity,
                np.concatenate(traces) if trace else None, non_finite)
