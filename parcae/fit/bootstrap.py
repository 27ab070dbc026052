"""Bootstrap replicates, run in parallel, with fixed seeds, and percentile intervals.

A :class:`Job` is one fit's bootstrap: a module-level replicate function, its payload and a
replicate count. All jobs of a table are cut into chunks and handed to one process pool at
once, so many small fits (one test-time curve per model) keep the workers as busy as one
large fit. Replicate ``i`` of a job always gets the seed ``(seed, i)``, so results do not
depend on the number of workers or the chunking. A batched job's function takes the list of
a chunk's generators and returns one result per generator (the log-sum-exp laws refit a
whole chunk at once, see :mod:`parcae.fit.batch`).

Workers end with the command: each asks the kernel for SIGKILL when its parent dies
(``PR_SET_PDEATHSIG`` on Linux), so killing the command, even with SIGKILL, leaves no
orphaned workers spinning on the cores.
"""

from __future__ import annotations

import ctypes
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from typing import Any

import numpy as np

#: replicate(payload, rng) -> parameter vector, or None when the replicate cannot be fitted;
#: for a batched job, replicate(payload, [rng, ...]) -> [vector or None, ...].
Replicate = Callable[[Any, Any], Any]

_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class Job:
    replicate: Replicate
    payload: Any
    n: int
    seed: int
    batched: bool = False


class Workers:
    """A lazily started pool of ``n`` worker processes, shared by all fits of a command.

    Inside ``with Workers(n)`` this process and every worker use one BLAS thread: L-BFGS-B
    calls BLAS on tiny arrays, and OpenBLAS threads spinning beside two busy processes on two
    cores slowed the fits several times over.
    """

    def __init__(self, n: int) -> None:
        self.n = n
        self._pool: ProcessPoolExecutor | None = None
        self._limits = None

    def map(self, fn: Callable[..., Any], *iterables: Sequence[Any], chunksize: int = 1
            ) -> list[Any]:
        """``list(map(fn, *iterables))``, over the workers when there are several."""
        if self.n <= 1 or len(iterables[0]) <= 1:
            return list(map(fn, *iterables))
        if self._pool is None:
            # fork: a spawned worker re-imports the caller's main module, which breaks
            # scripts without a ``__main__`` guard.
            self._pool = ProcessPoolExecutor(self.n, mp_context=get_context("fork"),
                                             initializer=_init_worker, initargs=(os.getpid(),))
        return list(self._pool.map(fn, *iterables, chunksize=chunksize))

    def __enter__(self) -> Workers:
        self._limits = _one_blas_thread()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        if self._limits is not None:
            self._limits.restore_original_limits()


def _init_worker(parent: int) -> None:
    _die_with_parent(parent)
    _one_blas_thread()


def _die_with_parent(parent: int) -> None:
    """Have the kernel SIGKILL this worker when its parent exits; poll where prctl is missing."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        ok = libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
    except (OSError, AttributeError):
        ok = False
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)
    if not ok:
        threading.Thread(target=_watch, args=(parent,), daemon=True).start()


def _watch(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


def _one_blas_thread() -> Any:
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional: only costs speed
        return None
    return threadpool_limits(1)


def run_jobs(jobs: Sequence[Job], workers: Workers) -> list[np.ndarray]:
    """For each job, its successful replicates as an array (n_ok, k); (0, 0) when none.

    Results are in replicate order whatever the number of workers.
    """
    chunks = _chunks(jobs, workers.n)
    results = workers.map(_run_chunk, *zip(*chunks, strict=True)) if chunks else []
    per_job: list[list[np.ndarray]] = [[] for _ in jobs]
    for (index, *_), values in zip(chunks, results, strict=True):
        per_job[index].extend(values)
    return [np.array(v) if v else np.empty((0, 0)) for v in per_job]


def _chunks(jobs: Sequence[Job], workers: int) -> list[tuple]:
    total = sum(j.n for j in jobs)
    # About four chunks per worker balances load without paying pickling per replicate.
    size = max(1, math.ceil(total / (4 * workers)))
    out = []
    for index, job in enumerate(jobs):
        for start in range(0, job.n, size):
            out.append((index, job.replicate, job.payload, job.seed,
                        range(start, min(start + size, job.n)), job.batched))
    return out


def _run_chunk(index: int, replicate: Replicate, payload: Any, seed: int, reps: range,
               batched: bool) -> list[np.ndarray]:
    rngs = [np.random.default_rng([seed, i]) for i in reps]
    values = replicate(payload, rngs) if batched else [replicate(payload, r) for r in rngs]
    return [np.asarray(v, dtype=float) for v in values
            if v is not None and np.all(np.isfinite(v))]


def resample_groups(groups: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Row indices of a bootstrap sample drawn by whole groups (runs) with replacement.

    ``groups`` holds integer codes 0..G-1 (``np.unique(..., return_inverse=True)``).
    """
    count = np.bincount(groups)
    if count.max() == 1:  # one row per group: plain row resampling
        return rng.integers(0, len(groups), len(groups))
    order = np.argsort(groups, kind="stable")
    first = np.concatenate([[0], np.cumsum(count)[:-1]])
    picked = rng.integers(0, len(count), len(count))
    sizes = count[picked]
    offsets = np.arange(sizes.sum()) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    return order[np.repeat(first[picked], sizes) + offsets]


def percentile_ci(samples: np.ndarray, names: Sequence[str]) -> dict[str, list[float]]:
    """95% percentile interval per named column; empty when there are no samples."""
    if samples.size == 0:
        return {}
    lo, hi = np.percentile(samples, [2.5, 97.5], axis=0)
    return {n: [float(a), float(b)] for n, a, b in zip(names, lo, hi, strict=True)}
