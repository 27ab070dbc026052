"""The sweep's embedded Ray: loopback only, token-authenticated, a scrubbed environment.

A local ``ray.init`` otherwise listens on every interface, and whoever reaches a port can run
code in the sweep. Here every Ray process binds 127.0.0.1 (Ray's single-machine mode), Ray's
token authentication is on with a fresh token in a file only this user can read, Ray's logs
live in a private folder, and the processes Ray starts see only the environment variables
trials need (``trial_environment``): no cloud credentials or other secrets.

The PIDs of the Ray processes are recorded in the reports folder, so that the next sweep can
stop agents a SIGKILLed sweep left behind (``reap_orphans``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

#: Variables that trials and Ray need, by exact name or prefix; everything else is withheld.
TRIAL_ENV_NAMES = frozenset({
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "TZ", "TERM", "TMPDIR", "VIRTUAL_ENV",
    "PYTHONPATH", "PYTHONHASHSEED", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE",
    "LD_LIBRARY_PATH", "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE",
    "CUDA_VISIBLE_DEVICES", "DO_NOT_TRACK"})
TRIAL_ENV_PREFIXES = ("LC_", "RAY_", "MLFLOW_", "CUDA_", "NVIDIA_", "NCCL_", "TORCH_",
                      "PYTORCH_", "TRITON_", "OMP_", "MKL_", "OPENBLAS_", "KMP_", "XDG_")

#: Folder name prefix of an embedded Ray's private temp folder (logs, sockets, token).
TEMP_PREFIX = "parcae-ray-"


def trial_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The part of ``environ`` that trials may see (``TRIAL_ENV_NAMES``/``_PREFIXES``)."""
    return {k: v for k, v in environ.items()
            if k in TRIAL_ENV_NAMES or k.startswith(TRIAL_ENV_PREFIXES)}


@contextlib.contextmanager
def scrubbed_environment() -> Iterator[dict[str, str]]:
    """Within: ``os.environ`` holds only the trial environment; restored on exit.

    Ray's processes inherit the driver's environment, and Tune copies ``AWS_*`` from it into
    every trial's runtime environment (which Ray logs); both only ever see what is left here.
    Yields the variables withheld.
    """
    saved = dict(os.environ)
    withheld = {k: v for k, v in saved.items() if k not in trial_environment(saved)}
    for key in withheld:
        del os.environ[key]
    try:
        yield withheld
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _private_token(folder: Path) -> Path:
    path = folder / "auth_token"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_hex(32))
    return path


def start(cpus: int, gpus: int) -> Path:
    """Start the embedded Ray; returns its private folder (mode 0700: token, Ray's temp folder).

    Fails closed: if Ray came up on any address but loopback, it is shut down and an error
    raised.
    """
    import ray
    import ray._private.ray_constants as ray_constants

    temp = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX))  # mkdtemp makes it 0700
    # Ray starts a new local cluster with token auth only when RAY_AUTH_MODE is unset; the
    # token comes from this file (read by every Ray process) rather than ~/.ray/auth_token
    os.environ.pop("RAY_AUTH_MODE", None)
    os.environ["RAY_AUTH_TOKEN_PATH"] = str(_private_token(temp))
    # Ray's single-machine mode: the node address is 127.0.0.1 and its servers bind loopback
    # only. Ray reads the variable at import, so this process is told through the constant
    # and the processes it starts through the environment.
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    # Ray announces the token auth it turns on here; that is what this module is for
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(
        logging.ERROR)
    try:
        # Ray opens its own temp folder to everyone (0777); inside this 0700 one nobody
        # else can reach its logs and sockets
        ray.init(num_cpus=cpus, num_gpus=gpus, include_dashboard=False,
                 _temp_dir=str(temp / "ray"), logging_level="WARNING")
        address = ray.get_runtime_context().gcs_address
        if not address.startswith(("127.0.0.1:", "[::1]:")):
            raise RuntimeError(f"the embedded Ray came up on {address}, not on loopback")
    except BaseException:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)
        raise
    return temp


def stop(temp: Path, pid_file: Path) -> None:
    import ray

    ray.shutdown()
    shutil.rmtree(temp, ignore_errors=True)
    pid_file.unlink(missing_ok=True)


def _start_time(pid: int) -> int | None:
    """Clock ticks after boot at which ``pid`` started (tells a PID's reuse apart)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def descendants(root: int) -> list[int]:
    """PIDs of every process below ``root`` (from /proc; empty where there is none)."""
    children: dict[int, list[int]] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(proc.name))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def record_pids(pid_file: Path, temp: Path) -> None:
    """Write (PID, start time) of every process this sweep has started, with its host."""
    pids = [[pid, _start_time(pid)] for pid in descendants(os.getpid())]
    info = {"host": socket.gethostname(), "driver": os.getpid(), "temp_dir": str(temp),
            "pids": [p for p in pids if p[1] is not None]}
    tmp = pid_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(info))
    os.replace(tmp, pid_file)


def reap_orphans(pid_file: Path) -> list[int]:
    """Kill the recorded processes of an earlier sweep's embedded Ray that still run.

    Only processes on this host whose start time matches the record are touched (a reused
    PID belongs to someone else). Ray's agents ignore SIGTERM once orphaned: SIGKILL.
    Returns the PIDs killed.
    """
    try:
        info = json.loads(pid_file.read_text())
    except (OSError, ValueError):
        return []
    if info.get("host") != socket.gethostname():
        return []
    killed = []
    for pid, started in info.get("pids", []):
        if pid != os.getpid() and _start_time(pid) == started:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
    deadline = time.monotonic() + 10
    while any(_start_time(p) is not None for p in killed) and time.monotonic() < deadline:
        time.sleep(0.1)
    temp = Path(info.get("temp_dir") or "")
    if temp.name.startswith(TEMP_PREFIX):
        shutil.rmtree(temp, ignore_errors=True)
    pid_file.unlink(missing_ok=True)
    return killed
