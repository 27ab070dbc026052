"""``python -m parcae.sweep GRID.yaml [--reports DIR] [--dry-run] [--rebuild] [--address ADDR]``.

Every point of the grid is one Ray Tune trial training through ``parcae.run.train_run``; the
sweep is an MLflow parent run and each trial a child; ``reports/<name>/`` collects a record
per trial and the run table as trials finish (``parcae.reports``). Re-running resumes: trials
with a row in ``runs.csv`` are kept. One sweep at a time writes a reports folder.

Without ``--address`` an embedded Ray sized to this machine runs the trials, on loopback and
with token authentication (``parcae.embedded``), and is shut down at the end. Exit codes: 0
every trial has its row (ok, diverged or failed), 1 some trial ended without one, 2 bad input
or the reports folder is in use (nothing was started).
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import os
import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

# light imports only: --help and bad arguments answer before torch, Ray and MLflow load
from parcae import embedded
from parcae.config import ConfigError, check_writable, load_yaml, to_dict
from parcae.progress import SweepProgress
from parcae.reports import Reports
from parcae.runtable import read_rows
from parcae.tracking import (
    DEFAULT_REPORTS,
    check_reachable,
    client_for,
    close_open_children,
    default_tracking_uri,
    experiment_id,
    open_hint,
)

if TYPE_CHECKING:
    from ray import tune

    from parcae.collect import Collector, DivergenceStopper
    from parcae.grid import GridConfig, Trial
    from parcae.run import RunConfig

#: Ray phones home and Tune writes its own result files unless told not to.
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1"}

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m parcae.sweep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("grid", type=Path, help="grid file (a Ray cluster YAML with "
                        "metadata.parcae)")
    parser.add_argument("--reports", type=Path, default=DEFAULT_REPORTS,
                        help="reports root; the sweep writes REPORTS/<name>/ (default: reports)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the expanded trials and total compute; start nothing")
    parser.add_argument("--rebuild", action="store_true",
                        help="write runs.csv, test_time.csv and the traces anew from the "
                             "trial records; train nothing")
    parser.add_argument("--address", help="join this Ray cluster ('auto' on a head node) "
                        "instead of starting an embedded one")
    return parser.parse_args(argv)


def print_plan(trials: list[Trial], done: set[str]) -> None:
    from parcae.grid import describe

    rows = describe(trials)
    print(f"{'trial':<44} {'N':>12} {'N_unrolled':>12} {'D':>12} {'mu':>3} {'C':>10} "
          f"{'steps':>7} {'epochs':>7}")
    for r in rows:
        mark = "  (done)" if r["trial"] in done else ""
        epochs = "-" if r["epochs"] is None else f"{r['epochs']:.3g}"  # -: generated task
        print(f"{r['trial']:<44} {r['params']:>12,} {r['params_unrolled']:>12,} "
              f"{r['tokens']:>12,} {r['loops']:>3} {r['flops']:>10.3g} {r['steps']:>7} "
              f"{epochs:>7}{mark}")
    total = sum(r["flops"] for r in rows)
    print(f"{len(rows)} trials ({len(done & {r['trial'] for r in rows})} done), "
          f"total compute {total:.3g} FLOPs")


def trial_table(trials: list[Trial]) -> str:
    from parcae.grid import describe

    rows = describe(trials)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def check_capacity(grid: GridConfig, cluster_yaml: dict[str, Any], nodes: list[dict]) -> None:
    """A trial that fits no node waits forever in Tune: refuse it before starting.

    A node type the cluster config declares counts too (the autoscaler can add it).
    """
    from parcae.grid import PREFIX

    declared = [t.get("resources") or {}
                for t in (cluster_yaml.get("available_node_types") or {}).values()]
    live = [n.get("Resources") or {} for n in nodes if n.get("Alive", True)]
    for name, need in (("CPU", grid.resources.cpus), ("GPU", grid.resources.gpus)):
        best = max((r.get(name, 0) for r in live + declared), default=0)
        if need > best:
            key = "cpus" if name == "CPU" else "gpus"
            raise ConfigError(f"{PREFIX}.resources.{key}",
                              f"each trial asks for {need:g} {name}s but no node of the cluster "
                              f"has more than {best:g}; allowed here: at most {best:g}")


def open_parent(grid: GridConfig, grid_path: Path, trials: list[Trial], reports: Reports,
                uri: str) -> str:
    """The sweep's MLflow parent run, in the experiment named after the sweep: reused from
    ``sweep.json`` on resume, else created."""
    from mlflow.exceptions import MlflowException

    from parcae.grid import fmt_value

    client = client_for(uri)
    old = reports.read_sweep()
    if old.get("parent_run_id") and old.get("tracking_uri") == uri:
        try:
            parent = client.get_run(old["parent_run_id"])
        except MlflowException:  # the store was reset: start a new parent
            parent = None
        if parent is not None:
            client.update_run(parent.info.run_id, status="RUNNING")
            # trials of a killed sweep never closed their runs; none runs now
            close_open_children(client, parent.info.run_id, "KILLED",
                                "the sweep running this trial was killed")
            return parent.info.run_id
    exp_id = experiment_id(client, trials[0].cfg.tracking.experiment or grid.name)
    tags = {"mlflow.runName": grid.name, "sweep": grid.name, "parcae.kind": "sweep"}
    run_id = client.create_run(exp_id, tags=tags).info.run_id
    client.log_artifact(run_id, str(grid_path))
    client.log_text(run_id, trial_table(trials), "trials.csv")
    client.log_dict(run_id, to_dict(grid), "grid.json")
    for name, values in grid.axes.items():
        client.log_param(run_id, f"axes.{name}", ",".join(map(fmt_value, values)))
    client.log_param(run_id, "trials", len(trials))
    return run_id


def trial_configs(grid: GridConfig, trials: list[Trial], uri: str | None,
                  parent: str | None) -> tuple[dict[str, RunConfig], dict[str, dict[str, str]]]:
    """What each trial runs: its config with threads, MLflow experiment and parent set and its
    short name (``mu4·C1.2e12``, the name of its MLflow run), and its tags."""
    from parcae.grid import axis_tags, run_name

    runs, tags = {}, {}
    for t in trials:
        cfg = replace(t.cfg, name=run_name(t.point) or grid.name)
        tracking = replace(cfg.tracking, uri=uri, parent_run_id=parent,
                           experiment=cfg.tracking.experiment or grid.name)
        train = replace(cfg.train, threads=grid.resources.threads,
                        devices=max(cfg.train.devices, grid.resources.devices))
        if grid.resources.gpus == 0 and train.device == "auto":
            train = replace(train, device="cpu")  # never take a GPU Ray gave to another trial
        runs[t.key] = replace(cfg, tracking=tracking, train=train)
        tags[t.key] = {"sweep": grid.name, "trial": t.key, **axis_tags(t.point)}
    return runs, tags


def run_tuner(grid: GridConfig, pending: list[Trial], runs: dict[str, RunConfig],
              tags: dict[str, dict[str, str]], callbacks: list[tune.Callback],
              stopper: DivergenceStopper, storage: Path) -> None:
    from ray import tune

    from parcae.trial import run_trial

    # longest first, so the last trials to start are short and the cores stay busy to the end
    keys = [t.key for t in sorted(pending, key=lambda t: -t.plan.flops)]
    ids = {k: f"{i:04d}" for i, k in enumerate(keys)}
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, runs=runs, tags=tags),
        {"cpu": grid.resources.cpus, "gpu": grid.resources.gpus})
    tuner = tune.Tuner(
        trainable,
        param_space={"key": tune.grid_search(keys)},
        tune_config=tune.TuneConfig(
            max_concurrent_trials=grid.concurrency, reuse_actors=True,
            trial_name_creator=lambda t: t.config["key"],
            trial_dirname_creator=lambda t: f"trial_{ids[t.config['key']]}_{t.trial_id}"),
        run_config=tune.RunConfig(
            name=f"{grid.name}-{time.strftime('%Y%m%d-%H%M%S')}",
            storage_path=str(storage.resolve()), stop=stopper, callbacks=callbacks,
            failure_config=tune.FailureConfig(max_failures=grid.retries), verbose=0))
    # Tune warns that it finds no metric files: its file loggers are off, the reports are ours
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    tuner.fit()


def run_sweep(grid: GridConfig, grid_path: Path, raw: dict[str, Any], trials: list[Trial],
              reports_root: Path, address: str | None) -> int:
    import torch

    reports = Reports(reports_root / grid.name)
    cpus, gpus = len(os.sched_getaffinity(0)), torch.cuda.device_count()
    if not address:  # before anything is created: a refused request leaves nothing behind
        check_capacity(grid, {}, [{"Resources": {"CPU": cpus, "GPU": gpus}}])
    tracking = trials[0].cfg.tracking
    server = tracking.uri or os.environ.get("MLFLOW_TRACKING_URI")
    if tracking.enabled and server:  # a dead server fails now, not as the first trial ends
        check_reachable(server)
    check_writable(reports.root, "--reports")
    with reports.lock() as took_over:
        if took_over:
            print(f"parcae.sweep: {reports.root}: {took_over}", flush=True)
        killed = embedded.reap_orphans(reports.ray_pids)
        if killed:
            print(f"parcae.sweep: stopped {len(killed)} processes left by the embedded Ray of "
                  f"an earlier sweep that was killed: PIDs {killed}", flush=True)
        for note in reports.reconcile():
            print(f"parcae.sweep: {note}", flush=True)
        # Ray's processes and Tune's trials inherit the driver's environment: give them the
        # part trials need only (no cloud credentials or other secrets)
        with embedded.scrubbed_environment():
            return _sweep(grid, grid_path, raw, trials, reports, reports_root, address,
                          (cpus, gpus))


def _sweep(grid: GridConfig, grid_path: Path, raw: dict[str, Any], trials: list[Trial],
           reports: Reports, reports_root: Path, address: str | None,
           machine: tuple[int, int]) -> int:
    import ray

    from parcae.collect import Collector, DivergenceStopper, PidRecorder

    done = reports.finished()
    pending = [t for t in trials if t.key not in done]
    tracking = trials[0].cfg.tracking
    uri = (tracking.uri or default_tracking_uri(reports_root)) if tracking.enabled else None
    print(f"parcae.sweep: {grid.name}: {len(trials)} trials, {len(trials) - len(pending)} "
          f"already finished, {len(pending)} to run; reports in {reports.root}", flush=True)
    parent, status, started = None, "FINISHED", time.perf_counter()
    reason = "its worker died before ending it; the trial was retried or recorded by the sweep"
    temp, collector = None, None
    try:
        if pending:
            for key, value in RAY_ENV.items():
                os.environ.setdefault(key, value)
            if address:
                ray.init(address=address, logging_level="WARNING")
                check_capacity(grid, raw, ray.nodes())
            else:
                temp = embedded.start(*machine)
                embedded.record_pids(reports.ray_pids, temp)
        if uri:
            parent = open_parent(grid, grid_path, trials, reports, uri)
        reports.write_sweep({"name": grid.name, "grid": str(grid_path.resolve()),
                             "parent_run_id": parent, "tracking_uri": uri,
                             "experiment": tracking.experiment or grid.name})
        if pending:
            runs, tags = trial_configs(grid, pending, uri, parent)
            stopper = DivergenceStopper(grid.stop)
            progress = SweepProgress(f"parcae.sweep: {grid.name}",
                                     {t.key: t.plan.flops for t in pending},
                                     earlier=len(trials) - len(pending))
            collector = Collector(reports, grid.name, {t.key: t for t in pending}, stopper, uri,
                                  progress)
            callbacks: list[tune.Callback] = [collector]
            if temp:
                callbacks.append(PidRecorder(reports, temp))
            # Tune's own state is not needed to resume (the records are): keep it private
            storage = temp / "tune" if temp else reports.root / "tune"
            run_tuner(grid, pending, runs, tags, callbacks, stopper, storage)
    except BaseException as exc:
        status, reason = "KILLED", f"the sweep was interrupted ({type(exc).__name__})"
        raise
    finally:
        if temp:
            embedded.stop(temp, reports.ray_pids)
        elif ray.is_initialized():
            ray.shutdown()
        if parent:
            client = client_for(uri)
            closed = close_open_children(client, parent, "KILLED" if status == "KILLED"
                                         else "FAILED", reason)
            if closed:
                print(f"parcae.sweep: closed {len(closed)} MLflow runs left open: {reason}",
                      flush=True)
            client.set_terminated(parent, status)
    code = summary(grid, trials, reports, started, collector)
    if uri:
        print(f"parcae.sweep: MLflow experiment '{tracking.experiment or grid.name}' at {uri}; "
              f"open it with: {open_hint(uri)}", flush=True)
    return code


def summary(grid: GridConfig, trials: list[Trial], reports: Reports, started: float,
            collector: Collector | None) -> int:
    """Print the outcome; 1 when some trial has no row (or only a spooled record)."""
    keys = {t.key for t in trials}
    rows = [r for r in read_rows(reports.runs) if r["trial"] in keys] if reports.runs.exists() \
        else []
    missing = sorted(keys - {r["trial"] for r in rows})
    counts = Counter(r["status"] for r in rows)
    print(f"parcae.sweep: {grid.name}: {dict(counts)} in {time.perf_counter() - started:.1f} s; "
          f"run table {reports.runs}", flush=True)
    spooled = collector.spooled if collector else {}
    if spooled:
        print(f"parcae.sweep: {len(spooled)} finished trials could not be written to "
              f"{reports.root} and are kept in {reports.spool}; run the sweep again once the "
              "folder is writable to write them (nothing is trained again)", file=sys.stderr)
    missing = [k for k in missing if k not in spooled]
    if missing:
        print(f"parcae.sweep: {len(missing)} trials ended without a row: {missing}",
              file=sys.stderr)
    return 1 if missing or spooled else 0


def rebuild(reports: Reports) -> int:
    if not reports.root.is_dir():
        raise ConfigError("--rebuild", f"no reports folder {reports.root}")
    check_writable(reports.root, "--reports")
    with reports.lock():
        for note in reports.rebuild():
            print(f"parcae.sweep: {note}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from parcae.grid import expand, parse_grid

    try:
        raw = load_yaml(args.grid)
        grid = parse_grid(raw, str(args.grid))
        trials = expand(grid, str(args.grid))
        if args.dry_run:
            print_plan(trials, Reports(args.reports / grid.name).finished())
            return 0
        if args.rebuild:
            return rebuild(Reports(args.reports / grid.name))
        return run_sweep(grid, args.grid, raw, trials, args.reports, args.address)
    except ConfigError as exc:
        if exc.source is None and not exc.key.startswith("--"):
            exc = ConfigError(exc.key, exc.message, str(args.grid))
        print(f"parcae.sweep: bad input: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
