"""Time the full default fit (all laws, bootstrap CIs, plots, report) of a 250-row table.

    .venv/bin/python benchmarks/fit_time.py

The table: 5 FLOP budgets x 10 loop counts x 5 seeds drawn from the unified law with 0.3%
noise, each run with an 8-point test-time curve (2000 rows), fitted with the default spec:
200 bootstrap replicates for every law, each test-time curve included. The same fit runs
twice in this process: with 2 worker processes (the default) and serially. Target: the
parallel fit under 60 s on 2 cores. The machine's load average is printed beside the times,
since other work on the same cores slows both.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np

from parcae.fit import FitSpec, fit_path
from parcae.fit.synthetic import sweep, write


def main() -> None:
    runs, curves = sweep(np.random.default_rng(0), np.geomspace(1e18, 1e20, 5),
                         (1, 2, 3, 4, 6, 8, 12, 16, 32, 64), 5, 0.003,
                         test_time=(1, 2, 4, 8, 16, 32, 64, 128))
    spec = FitSpec()
    with tempfile.TemporaryDirectory() as tmp:
        table = write(Path(tmp) / "bench", runs, curves)
        print(f"table: {len(runs)} runs, {len(curves)} test-time rows; "
              f"bootstrap n={spec.bootstrap.n}, test_time n={spec.test_time.bootstrap}")
        times = {}
        for workers in (spec.bootstrap.workers, 1):
            start = time.perf_counter()
            [outcome] = fit_path(table, spec, Path(tmp) / f"out{workers}", workers=workers,
                                 say=lambda _: None)
            times[workers] = time.perf_counter() - start
            print(f"workers={workers}: {times[workers]:.1f} s ({outcome.fitted} fits; load "
                  f"average {os.getloadavg()[0]:.1f})")
        parallel = times[spec.bootstrap.workers]
        print(f"serial / parallel = {times[1] / parallel:.2f}; "
              f"target < 60 s: {'met' if parallel < 60 else 'missed'}")


if __name__ == "__main__":
    main()
