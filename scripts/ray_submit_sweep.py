"""Run a grid's sweep on a Ray cluster's head node.

    ray submit grids/cluster/aws.yaml scripts/ray_submit_sweep.py grids/loop_vs_data.yaml

(add --dry-run to see the plan.) `ray submit` copies this script alone to the head and runs it
with python. The grid is read
from the checkout that file_mounts copied to ~/parcae (a relative path is taken from there;
without one, the cluster file itself, ~/ray_bootstrap_config.yaml, must hold the sweep under
metadata.parcae). Reports go to ~/reports/<name>/ on the head; MLflow to the server
scripts/cluster_mlflow.sh started on port 5000 of the head's private address (unless
MLFLOW_TRACKING_URI is set), logging in with ~/.mlflow/credentials where its basic
authentication is on.
"""

import os
import sys
from pathlib import Path

from parcae.sweep import main

if __name__ == "__main__":
    if "MLFLOW_TRACKING_URI" not in os.environ:
        import ray.util

        os.environ["MLFLOW_TRACKING_URI"] = f"http://{ray.util.get_node_ip_address()}:5000"
    args = sys.argv[1:]
    if args and not args[0].startswith("-"):
        grid = Path.home() / "parcae" / args.pop(0)  # an absolute path stays as it is
    else:
        grid = Path.home() / "ray_bootstrap_config.yaml"
    sys.exit(main([str(grid), "--address", "auto", "--reports", str(Path.home() / "reports"),
                   *args]))
