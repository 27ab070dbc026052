"""Run a grid's sweep on a Ray cluster's head node.

    ray submit --start grids/loop_vs_data.yaml scripts/ray_submit_sweep.py [--dry-run]

`ray submit` copies this script alone to the head and runs it with python; the grid file is
there as ~/ray_bootstrap_config.yaml and parcae was installed by the grid's setup_commands.
Reports go to ~/reports/<name>/ on the head; MLflow to the server the head started on port
5000 of its private address (unless MLFLOW_TRACKING_URI is set), logging in with
~/.mlflow/credentials where its basic authentication is on (see the grid file).
"""

import os
import sys
from pathlib import Path

from parcae.sweep import main

if __name__ == "__main__":
    if "MLFLOW_TRACKING_URI" not in os.environ:
        import ray.util

        os.environ["MLFLOW_TRACKING_URI"] = f"http://{ray.util.get_node_ip_address()}:5000"
    grid = Path.home() / "ray_bootstrap_config.yaml"
    sys.exit(main([str(grid), "--address", "auto", "--reports", str(Path.home() / "reports"),
                   *sys.argv[1:]]))
