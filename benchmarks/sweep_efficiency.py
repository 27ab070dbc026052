"""Parallel efficiency of a whole sweep on this machine.

    python benchmarks/sweep_efficiency.py [GRID.yaml]        # default grids/smoke.yaml

Runs the sweep into a temporary reports folder (nothing of reports/ is touched) and prints
efficiency = (sum of trial training times) / (cores x sweep wall time): the share of the
machine spent training, after Ray's start-up, trial set-up, evaluation and MLflow recording.
Target for grids/smoke.yaml on 2 cores: >= 0.75.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from parcae.runtable import read_rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("grid", nargs="?", type=Path, default=Path("grids/smoke.yaml"))
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory(prefix="parcae-bench-") as tmp:
        env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
        started = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "parcae.sweep", str(args.grid),
                               "--reports", tmp], env=env, capture_output=True, text=True)
        wall = time.perf_counter() - started
        if proc.returncode != 0:
            print(proc.stdout[-2000:], proc.stderr[-4000:], sep="\n", file=sys.stderr)
            return proc.returncode
        runs = next(Path(tmp).glob("*/runs.csv"))
        rows = read_rows(runs)
    train = sum(float(r["train_seconds"] or 0) for r in rows)
    statuses = sorted({r["status"] for r in rows})
    print(f"grid            {args.grid}")
    print(f"trials          {len(rows)} ({', '.join(statuses)})")
    print(f"sum train time  {train:.1f} s")
    print(f"cores           {cores}")
    print(f"sweep wall time {wall:.1f} s")
    print(f"efficiency      {train / (cores * wall):.3f}   (target >= 0.75)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
