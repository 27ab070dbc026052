"""Collecting trial outcomes into ``reports/<sweep>/`` as each trial ends (on the driver).

Layout (documented for people in ``reports/README.md``):

- ``runs.csv``: the run table, one row per finished trial (``parcae.runtable.COLUMNS``);
- ``test_time.csv``: long-form test-time curves (run_id, T, val_loss, val_accuracy);
- ``stability/<trial>.csv``: each trial's stability trace, one row per monitored step;
- ``sweep.json``: sweep name, grid file, MLflow parent run id and tracking URI.
"""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray import tune

from parcae.grid import StopRule, Trial
from parcae.runtable import append_row, append_test_time, read_rows
from parcae.tracking import client_for


@dataclass(frozen=True)
class Reports:
    """The files of one sweep's reports folder."""

    root: Path
    """``reports/<sweep name>/``."""

    @property
    def runs(self) -> Path:
        return self.root / "runs.csv"

    @property
    def test_time(self) -> Path:
        return self.root / "test_time.csv"

    @property
    def sweep(self) -> Path:
        return self.root / "sweep.json"

    def trace(self, key: str) -> Path:
        return self.root / "stability" / f"{key}.csv"

    def finished(self) -> set[str]:
        """Trial keys that already have a row (kept, never re-run)."""
        return {r["trial"] for r in read_rows(self.runs)} if self.runs.exists() else set()

    def read_sweep(self) -> dict[str, Any]:
        return json.loads(self.sweep.read_text()) if self.sweep.exists() else {}

    def write_sweep(self, info: dict[str, Any]) -> None:
        tmp = self.sweep.with_suffix(".tmp")
        tmp.write_text(json.dumps(info, indent=2))
        os.replace(tmp, self.sweep)


class DivergenceStopper(tune.Stopper):
    """Stops trials whose monitors report divergence, or that break the grid's stop rule."""

    def __init__(self, rule: StopRule) -> None:
        self.rule = rule
        self.reasons: dict[str, str] = {}

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        if result.get("diverged"):  # the trial's own monitors decided
            return True
        loss, norm = result.get("loss"), result.get("max_state_norm")
        reason = None
        if self.rule.max_loss is not None and loss is not None and not loss <= self.rule.max_loss:
            reason = f"loss {loss:.3g} above stop.max_loss"
        limit = self.rule.max_state_norm
        if limit is not None and norm is not None and not norm <= limit:
            reason = f"state norm {norm:.3g} above stop.max_state_norm"
        if reason:
            self.reasons[trial_id] = f"{reason} (step {result.get('step')})"
        return reason is not None

    def stop_all(self) -> bool:
        return False


#: Run-table columns taken from the monitor's summary (``StabilityMonitor.summary``).
STABILITY_CELLS = ("final_train_loss", "max_state_norm", "max_state_ratio", "final_rel_residual",
                   "rho_A", "lipschitz", "token_correlation", "diverged_step")


def _number(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


class Collector(tune.Callback):
    """Writes a trial's row, test-time curve and trace the moment it ends."""

    def __init__(self, reports: Reports, sweep: str, trials: dict[str, Trial],
                 stopper: DivergenceStopper, tracking_uri: str | None) -> None:
        self.reports, self.sweep, self.trials = reports, sweep, trials
        self.stopper, self.tracking_uri = stopper, tracking_uri
        self.written: dict[str, str] = {}

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        result = dict(trial.last_result or {})
        if not result.get("outcome"):  # stopped by the stop rule on a progress report
            reason = self.stopper.reasons.get(trial.trial_id, "stopped by the sweep")
            result = {"status": "diverged", "run_id": result.get("run_id"), "stability": {
                "max_state_norm": result.get("max_state_norm"),
                "diverged_step": result.get("step"), "diverged_rule": "stop_rule",
                "diverged_reason": f"stop_rule: {reason}"}}
        if result["status"] == "diverged":
            self._close_diverged(result)
        self._write(trial.config["key"], result)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        result = dict(trial.last_result or {})
        if not result.get("outcome") or result.get("status") != "failed":
            error = trial.get_error()
            result = {"run_id": result.get("run_id", ""),
                      "error": str(error).strip().splitlines()[-1] if error else "crashed"}
        result["status"] = "failed"
        self._write(trial.config["key"], result)

    def _close_diverged(self, result: dict[str, Any]) -> None:
        """The stopper may end a trial before it records itself: finish its MLflow run here."""
        if not (self.tracking_uri and result.get("run_id")):
            return
        client = client_for(self.tracking_uri)
        run_id = result["run_id"]
        client.set_tag(run_id, "status", "diverged")
        reason = (result.get("stability") or {}).get("diverged_reason")
        if reason:
            client.set_tag(run_id, "diverged_reason", str(reason))
        # the interrupted trainer marks its run FAILED; a diverged run is FINISHED, as in train_run
        client.set_terminated(run_id, "FINISHED")

    def _write(self, key: str, result: dict[str, Any]) -> None:
        stab = result.get("stability") or {}
        reason = stab.get("diverged_reason")
        if result["status"] == "failed":
            reason = (result.get("error") or "crashed").strip().splitlines()[0]
        run_id = result.get("run_id") or f"{self.sweep}/{key}"
        row = {
            "run_id": run_id, "sweep": self.sweep, "trial": key, "status": result["status"],
            **self.trials[key].plan.columns(),
            **{k: _number(result.get(k)) for k in ("val_loss", "val_accuracy", "baseline_loss")},
            "learned": result.get("learned"),
            **{k: _number(stab.get(k)) for k in STABILITY_CELLS},
            "diverged_rule": stab.get("diverged_rule"),
            "diverged_reason": reason, "train_seconds": result.get("train_seconds"),
        }
        # the curve and the trace first: a row means its trial is complete
        if result.get("test_time"):
            append_test_time(self.reports.test_time, run_id, dict(result["test_time"]),
                             dict(result.get("test_time_accuracy") or []))
        if result.get("trace"):
            write_trace(self.reports.trace(key), result["trace"])
        append_row(self.reports.runs, row)
        self.written[key] = result["status"]
        loss = "" if row["val_loss"] is None else f", val_loss {row['val_loss']:.4f}"
        print(f"parcae.sweep: [{len(self.written)}/{len(self.trials)}] {key}: {row['status']}"
              f"{loss}" + (f" ({reason})" if reason else ""), flush=True)


def write_trace(path: Path, trace: list[dict[str, float]]) -> None:
    """One row per monitored step; columns are the union of the figures measured."""
    columns = ["step", *sorted({k for r in trace for k in r} - {"step"})]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(trace)
    os.replace(tmp, path)
