"""Collecting trial outcomes into ``reports/<sweep>/`` as each trial ends (on the driver).

Each ending trial becomes a record (``parcae.reports``: row, test-time curve, stability
trace), saved before its row is appended. The collector never raises into Tune: an exception
there would count the finished trial as failed and train it again.
"""

from __future__ import annotations

import contextlib
import math
import time
import traceback
from pathlib import Path
from typing import Any

from ray import tune

from parcae import embedded
from parcae.grid import StopRule, Trial
from parcae.progress import SweepProgress
from parcae.reports import Reports
from parcae.runtable import MEASURED_CELLS
from parcae.tracking import client_for


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
    """Records a trial the moment it ends: its record, then its curve, trace and row."""

    def __init__(self, reports: Reports, sweep: str, trials: dict[str, Trial],
                 stopper: DivergenceStopper, tracking_uri: str | None,
                 progress: SweepProgress | None = None) -> None:
        self.reports, self.sweep, self.trials = reports, sweep, trials
        self.stopper, self.tracking_uri = stopper, tracking_uri
        self.progress = progress
        self.written: dict[str, str] = {}
        self.spooled: dict[str, str] = {}
        """Trials whose record went to the spool: the reports folder could not be written."""

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        if self.progress:
            self.progress.started(trial.config["key"])

    def on_step_end(self, iteration, trials, **info) -> None:
        if self.progress:  # Tune's loop turns many times a second; the line is throttled
            self.progress.tick()

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        result = dict(trial.last_result or {})
        if not result.get("outcome"):  # stopped by the stop rule on a progress report
            reason = self.stopper.reasons.get(trial.trial_id, "stopped by the sweep")
            result = {"status": "diverged", "run_id": result.get("run_id"), "stability": {
                "max_state_norm": result.get("max_state_norm"),
                "diverged_step": result.get("step"), "diverged_rule": "stop_rule",
                "diverged_reason": f"stop_rule: {reason}"}}
        if result["status"] == "diverged":
            self._guarded(self._close_diverged, result)
        self._guarded(self._write, trial.config["key"], result)
        # diverged trials stopped early: their wall time does not measure throughput
        self._finished(trial.config["key"], result["status"] in ("ok", "collapsed"))

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        result = dict(trial.last_result or {})
        if not result.get("outcome") or result.get("status") != "failed":
            error = trial.get_error()
            result = {"run_id": result.get("run_id", ""),
                      "error": str(error).strip().splitlines()[-1] if error else "crashed"}
        result["status"] = "failed"
        self._guarded(self._write, trial.config["key"], result)
        self._finished(trial.config["key"], False)

    def _finished(self, key: str, full_budget: bool) -> None:
        if self.progress:
            self._guarded(self.progress.finished, key, full_budget)

    @staticmethod
    def _guarded(step, *args) -> None:
        try:
            step(*args)
        except Exception:  # never into Tune (see the module doc); say what went wrong
            print(f"parcae.sweep: error while recording a trial:\n{traceback.format_exc()}",
                  flush=True)

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
            **{k: _number(result.get(k)) for k in MEASURED_CELLS},
        }
        record = {"row": row, "written": time.time(),
                  "test_time": result.get("test_time") or [],
                  "test_time_accuracy": result.get("test_time_accuracy") or [],
                  "trace": result.get("trace") or []}
        try:
            self.reports.save(key, record)
        except OSError as exc:
            path = self.reports.spool_record(key, record)
            self.spooled[key] = f"{exc.strerror or exc}"
            print(f"parcae.sweep: cannot write {self.reports.root} ({exc.strerror or exc}): "
                  f"the record of {key} is kept in {path} and written by the next run of this "
                  "sweep; the trial is not trained again", flush=True)
        self.written[key] = result["status"]
        loss = "" if row["val_loss"] is None else f", val_loss {row['val_loss']:.4f}"
        print(f"parcae.sweep: [{len(self.written)}/{len(self.trials)}] {key}: {row['status']}"
              f"{loss}" + (f" ({reason})" if reason else ""), flush=True)


class PidRecorder(tune.Callback):
    """Keeps the record of the embedded Ray's processes current as trials start workers."""

    def __init__(self, reports: Reports, temp: Path) -> None:
        self.reports, self.temp = reports, temp

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        with contextlib.suppress(OSError):
            embedded.record_pids(self.reports.ray_pids, self.temp)
