"""Matching sampled crystals against the ground truth (SPEC §5).

Every (ground truth, sample) pair gets exactly one outcome: `MATCH` (with the
normalised RMS displacement), `NO_MATCH`, `INVALID` (the sample is not a
physical crystal), `ERROR` (the matcher raised) or `TIMEOUT` (the matcher ran
past the per-pair time limit). Pairs are matched in parallel by a small pool of
worker processes; a worker whose pair runs past its deadline is killed and
replaced, so one pathological pair cannot hang the evaluation.

Benchmark the matching throughput on this machine with
`python experiments/bench_matching.py --dataset perov_5 --num 200`.
"""
from __future__ import annotations

import collections
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Callable, Sequence

from csp_jax.geometry.crystal import Crystal
from csp_jax.geometry.validity import valid_structure

MATCH, NO_MATCH, INVALID, ERROR, TIMEOUT = range(5)
OUTCOME_NAMES = ("match", "no_match", "invalid", "error", "timeout")

MATCHER_KWARGS = {"stol": 0.5, "angle_tol": 10, "ltol": 0.3}
STRICT_MATCHER_KWARGS = {"stol": 0.3, "angle_tol": 5, "ltol": 0.2}  # the stricter table


@dataclass(frozen=True)
class PairResult:
    """The outcome of one (ground truth, sample) pair.

    outcome: one of MATCH, NO_MATCH, INVALID, ERROR, TIMEOUT.
    rms:     normalised RMS displacement, NaN unless outcome == MATCH.
    message: what went wrong, for ERROR and TIMEOUT; empty otherwise.
    """

    outcome: int
    rms: float = math.nan
    message: str = ""


def match_pair(ground_truth, sample: Crystal, tolerances: dict = MATCHER_KWARGS) -> PairResult:
    """Match one sample against its ground truth.

    ground_truth: `pymatgen.core.Structure`; sample: unbatched `Crystal`.
    Uses `StructureMatcher(**tolerances).get_rms_dist(ground_truth, sample)`:
    None is NO_MATCH, element [0] is the RMS normalised by (V / n)^(1/3).
    """
    from pymatgen.analysis.structure_matcher import StructureMatcher

    structure = valid_structure(sample)
    if structure is None:
        return PairResult(INVALID)
    try:
        rms = StructureMatcher(**tolerances).get_rms_dist(ground_truth, structure)
    except Exception as error:  # noqa: BLE001 -- any matcher failure is an outcome
        return PairResult(ERROR, message=f"{type(error).__name__}: {error}")
    if rms is None:
        return PairResult(NO_MATCH)
    return PairResult(MATCH, float(rms[0]))


def match_pair_strict(ground_truth, sample: Crystal) -> PairResult:
    """`match_pair` at STRICT_MATCHER_KWARGS."""
    return match_pair(ground_truth, sample, STRICT_MATCHER_KWARGS)


def match_samples(first: Crystal, second: Crystal) -> PairResult:
    """Do two samples describe one structure (`match_pair` of one against the other)?
    INVALID when either is invalid."""
    structure = valid_structure(first)
    return PairResult(INVALID) if structure is None else match_pair(structure, second)


_WORKER_COMMAND = "from csp_jax.candidates.matching import _serve; _serve()"


def _serve() -> None:
    """Worker process main: receive `match_fn`, say ready, then answer pairs until EOF.

    Messages travel on stdin / stdout; stray prints are sent to stderr instead.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C
    inbox = Connection(os.dup(0), writable=False)
    outbox = Connection(os.dup(1), readable=False)
    os.dup2(2, 1)
    match_fn = inbox.recv()
    outbox.send(None)
    while True:
        try:
            pair = inbox.recv()
        except EOFError:
            return
        outbox.send(match_fn(*pair))


class _Worker:
    """One worker process, the pair it is working on and that pair's deadline.

    A fresh interpreter rather than a fork: the parent may run JAX threads, and
    no script needs a `__main__` guard to use the pool.
    """

    def __init__(self, match_fn):
        self.process = subprocess.Popen(
            [sys.executable, "-c", _WORKER_COMMAND], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(map(os.path.abspath, sys.path))})
        self.outbox = Connection(os.dup(self.process.stdin.fileno()), readable=False)
        self.inbox = Connection(os.dup(self.process.stdout.fileno()), writable=False)
        self.process.stdin.close()
        self.process.stdout.close()
        self.outbox.send(match_fn)
        self.started = False
        self.index = None
        self.deadline = math.inf

    def give(self, index: int, pair, timeout_s: float) -> None:
        self.index, self.deadline = index, time.monotonic() + timeout_s
        try:
            self.outbox.send(pair)
        except BrokenPipeError:
            pass  # the worker died: its inbox reports EOF next

    def finish(self) -> int:
        """Forget the current pair and return its index."""
        index, self.index, self.deadline = self.index, None, math.inf
        return index

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()
        self.inbox.close()
        self.outbox.close()


def match_pairs(
    pairs: Sequence[tuple[object, Crystal]],
    timeout_s: float,
    workers: int | None = None,
    match_fn: Callable[..., PairResult] = match_pair,
) -> list[PairResult]:
    """Match every (ground truth Structure, sample Crystal) pair in parallel.

    workers:   processes (default `os.cpu_count()`).
    timeout_s: per-pair limit, counted from when the worker receives the pair;
               a pair past it is recorded as TIMEOUT and its worker replaced.
    match_fn:  a module-level function `(ground_truth, sample) -> PairResult`
               of an importable module (not `__main__`); a worker that dies
               inside it records ERROR.
    Returns one `PairResult` per pair, in order.
    """
    if match_fn.__module__ == "__main__":
        raise ValueError("match_fn must live in an importable module, not __main__")
    pairs = list(pairs)
    results: list[PairResult | None] = [None] * len(pairs)
    queue = collections.deque(range(len(pairs)))
    live = [_Worker(match_fn)
            for _ in range(min(workers or os.cpu_count() or 1, len(pairs)))]

    def next_pair(worker: _Worker) -> None:
        if queue:
            i = queue.popleft()
            worker.give(i, pairs[i], timeout_s)
        else:
            worker.stop()
            live.remove(worker)

    def replace(worker: _Worker) -> None:
        worker.stop()
        live.remove(worker)
        if queue:
            live.append(_Worker(match_fn))

    try:
        while live:
            wait_s = min(w.deadline for w in live) - time.monotonic()
            by_inbox = {w.inbox: w for w in live}
            ready = wait(list(by_inbox), None if wait_s == math.inf else max(wait_s, 0))
            for inbox in ready:
                worker = by_inbox[inbox]
                try:
                    message = inbox.recv()
                except EOFError:
                    if not worker.started:
                        raise RuntimeError("a matching worker process failed to start")
                    results[worker.finish()] = PairResult(ERROR, message="worker process died")
                    replace(worker)
                    continue
                if worker.started:
                    results[worker.finish()] = message
                worker.started = True
                next_pair(worker)
            now = time.monotonic()
            for worker in [w for w in live if w.deadline <= now]:
                results[worker.finish()] = PairResult(TIMEOUT, message=f"exceeded {timeout_s} s")
                replace(worker)
    finally:
        for worker in live:
            worker.stop()
    return results
