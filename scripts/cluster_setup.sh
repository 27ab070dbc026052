#!/usr/bin/env bash
# Installs parcae on a cluster node from the checkout that file_mounts copied to ~/parcae
# (run by every cluster file's setup_commands):
#
#   bash ~/parcae/scripts/cluster_setup.sh EXTRA     # EXTRA: cluster (own machines), aws or gcp
#
# 1. torch at the version constraints.txt pins, built for the node's CUDA: the newest of
#    TORCH_CUDA_BUILDS not above the CUDA version `nvidia-smi` reports (an error if none is; the
#    CPU build without a GPU); TORCH_INDEX=<index URL> before the command picks the build instead;
# 2. parcae with the EXTRA from pyproject.toml, which pins Ray to the version your machine
#    installs with the same extra (the one that runs `ray up`), plus the cloud's client library.
# A node where parcae already imports from ~/parcae with that Ray is left as it is.
set -euo pipefail

EXTRA=${1:?usage: cluster_setup.sh cluster|aws|gcp}
TORCH_CUDA_BUILDS="130 128 126"  # CUDA builds of torch, newest first (download.pytorch.org)
cd ~/parcae

if python3 - "$EXTRA" <<'PY'
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

extra = sys.argv[1]
wants = tomllib.loads(Path("pyproject.toml").read_text())["project"]["optional-dependencies"]
pin = next(re.search(r"==([\w.]+)", r).group(1) for r in wants[extra] if r.startswith("ray["))
try:
    import parcae

    ray = importlib.metadata.version("ray")
except (ImportError, importlib.metadata.PackageNotFoundError) as e:
    sys.exit(f"cluster_setup: installing ({e})")
here = Path(parcae.__file__).resolve().parent == Path("parcae").resolve()
print(f"cluster_setup: parcae from {Path(parcae.__file__).parent}, ray {ray} (pinned {pin})")
sys.exit(0 if here and ray == pin else 1)
PY
then
  echo "cluster_setup: already installed; nothing to do"
  exit 0
fi

if [[ -z ${TORCH_INDEX:-} ]]; then
  TORCH_INDEX=https://download.pytorch.org/whl/cpu
  cuda=$( (nvidia-smi 2>/dev/null || true) |
    sed -n 's/.*CUDA Version: *\([0-9]*\)\.\([0-9]\).*/\1\2/p')  # 12.8 -> 128
  if [[ -n $cuda ]]; then
    TORCH_INDEX=
    for build in $TORCH_CUDA_BUILDS; do
      if (( build <= cuda )); then
        TORCH_INDEX=https://download.pytorch.org/whl/cu$build
        break
      fi
    done
    if [[ -z $TORCH_INDEX ]]; then
      echo "cluster_setup: the driver's CUDA ($cuda) is older than torch's builds" \
        "($TORCH_CUDA_BUILDS): update the driver or put TORCH_INDEX=<index URL> before" \
        "the command in setup_commands" >&2
      exit 1
    fi
  fi
fi
torch=$(sed -n 's/^torch==//p' constraints.txt)
echo "cluster_setup: torch $torch from $TORCH_INDEX"
python3 -m pip install -q -U pip
python3 -m pip install -q "torch==$torch" --index-url "$TORCH_INDEX"
python3 -m pip install -q -e ".[$EXTRA]"
