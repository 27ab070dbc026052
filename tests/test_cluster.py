"""The cluster path as the README writes it, and the cluster files it uses.

The slow test runs `ray up` / `ray submit` / `ray rsync-down` / `ray down` with Ray's local
provider against an sshd on 127.0.0.1, all inside private namespaces (`unshare`): a network
namespace with only loopback up (so Ray advertises 127.0.0.1 and nothing else is reachable), a
PID namespace (so `ray stop` sees only this test's processes, and the kernel ends every one of
them when the test's process in it exits) and a mount namespace in which the home folder,
/tmp and /run are the test's own. It installs nothing: the "node" is this machine, whose python
already has parcae's requirements, so grids/cluster/local.yaml's setup command finds them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
CLUSTER_FILES = sorted((ROOT / "grids" / "cluster").glob("*.yaml"))
SHARED = ("file_mounts", "rsync_exclude", "head_setup_commands")
MLFLOW_PORT = 5000


def users_edits(key: Path) -> dict:
    """What the README tells a user of grids/cluster/local.yaml to edit: provider and auth."""
    return {"provider": {"type": "local", "head_ip": "127.0.0.1", "worker_ips": []},
            "auth": {"ssh_user": "root", "ssh_private_key": str(key)}}


TINY = {
    "cluster_name": "tiny",
    "provider": {"type": "local", "head_ip": "127.0.0.1", "worker_ips": []},
    "metadata": {"parcae": {
        "name": "tiny",
        "base": {"model": {"preset": "tiny"},
                 "data": {"source": "pydoc", "batch_size": 4, "seq_len": 32},
                 "train": {"tokens": 4096, "val_every": 8, "test_time_loops": [1, 2]},
                 "monitor": {"every": 4, "lipschitz_every": 8}},
        "axes": {"loops": [1, 2]},
        "resources": {"cpus": 1},
        "concurrency": 2,
    }},
}


# --- the cluster files (fast) ---------------------------------------------------------------

@pytest.mark.parametrize("path", CLUSTER_FILES, ids=lambda p: p.name)
def test_cluster_files_are_valid_ray_configs(path):
    from ray.autoscaler._private.util import fillout_defaults, validate_config

    validate_config(fillout_defaults(yaml.safe_load(path.read_text())))


def test_cluster_files_differ_only_in_the_machines():
    files = {p.stem: yaml.safe_load(p.read_text()) for p in CLUSTER_FILES}
    assert set(files) == {"aws", "gcp", "local"}
    for key in SHARED:
        assert len({json.dumps(f[key], sort_keys=True) for f in files.values()}) == 1, key
    extras = {"aws": "aws", "gcp": "gcp", "local": "cluster"}
    for name, data in files.items():
        assert data["setup_commands"] == [f"bash ~/parcae/scripts/cluster_setup.sh {extras[name]}"]
        assert data["provider"]["type"] == name


def test_the_nodes_ray_is_pinned_to_this_one():
    import ray

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    for extra in ("cluster", "aws", "gcp"):
        pins = [r for r in extras[extra] if r.startswith("ray[")]
        assert pins == [f"ray[default,tune]=={ray.__version__}"], extra


def test_submitted_sweep_fails_fast_on_an_unreachable_tracking_server(tmp_path):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        uri = f"http://127.0.0.1:{s.getsockname()[1]}"
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    env = {**os.environ, "HOME": str(tmp_path), "MLFLOW_TRACKING_URI": uri}
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "scripts/ray_submit_sweep.py",
                           str(tmp_path / "tiny.yaml")], capture_output=True, text=True,
                          timeout=120, env=env, cwd=ROOT)
    assert proc.returncode == 2 and time.monotonic() - started < 60, proc.stderr
    assert uri in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "reports" / "tiny" / "runs.csv").exists()


# --- the whole path (slow) ------------------------------------------------------------------

def missing_tools() -> str | None:
    if os.geteuid() != 0:
        return "needs root (sshd for root and unshare of the network, PID and mount namespaces)"
    tools = ["/usr/sbin/sshd", "ssh", "ssh-keygen", "rsync", "unshare", "ip", "mount"]
    absent = [t for t in tools if shutil.which(t) is None]
    if absent:
        return f"missing {', '.join(absent)} (Debian: openssh-server rsync util-linux iproute2)"
    if not Path("/mnt").is_dir():
        return "needs /mnt as a mount point"
    probe = subprocess.run(["unshare", "--net", "--mount", "--pid", "--fork", "true"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        return f"unshare refused private namespaces: {probe.stderr.strip()}"
    return None


@pytest.mark.slow
def test_ray_up_submit_rsync_down_and_down_on_loopback(tmp_path):
    reason = missing_tools()
    if reason:
        pytest.skip(reason)
    started = time.monotonic()
    proc = subprocess.run(
        # --kill-child: should this test time out, the namespace's first process dies, and the
        # kernel ends every process in the namespace with it
        ["unshare", "--net", "--mount", "--pid", "--fork", "--kill-child", "--mount-proc",
         "--propagation", "private", sys.executable, __file__, str(tmp_path)],
        capture_output=True, text=True, timeout=600, cwd=ROOT)
    log = (tmp_path / "log.txt").read_text() if (tmp_path / "log.txt").exists() else ""
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}\n{log[-6000:]}"
    found = json.loads((tmp_path / "found.json").read_text())
    print(f"cluster path: {time.monotonic() - started:.0f} s; steps {found['seconds']}")

    rows, children = found["rows"], found["children"]
    assert len(rows) == 2 and all(r["status"] == "ok" for r in rows), rows
    assert sorted(r["run_id"] for r in rows) == sorted(children)  # every row is its MLflow run
    assert found["parent_status"] == "FINISHED"
    assert found["artifacts"], "the copied store has no artifacts"
    assert found["mlflow_answered_before_down"] and not found["mlflow_answers_after_down"]
    assert found["left_running"] == [], found["left_running"]


# --- the body, run inside the namespaces ----------------------------------------------------

class Steps:
    """Runs the README's commands one by one, logging them and their time."""

    def __init__(self, work: Path) -> None:
        self.log = (work / "log.txt").open("a")
        self.seconds: dict[str, float] = {}

    def run(self, name: str, *argv: str, timeout: float) -> None:
        start = time.monotonic()
        self.log.write(f"\n$ {' '.join(argv)}\n")
        self.log.flush()
        subprocess.run(argv, stdout=self.log, stderr=subprocess.STDOUT, check=True,
                       timeout=timeout, cwd=ROOT)
        self.seconds[name] = round(time.monotonic() - start, 1)


def answers(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def private_machine(work: Path) -> Path:
    """Loopback up; this namespace's own home, /tmp and /run; returns the work folder's path."""
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    mnt = Path("/mnt")  # the work folder stays reachable here once /tmp is replaced
    subprocess.run(["mount", "--bind", str(work), str(mnt)], check=True)
    for folder in ("home", "tmp", "run"):
        (mnt / folder).mkdir()
    # a checkout or environment under /tmp (a clone into mktemp -d) stays at its path
    under_tmp = [p for p in (ROOT, Path(sys.prefix)) if Path("/tmp") in p.parents]
    kept = [p for p in under_tmp if not any(q in p.parents for q in under_tmp)]
    for i, path in enumerate(kept):
        (mnt / f"kept{i}").mkdir()
        subprocess.run(["mount", "--bind", str(path), str(mnt / f"kept{i}")], check=True)
    subprocess.run(["mount", "--bind", str(mnt / "tmp"), "/tmp"], check=True)
    for i, path in enumerate(kept):
        path.mkdir(parents=True)
        subprocess.run(["mount", "--bind", str(mnt / f"kept{i}"), str(path)], check=True)
    subprocess.run(["mount", "--bind", str(mnt / "run"), "/run"], check=True)
    # root's home is the work folder's (python itself may live in the real one)
    passwd = mnt / "passwd"
    passwd.write_text(re.sub(r"^(root:[^:]*:0:0:[^:]*:)[^:]*:", rf"\g<1>{mnt / 'home'}:",
                             Path("/etc/passwd").read_text(), flags=re.M))
    subprocess.run(["mount", "--bind", str(passwd), "/etc/passwd"], check=True)
    os.environ["HOME"] = str(mnt / "home")
    os.chmod(mnt / "tmp", 0o1777)
    return mnt


def start_sshd(work: Path) -> subprocess.Popen:
    home = Path.home()
    key = work / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(work / "host")],
                   check=True)
    (work / "authorized_keys").write_text(Path(f"{key}.pub").read_text())
    Path("/run/sshd").mkdir(mode=0o755)
    config = work / "sshd_config"
    config.write_text("\n".join([
        "Port 22", "ListenAddress 127.0.0.1", f"HostKey {work / 'host'}",
        f"PidFile {work / 'sshd.pid'}", f"AuthorizedKeysFile {work / 'authorized_keys'}",
        "PermitRootLogin prohibit-password", "PasswordAuthentication no",
        "KbdInteractiveAuthentication no", "UsePAM no", "StrictModes no",
        "Subsystem sftp internal-sftp", ""]))
    # the node's environment: this python's environment, parcae from the copied checkout
    venv = Path(sys.executable).parent
    (home / ".bashrc").write_text(f'export PATH="{venv}:$PATH" PYTHONPATH="$HOME/parcae"\n')
    sshd = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(config)],
                            stderr=(work / "sshd.log").open("w"))
    for _ in range(50):
        if answers(22):
            return sshd
        time.sleep(0.2)
    raise RuntimeError("sshd did not start; see sshd.log")


def others(sshd: int) -> list[str]:
    """Processes in this PID namespace besides this one and the sshd listener."""
    left = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) not in (os.getpid(), sshd):
            try:
                state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
                cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
            except OSError:  # ended meanwhile
                continue
            if state != "Z":  # ended, not yet reaped by this process (the namespace's init)
                left.append(f"{proc.name} {cmd[:160]}")
    return left


def inside(work: Path) -> None:
    work = private_machine(work)
    sshd = start_sshd(work)
    try:
        key = work / "id_ed25519"
        cluster = yaml.safe_load((ROOT / "grids" / "cluster" / "local.yaml").read_text())
        cluster.update(users_edits(key))
        (work / "cluster.yaml").write_text(yaml.safe_dump(cluster))
        (work / "tiny.yaml").write_text(yaml.safe_dump(TINY))
        steps, ray = Steps(work), str(Path(sys.executable).parent / "ray")
        cfg, reports = str(work / "cluster.yaml"), work / "reports" / "cluster"
        steps.run("up", ray, "up", "-y", cfg, timeout=240)
        steps.run("submit", ray, "submit", cfg, "scripts/ray_submit_sweep.py",
                  str(work / "tiny.yaml"), timeout=300)
        steps.run("mkdir", "mkdir", "-p", str(reports), timeout=10)
        steps.run("rsync-down", ray, "rsync-down", cfg, "~/reports/", f"{reports}/", timeout=60)
        before = answers(MLFLOW_PORT)
        steps.run("down", ray, "down", "-y", cfg, timeout=120)
        start = time.monotonic()
        while answers(MLFLOW_PORT) and time.monotonic() - start < 90:
            time.sleep(1)
        steps.seconds["mlflow stopped after down"] = round(time.monotonic() - start, 1)
        after = answers(MLFLOW_PORT)
        start = time.monotonic()
        while others(sshd.pid) and time.monotonic() - start < 30:  # ssh's shared connections linger
            time.sleep(1)
        found = {"seconds": steps.seconds, "mlflow_answered_before_down": before,
                 "mlflow_answers_after_down": after, "left_running": others(sshd.pid),
                 **copied_store(reports)}
        (work / "found.json").write_text(json.dumps(found, indent=1))
    finally:
        sshd.terminate()
        sshd.wait(10)


def copied_store(reports: Path) -> dict:
    """The run table and what the copied MLflow store holds for the sweep."""
    import csv

    from mlflow import MlflowClient

    rows = list(csv.DictReader((reports / "tiny" / "runs.csv").open()))
    sweep = json.loads((reports / "tiny" / "sweep.json").read_text())
    client = MlflowClient(tracking_uri=f"sqlite:///{reports / 'mlflow.db'}")
    parent = client.get_run(sweep["parent_run_id"])
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    artifacts = [p for p in (reports / "mlartifacts").rglob("*") if p.is_file()]
    return {"rows": [{"run_id": r["run_id"], "status": r["status"]} for r in rows],
            "children": [c.info.run_id for c in children], "parent_status": parent.info.status,
            "artifacts": [str(p.relative_to(reports)) for p in artifacts][:5]}


if __name__ == "__main__":
    inside(Path(sys.argv[1]))
