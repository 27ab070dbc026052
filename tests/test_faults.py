"""Faults and bad input, one test per case: nothing gets in, nothing finished is lost or doubled.

The slow tests share one sweep lifecycle on an embedded Ray: sweep A runs with secrets in its
environment and is inspected while it trains (its sockets, its processes' environments, its
token, a client without the token, a second sweep on the same folder), then SIGKILLed; sweep C
resumes it. Only loopback addresses are ever a target.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from mlflow import MlflowClient

from parcae import embedded
from parcae.config import ConfigError, load_yaml, parse_override
from parcae.grid import expand, parse_grid
from parcae.reports import Reports
from parcae.run import RecordError, resolve, train_run
from parcae.runtable import COLUMNS, append_row, read_rows
from parcae.sweep import main as sweep_main
from parcae.train import main as train_main

ROOT = Path(__file__).parent.parent
SECRET = "canary-7f3a9c"  # a value that must never reach a trial, a Ray process or a Ray log
GRID = {
    "cluster_name": "faults",
    "provider": {"type": "local", "head_ip": "127.0.0.1", "worker_ips": []},
    "metadata": {"parcae": {
        "name": "faults",
        "base": {"model": {"preset": "tiny", "loops": 2},
                 "data": {"source": "pydoc", "batch_size": 8, "seq_len": 64},
                 "train": {"tokens": 40000, "val_every": 20, "test_time_loops": [1, 2]},
                 "monitor": {"every": 5, "lipschitz_every": 20}},
        "axes": {"lr": [3.0e-3, 1.0e-3]},
        "resources": {"cpus": 1},
        "concurrency": 1,
        "retries": 1,
    }},
}
FAST = {"data": {"source": "pydoc", "seq_len": 32, "batch_size": 4},
        "train": {"tokens": 1280, "val_every": 5, "val_batches": 1, "log_every": 2},
        "monitor": {"every": 3, "lipschitz_every": 3}}


# --- helpers --------------------------------------------------------------------------------

def write_grid(folder: Path, **parcae) -> Path:
    grid = json.loads(json.dumps(GRID))
    grid["metadata"]["parcae"].update(parcae)
    path = folder / "faults.yaml"
    path.write_text(yaml.safe_dump(grid))
    return path


@contextlib.contextmanager
def read_only(folder: Path):
    """Make ``folder`` unwritable even for root (immutable), or skip where that is impossible."""
    if os.geteuid() == 0:
        done = subprocess.run(["chattr", "+i", str(folder)], capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot make a folder immutable here: {done.stderr.decode().strip()}")
        undo = ["chattr", "-i", str(folder)]
    else:
        folder.chmod(0o555)
        undo = ["chmod", "755", str(folder)]
    try:
        yield
    finally:
        subprocess.run(undo, check=True)


def row(key: str, **cells) -> dict:
    return {"run_id": f"id-{key}", "sweep": "faults", "trial": key, "status": "ok", **cells}


def record(key: str, written: float) -> dict:
    return {"row": row(key, val_loss=3.0), "written": written, "test_time": [[1, 3.5], [2, 3.0]],
            "test_time_accuracy": [], "trace": [{"step": 5, "state_norm_1": 1.0}]}


def _address(hexaddr: str) -> str:
    raw = bytes.fromhex(hexaddr)
    # /proc/net/tcp{,6} print each 32-bit word in host (little-endian) order
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    return socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, words)


def listening(pids: list[int]) -> list[tuple[int, str, int]]:
    """(pid, address, port) of every TCP socket these processes listen on (from /proc)."""
    found = []
    for pid in pids:
        try:
            inodes = {os.readlink(f"/proc/{pid}/fd/{fd}")[8:-1]
                      for fd in os.listdir(f"/proc/{pid}/fd")
                      if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:[")}
            tables = [Path(f"/proc/{pid}/net/{t}").read_text().splitlines()[1:]
                      for t in ("tcp", "tcp6")]
        except OSError:  # the process ended meanwhile
            continue
        for line in (x for table in tables for x in table):
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                host, port = fields[1].split(":")
                found.append((pid, _address(host), int(port, 16)))
    return found


def is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def sweep_cmd(grid: Path, reports: Path) -> list[str]:
    return [sys.executable, "-m", "parcae.sweep", str(grid), "--reports", str(reports)]


# --- the embedded Ray, its secrets and the lifecycle of a killed sweep (slow) ---------------

@pytest.fixture(scope="module")
def lifecycle(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("faults")
    # one trial long enough that the sweep is still training when it is killed, even on a
    # quiet machine where the checks below take longer than a short trial
    long_trial = {"match": {"lr": [1.0e-3]}, "set": {"train.tokens": 320000}}
    grid, reports = write_grid(tmp, overrides=[long_trial]), tmp / "reports"
    folder = Reports(reports / "faults")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "AWS_SECRET_ACCESS_KEY": SECRET,
           "PARCAE_TEST_PASSWORD": SECRET, "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    out: dict = {"reports": folder}
    a = subprocess.Popen(sweep_cmd(grid, reports), env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    recorded: dict = {}
    try:
        # wait until a trial trains: Ray's worker for it runs and the PIDs are recorded
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and a.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                recorded = json.loads(folder.ray_pids.read_text())
            tree = embedded.descendants(a.pid)
            names = [Path(f"/proc/{p}/cmdline").read_bytes()[:40] for p in tree if alive(p)]
            if recorded and any(n.startswith(b"ray::run_trial") or b"ImplicitFunc" in n
                                for n in names):
                break
            time.sleep(0.5)
        assert a.poll() is None, a.stdout.read()
        time.sleep(2)  # the trial's worker has started its servers
        tree = [a.pid, *embedded.descendants(a.pid)]
        out["sockets"] = listening(tree)
        out["environs"] = {}
        for pid in tree[1:]:
            with contextlib.suppress(OSError):
                out["environs"][pid] = Path(f"/proc/{pid}/environ").read_bytes()
        temp = Path(recorded["temp_dir"])
        out["temp_mode"] = stat.S_IMODE(temp.stat().st_mode)
        token = temp / "auth_token"
        out["token_mode"] = stat.S_IMODE(token.stat().st_mode)
        out["ray_sessions"] = list((temp / "ray").glob("session_*/logs"))
        out["logs_with_secret"] = [str(p) for p in temp.rglob("*") if p.is_file() and
                                   SECRET.encode() in p.read_bytes()]
        # a client without the token, on the GCS port (loopback only), and a second sweep
        # on the same folder, both while A trains
        gcs = [port for pid, _, port in out["sockets"]
               if b"gcs_server" in Path(f"/proc/{pid}/cmdline").read_bytes()]
        out["gcs_ports"] = gcs
        client_env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        # single-machine mode keeps the client's target 127.0.0.1 (else Ray swaps in the
        # machine's external address)
        client_env.update(HOME=str(tmp / "stranger"), RAY_USAGE_STATS_ENABLED="0",
                          RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
        code = ("import os, ray; ray.init(address='127.0.0.1:%d'); print('CONNECTED', "
                "ray.get(ray.remote(lambda: os.environ.get('AWS_SECRET_ACCESS_KEY')).remote()))")
        said = tmp / "client.txt"
        with said.open("w") as fh:
            client = subprocess.Popen([sys.executable, "-c", code % gcs[0]], env=client_env,
                                      stdout=fh, stderr=subprocess.STDOUT,
                                      start_new_session=True)
        second = subprocess.Popen(sweep_cmd(grid, reports), env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and client.poll() is None and not any(
                m in said.read_text() for m in ("Unauthenticated", "InvalidAuthToken")):
            time.sleep(0.5)
        if client.poll() is None:  # refused and retrying: stop it
            os.killpg(client.pid, signal.SIGKILL)
        client.wait()
        out["client"] = said.read_text()
        stdout, stderr = second.communicate(timeout=120)
        out["second"] = subprocess.CompletedProcess(second.args, second.returncode, stdout,
                                                    stderr)
        # SIGKILL A mid-trial; what its Ray leaves behind is stopped by the next sweep
        out["a_running"] = a.poll() is None
        a.send_signal(signal.SIGKILL)
        a.wait()
        out["a_output"] = a.stdout.read()
        out["rows_after_kill"] = read_rows(folder.runs) if folder.runs.exists() else []
        time.sleep(3)
        recorded = json.loads(folder.ray_pids.read_text())
        out["orphans"] = [pid for pid, _ in recorded["pids"] if alive(pid)]
        out["a_pid"] = a.pid
        out["c"] = subprocess.run(sweep_cmd(grid, reports), env=env, capture_output=True,
                                  text=True, timeout=600)
        out["orphans_after"] = [pid for pid in out["orphans"] if alive(pid)]
        out["rows"] = read_rows(folder.runs)
        yield out
    finally:
        if a.poll() is None:
            a.kill()
        # the last resort if a test failed midway: the recorded Ray processes of A, by PID
        if folder.ray_pids.exists():
            embedded.reap_orphans(folder.ray_pids)
        for pid, _ in recorded.get("pids", []):
            if alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
def test_embedded_ray_listens_on_loopback_only(lifecycle):
    sockets = lifecycle["sockets"]
    assert len(sockets) >= 3 and lifecycle["gcs_ports"]  # GCS, raylet, workers at least
    assert [s for s in sockets if not is_loopback(s[1])] == []


@pytest.mark.slow
def test_client_without_the_token_is_refused(lifecycle):
    said = lifecycle["client"]
    assert "CONNECTED" not in said and SECRET not in said
    assert "InvalidAuthToken" in said or "Unauthenticated" in said
    knocked = set(re.findall(r"\b(\d+\.\d+\.\d+\.\d+):\d+", said))
    assert knocked <= {"127.0.0.1"}  # it knocked on loopback only


@pytest.mark.slow
def test_token_and_ray_logs_are_the_users_alone(lifecycle):
    assert lifecycle["token_mode"] == 0o600
    assert lifecycle["temp_mode"] == 0o700  # Ray's own folder (0777) and its logs lie inside
    assert lifecycle["ray_sessions"]


@pytest.mark.slow
def test_no_secret_reaches_ray_processes_trials_or_logs(lifecycle):
    environs = lifecycle["environs"]
    assert len(environs) >= 3
    leaked = [pid for pid, text in environs.items() if SECRET.encode() in text]
    assert leaked == []
    assert lifecycle["logs_with_secret"] == []


@pytest.mark.slow
def test_second_sweep_on_the_folder_is_refused_naming_the_holder(lifecycle):
    second = lifecycle["second"]
    assert second.returncode == 2, second.stderr[-2000:]
    assert f"in use by the sweep of PID {lifecycle['a_pid']} on host {socket.gethostname()}" \
        in second.stderr


@pytest.mark.slow
def test_killed_sweeps_ray_is_stopped_by_the_next_sweep(lifecycle):
    c = lifecycle["c"]
    assert c.returncode == 0, c.stderr[-3000:]
    if lifecycle["orphans"]:
        assert "left by the embedded Ray of an earlier sweep" in c.stdout
    assert lifecycle["orphans_after"] == []
    assert f"took over the lock of the sweep of PID {lifecycle['a_pid']}" in c.stdout


@pytest.mark.slow
def test_resumed_sweep_has_each_trial_once_with_its_record(lifecycle):
    rows, folder = lifecycle["rows"], lifecycle["reports"]
    keys = [r["trial"] for r in rows]
    assert sorted(keys) == ["lr=0.001", "lr=0.003"]
    assert lifecycle["a_running"] and len(lifecycle["rows_after_kill"]) < 2  # A was cut short
    assert all(r in rows for r in lifecycle["rows_after_kill"])  # kept, not re-trained
    for key in keys:
        assert json.loads(folder.record(key).read_text())["row"]["trial"] == key


@pytest.mark.slow
def test_every_child_run_is_closed_with_a_reason(lifecycle):
    info = json.loads(lifecycle["reports"].sweep.read_text())
    client = MlflowClient(tracking_uri=info["tracking_uri"])
    parent = client.get_run(info["parent_run_id"])
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert parent.info.status == "FINISHED" and len(children) >= 2
    assert [c.info.run_id for c in children if c.info.status == "RUNNING"] == []
    for child in children:
        if child.info.status == "KILLED":  # the trial A was training when it was killed
            assert "killed" in child.data.tags["error"]
    assert {c.info.run_id for c in children if c.info.status == "FINISHED"} >= {
        r["run_id"] for r in lifecycle["rows"]}


# --- records, repair, rebuild, spool, lock (fast) -------------------------------------------

def test_partial_last_line_is_repaired_and_its_trial_reruns(tmp_path):
    reports = Reports(tmp_path / "faults")
    append_row(reports.runs, row("lr=0.003"))
    whole = reports.runs.read_bytes()
    with reports.runs.open("ab") as fh:  # a writer killed mid-row
        fh.write(b"id-x,faults,lr=0.001,o")
    assert reports.finished() == {"lr=0.003"}  # the fragment is no row
    notes = reports.reconcile()
    assert len(notes) == 1 and "partial last line" in notes[0]
    assert reports.runs.read_bytes() == whole
    append_row(reports.runs, row("lr=0.001"))  # the re-run's row is not glued to the fragment
    assert [r["trial"] for r in read_rows(reports.runs)] == ["lr=0.003", "lr=0.001"]


def test_record_without_a_row_gets_its_row_instead_of_a_rerun(tmp_path):
    reports = Reports(tmp_path / "faults")
    reports.save("lr=0.003", record("lr=0.003", 1.0))
    reports.runs.unlink()  # a crash after the record, before the row
    assert reports.reconcile() == ["wrote the row of lr=0.003 from its record"]
    assert reports.finished() == {"lr=0.003"}


def test_rebuild_writes_the_run_table_from_the_records(tmp_path):
    grid = write_grid(tmp_path)
    reports = Reports(tmp_path / "reports" / "faults")
    reports.save("lr=0.001", record("lr=0.001", 2.0))
    reports.save("lr=0.003", record("lr=0.003", 1.0))
    before = read_rows(reports.runs)
    reports.runs.write_text("garbage\n")
    reports.test_time.unlink()
    assert sweep_main([str(grid), "--reports", str(tmp_path / "reports"), "--rebuild"]) == 0
    rows = read_rows(reports.runs)
    assert list(rows[0]) == list(COLUMNS)
    assert sorted(map(json.dumps, rows)) == sorted(map(json.dumps, before))
    assert len(read_rows(reports.test_time)) == 4


def test_unwritable_reports_keep_the_record_and_never_retrain(tmp_path, monkeypatch, capsys):
    from parcae.collect import Collector, DivergenceStopper
    from parcae.trial import outcome

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    path = write_grid(tmp_path)
    grid = parse_grid(load_yaml(path), str(path))
    trials = {t.key: t for t in expand(grid, str(path))}
    reports = Reports(tmp_path / "reports" / "faults")
    reports.root.mkdir(parents=True)
    collector = Collector(reports, "faults", trials, DivergenceStopper(grid.stop), None)
    finished = outcome("failed", "run-1", error="RuntimeError: boom")
    with read_only(reports.root):
        collector._write("lr=0.003", finished)  # must not raise: Tune would retrain the trial
    assert "is kept in" in capsys.readouterr().out
    assert collector.spooled == {"lr=0.003": collector.spooled["lr=0.003"]}
    assert not reports.runs.exists() and list(reports.spool.glob("*.json"))
    # the next sweep writes the kept record and counts the trial as finished
    notes = reports.reconcile()
    assert any("moved the record of lr=0.003" in n for n in notes)
    assert reports.finished() == {"lr=0.003"}
    assert read_rows(reports.runs)[0]["diverged_reason"] == "RuntimeError: boom"
    assert not reports.spool.exists()


def test_stale_lock_of_a_dead_sweep_is_taken_over_with_a_message(tmp_path):
    reports = Reports(tmp_path / "faults")
    dead = subprocess.Popen(["true"])
    dead.wait()
    reports.root.mkdir()
    reports.lock_file.write_text(json.dumps({"pid": dead.pid, "host": "elsewhere"}))
    with reports.lock() as message:
        assert message and f"PID {dead.pid} on host elsewhere" in message
        held = json.loads(reports.lock_file.read_text())
        assert (held["pid"], held["host"]) == (os.getpid(), socket.gethostname())
    with reports.lock() as message:  # released cleanly: nothing to take over
        assert message is None


def test_held_lock_refuses_a_second_sweep(tmp_path):
    grid = write_grid(tmp_path)
    reports = Reports(tmp_path / "reports" / "faults")
    with reports.lock():
        proc = subprocess.run(sweep_cmd(grid, tmp_path / "reports"), capture_output=True,
                              text=True, timeout=120)
    assert proc.returncode == 2
    assert f"in use by the sweep of PID {os.getpid()}" in proc.stderr
    assert "Traceback" not in proc.stderr and not reports.runs.exists()


# --- environment and the cluster's MLflow (fast) --------------------------------------------

def test_trial_environment_withholds_secrets_and_restores_the_driver(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("GITHUB_TOKEN", SECRET)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    with embedded.scrubbed_environment() as withheld:
        assert SECRET not in os.environ.values()
        assert {"AWS_SECRET_ACCESS_KEY", "GITHUB_TOKEN"} <= set(withheld)
        assert os.environ["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:5000"
        assert "PATH" in os.environ
    assert os.environ["AWS_SECRET_ACCESS_KEY"] == SECRET


def test_cluster_mlflow_binds_the_private_address_with_basic_auth():
    for cluster in (ROOT / "grids" / "cluster").glob("*.yaml"):
        commands = yaml.safe_load(cluster.read_text())["head_setup_commands"]
        assert commands == ["bash ~/parcae/scripts/cluster_mlflow.sh start"], cluster
    script = (ROOT / "scripts" / "cluster_mlflow.sh").read_text()
    assert '--host "$host"' in script and "host=$(node_ip)" in script
    assert "get_node_ip_address" in script  # the head's private address, as Ray uses it
    assert "--app-name basic-auth" in script and "MLFLOW_AUTH_ADMIN_PASSWORD" in script


# --- outputs and bad input (fast) -----------------------------------------------------------

def test_unwritable_out_is_exit_2_before_training(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    started = time.monotonic()
    code = train_main(["--set", "tracking.enabled=false", "--set", "train.tokens=2000000",
                       "--out", str(blocker / "out")])
    assert code == 2 and time.monotonic() - started < 30  # refused, not trained for minutes
    err = capsys.readouterr().err
    assert "'--out'" in err and "cannot write" in err and len(err.strip().splitlines()) == 1


class FreezeOut(L.Callback):
    """The output folder becomes unwritable while the run trains."""

    def __init__(self, folder: Path, stack: contextlib.ExitStack) -> None:
        self.folder, self.stack = folder, stack

    def on_train_end(self, trainer, pl_module) -> None:
        self.stack.enter_context(read_only(self.folder))


def test_result_that_cannot_be_written_fails_the_mlflow_run(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = resolve({**FAST, "tracking": {"uri": uri, "experiment": "faults"}})
    out = tmp_path / "out"
    with contextlib.ExitStack() as stack, pytest.raises(RecordError, match="result.json"):
        train_run(cfg, out, callbacks=(FreezeOut(out, stack),))
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("faults").experiment_id
    (run,) = client.search_runs([exp])
    assert run.info.status == "FAILED" and "result.json" in run.data.tags["record_error"]
    assert run.data.tags["status"] in ("ok", "collapsed")  # it trained; only the record failed
    assert "result.json" in [a.path for a in client.list_artifacts(run.info.run_id)]


@pytest.mark.parametrize(("override", "key"), [
    ("train.lr=.inf", "train.lr"), ("train.beta1=2", "train.beta1"),
    ("train.flops=.inf", "train.flops"), ("train.flops=.nan", "train.flops"),
    ("train.beta2=-0.1", "train.beta2"), ("train.weight_decay=-1", "train.weight_decay"),
])
def test_non_finite_and_out_of_range_settings_are_exit_2(override, key, tmp_path, capsys):
    assert train_main(["--set", override, "--set", "tracking.enabled=false",
                       "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"'{key}'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flops", [[float("inf")], [float("nan")]])
@pytest.mark.parametrize("dry", [True, False])
def test_non_finite_grid_axis_is_exit_2_even_in_a_dry_run(flops, dry, tmp_path, capsys):
    grid = write_grid(tmp_path, axes={"flops": flops})
    args = [str(grid), "--reports", str(tmp_path / "reports"), *(["--dry-run"] if dry else [])]
    assert sweep_main(args) == 2
    err = capsys.readouterr().err
    assert "'metadata.parcae.axes.flops" in err and "finite" in err and str(grid) in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "reports").exists()


def test_yaml_error_is_one_line_with_file_line_and_column(tmp_path, capsys):
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  loops: 2\n  injection: [diagonal\ntrain: {}\n")
    with pytest.raises(ConfigError) as err:
        load_yaml(path)
    assert str(err.value).startswith(f"{path}:4:6: not valid YAML: ")
    assert train_main([str(path)]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_override_without_a_key_says_what_is_wrong(capsys):
    with pytest.raises(ConfigError, match="names no key"):
        parse_override("=3")
    assert train_main(["--set", "=3"]) == 2
    assert "'=3' names no key" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU here would grant the request")
def test_refused_gpu_request_leaves_no_reports_folder(tmp_path, capsys):
    grid = write_grid(tmp_path, resources={"cpus": 1, "gpus": 1})
    assert sweep_main([str(grid), "--reports", str(tmp_path / "reports")]) == 2
    assert "gpus" in capsys.readouterr().err
    assert not (tmp_path / "reports").exists()


def test_data_error_names_the_config_file(tmp_path, capsys):
    path = tmp_path / "run.yaml"
    path.write_text("data:\n  source: text\n  path: /nonexistent/corpus.txt\n")
    assert train_main([str(path), "--set", "tracking.enabled=false"]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "data.path" in err


def test_spool_is_outside_the_reports_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    reports = Reports(tmp_path / "reports" / "faults")
    assert reports.spool.is_relative_to(tmp_path / "cache")
    assert Reports(tmp_path / "other").spool != reports.spool


def test_readme_reliability_table_names_tests_that_exist():
    text = (ROOT / "README.md").read_text().split("### Reliability", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"`(test_\w+)`", text))
    sources = [Path(__file__), ROOT / "tests" / "test_fit_inputs.py"]
    defined = {name for path in sources
               for name in re.findall(r"^def (test_\w+)", path.read_text(), flags=re.M)}
    assert len(named) >= 15 and named <= defined
