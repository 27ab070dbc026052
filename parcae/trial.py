"""One sweep trial as a Ray Tune function trainable: ``parcae.run.train_run`` plus reporting.

A trial reports two kinds of results to Tune (see :func:`outcome`):

- progress, every stability measurement: ``loss``, ``max_state_norm``, ``step``;
- the outcome, once, when training returns: everything the run table needs (status, run id,
  losses, stability summary, trace). A diverged outcome makes the Tune stopper end the trial.

A run whose monitors declare divergence stops itself (and records itself, in MLflow too); the
stopper adds the grid's stop rule on the progress reports.

The driver, not the trial, writes reports: on a cluster trials run on other nodes.
A crash (``failed`` run or an exception) reports its outcome and then raises, so Tune retries it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from ray import tune

from parcae.monitor import StabilityMonitor, Verdict
from parcae.run import Result, RunConfig, train_run
from parcae.runtable import MEASURED_CELLS
from parcae.tracking import client_for


class TrialCrashed(RuntimeError):
    """Training raised or returned ``failed``; Tune retries the trial."""


def outcome(status: str, run_id: str, result: Result | None = None,
            error: str | None = None) -> dict[str, Any]:
    """The final report of a trial: what the driver turns into a run-table row.

    Test-time curves travel as (T, value) pairs: Tune's results take string keys only.
    """
    report = {"outcome": True, "status": status, "diverged": status == "diverged",
              "run_id": run_id, "error": error, "test_time": [], "test_time_accuracy": [],
              "stability": {}, "trace": [], "train_seconds": 0.0}
    if result is not None:
        report.update(
            val_loss=result.val_loss, val_accuracy=result.val_accuracy,
            baseline_loss=result.baseline_loss, learned=result.learned,
            test_time=sorted(result.test_time.items()),
            test_time_accuracy=sorted(result.test_time_accuracy.items()),
            stability=result.stability, trace=result.trace,
            train_seconds=result.train_seconds, error=result.error,
            **{k: getattr(result, k) for k in MEASURED_CELLS})
    return report


class TuneReporter(L.Callback):
    """Feeds the stability monitor's figures to Tune, where the sweep's stopper reads them.

    When Tune stops the trial, ``tune.report`` raises SystemExit in this thread; the reporter
    turns that into a divergence verdict so that training ends and records itself normally.
    """

    def __init__(self) -> None:
        self.seen = 0
        self.stopped = False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        monitor = next(c for c in trainer.callbacks if isinstance(c, StabilityMonitor))
        # a run its monitors declared diverged is already stopping; its outcome says so
        if self.stopped or monitor.diverged_step is not None or len(monitor.history) <= self.seen:
            return
        self.seen = len(monitor.history)
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        try:
            tune.report({"outcome": False, "diverged": False, "step": trainer.global_step,
                         "loss": float(loss), "run_id": getattr(trainer.logger, "run_id", ""),
                         "max_state_norm": monitor.history[-1]["max_state_norm"]})
        except SystemExit:
            self.stopped = True
            monitor.diverge(trainer, trainer.global_step,
                            Verdict("stop_rule", "stop_rule: stopped by the sweep's stop rule"))


def _close_orphans(cfg: RunConfig, key: str, error: str) -> str:
    """Mark this trial's still-open MLflow runs failed (training raised before recording).

    Returns the id of the run closed, if any.
    """
    if not (cfg.tracking.enabled and cfg.tracking.parent_run_id and cfg.tracking.uri):
        return ""
    client = client_for(cfg.tracking.uri)
    parent = client.get_run(cfg.tracking.parent_run_id)
    runs = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}' and "
                      f"tags.trial = '{key}' and attributes.status = 'RUNNING'")
    for run in runs:
        client.set_tag(run.info.run_id, "status", "failed")
        client.set_tag(run.info.run_id, "error", error[:4000])
        client.set_terminated(run.info.run_id, "FAILED")
    return runs[0].info.run_id if runs else ""


def run_trial(config: dict[str, Any], runs: dict[str, RunConfig],
              tags: dict[str, dict[str, str]]) -> None:
    """Tune entry point: ``config["key"]`` names the grid point in ``runs``."""
    key = config["key"]
    cfg = runs[key]
    reporter = TuneReporter()
    try:
        result: Result = train_run(cfg, out=Path.cwd() / "result", tags=tags[key],
                                   callbacks=(reporter,))
    except Exception as exc:  # recorded by the driver after the last retry
        error = f"{type(exc).__name__}: {exc}"
        run_id = _close_orphans(cfg, key, error)
        tune.report(outcome("failed", run_id, error=error))
        raise TrialCrashed(error) from exc
    if reporter.stopped:  # Tune has ended this trial; the driver records it
        return
    tune.report(outcome(result.status, result.run_id, result))
    if result.status == "failed":
        raise TrialCrashed((result.error or "").splitlines()[0] if result.error else "failed")
