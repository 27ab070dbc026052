"""The run table: one row per trial, the contract between sweeps and fits.

This module is the single home of the schema. ``reports/README.md`` documents the same
columns for people; `tests/test_runtable.py` keeps the two in step.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

#: Column name -> one-line meaning. Order is the order written to ``runs.csv``.
COLUMNS: dict[str, str] = {
    "run_id": "MLflow run id of the trial (or a stable local id when untracked)",
    "sweep": "name of the sweep the trial belongs to",
    "trial": "stable trial key derived from the grid point (used to resume)",
    "status": "ok | diverged | collapsed | failed (collapsed: trained to the end, did not "
              "learn, token correlation at or above monitor.collapse_correlation)",
    "seed": "random seed",
    "source": "data source: austen | pydoc | text | tokens | addition | phop",
    "preset": "model shape preset name",
    "injection": "diagonal | linear | add | none | baseline",
    "params": "unique non-embedding parameters N: every weight except the token embedding "
              "(tied to the LM head); the model has no value embeddings",
    "params_unrolled": "non-core parameters plus core parameters times loops (effective N)",
    "core_layers": "k: distinct blocks in the recurrent core (baseline: the k copied loops "
                   "times)",
    "loops": "mean training recurrence mu_rec (1 for baseline)",
    "effective_depth": "core-block applications per forward pass at T = loops: core_layers x "
                       "loops (baseline: core_layers x its configured loops, run once)",
    "depth_sampling": "poisson | fixed (loops = 1 and baseline are always fixed)",
    "backprop_depth": "loop steps with gradient mu_bwd",
    "tokens": "training tokens D",
    "epochs": "tokens / tokens of the training split (empty for generated tasks)",
    "flops": "training FLOPs C from parcae.compute: accounted, loop steps at their expectation "
             "under the depth sampling",
    "flops_executed": "training FLOPs the forward and backward passes ran (loop steps as "
                      "executed, under the scheme in force; empty if training crashed)",
    "val_loss": "validation loss (nats/token) at T = loops",
    "val_accuracy": "answer exact-match accuracy at T = loops, in [0, 1] (empty for corpora)",
    "baseline_loss": "loss (nats/token) of the unigram (corpora) or answer-position marginal "
                     "(tasks) predictor on the same validation batches",
    "learned": "true | false: val_loss < baseline_loss - monitor.learned_margin (empty "
               "without val_loss)",
    "final_train_loss": "mean training loss over the last monitor.final_window steps",
    "lr": "peak learning rate",
    "warmup": "warmup fraction of the steps",
    "grad_clip": "gradient-norm clip (0 = off)",
    "max_state_norm": "largest mean state norm ||h_t|| seen in training",
    "max_state_ratio": "largest ||h_T|| / ||e|| seen in training (state relative to the "
                       "injected input)",
    "final_rel_residual": "||h_T - h_{T-1}|| / ||h_T|| at the last monitored step",
    "rho_A": "spectral radius of the injection's linear part at the end",
    "lipschitz": "local Lipschitz estimate of the recurrent map at the end",
    "token_correlation": "token correlation of h_T at the last monitored step (1 = collapse)",
    "diverged_step": "optimizer step at which divergence was detected (empty if none)",
    "diverged_rule": "divergence rule that fired: geometric_growth | spectral_radius | "
                     "state_ratio | non_finite | state_norm_limit | loss_limit | stop_rule",
    "diverged_reason": "what the rule saw, with its numbers, or the error of a failed run",
    "train_seconds": "wall time spent training",
    "tokens_per_second": "training tokens per second after the warm-up steps, validation "
                         "and test-time evaluation excluded (all devices together)",
    "warmup_seconds": "seconds of the first training steps (compile and warm-up), excluded "
                      "from tokens_per_second",
    "mfu": "model FLOP utilisation: flops per token x tokens_per_second over the devices' "
           "measured peak matmul FLOP/s (parcae.peak)",
}

STATUSES = ("ok", "diverged", "collapsed", "failed")

#: Columns measured while a run trains (``parcae.run.Result`` fields of the same names), carried
#: from a trial's outcome to its row.
MEASURED_CELLS = ("flops_executed", "tokens_per_second", "warmup_seconds", "mfu")

#: Long-form test-time curves: one row per (run, test-time loop count).
TEST_TIME_COLUMNS = ("run_id", "T", "val_loss", "val_accuracy")


def _cell(value: object) -> object:
    if isinstance(value, bool):
        return str(value).lower()
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return value


def append_row(path: Path, row: Mapping[str, object]) -> None:
    """Append one row to a run table, writing the header for a new file.

    Each row is flushed and fsynced on its own so that a sweep killed later loses
    nothing that had finished.
    """
    unknown = set(row) - set(COLUMNS)
    if unknown:
        raise KeyError(f"run-table row has unknown columns {sorted(unknown)}")
    _append(path, list(COLUMNS), [row])


def append_test_time(path: Path, run_id: str, curve: Mapping[int, float],
                     accuracy: Mapping[int, float] | None = None) -> None:
    """One row per T: the loss and, for tasks, the answer accuracy (empty for corpora)."""
    accuracy = accuracy or {}
    rows = [{"run_id": run_id, "T": t, "val_loss": loss, "val_accuracy": accuracy.get(t)}
            for t, loss in sorted(curve.items())]
    _append(path, list(TEST_TIME_COLUMNS), rows)


def _append(path: Path, header: list[str], rows: Iterable[Mapping[str, object]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists() or path.stat().st_size == 0
    if not new and _header(path) != header:  # a table from before columns were added
        write_table(path, header, read_rows(path))
    with path.open("a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=header)
        if new:
            writer.writeheader()
        for row in rows:
            writer.writerow({k: _cell(row.get(k)) for k in header})
        fh.flush()
        os.fsync(fh.fileno())


def _header(path: Path) -> list[str]:
    with path.open(newline="") as fh:
        return next(csv.reader(fh), [])


def write_table(path: Path, header: list[str], rows: Iterable[Mapping[str, object]]) -> None:
    """Replace a whole table atomically (a crash leaves the old file or the new one)."""
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=header)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _cell(row.get(k)) for k in header})
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def complete_end(data: bytes) -> int:
    """Offset just past the last complete CSV record (newlines inside quotes do not count)."""
    end, quoted = 0, False
    for i, byte in enumerate(data):
        if byte == 0x22:  # '"': doubled quotes toggle twice
            quoted = not quoted
        elif byte == 0x0A and not quoted:
            end = i + 1
    return end


def repair_tail(path: Path) -> str | None:
    """Cut a partial last line (a write interrupted mid-row) off a table.

    Returns what was removed, for the caller's message, or None when the file was whole.
    """
    if not path.exists():
        return None
    data = path.read_bytes()
    end = complete_end(data)
    if end == len(data):
        return None
    with path.open("r+b") as fh:
        fh.truncate(end)
        fh.flush()
        os.fsync(fh.fileno())
    return data[end:].decode(errors="replace")


def read_rows(path: Path) -> list[dict[str, str]]:
    """Rows of a run table as strings; callers convert the columns they use.

    A partial last line (a writer killed mid-row) is not a row and is left out.
    """
    data = path.read_bytes()
    text = data[:complete_end(data)].decode()
    return list(csv.DictReader(io.StringIO(text, newline="")))
