"""``python -m parcae.train [CONFIG.yaml] [--set key=value ...] [--out DIR]``: one run.

With no arguments it trains the tiny preset on the embedded corpus and records it in
MLflow (experiment ``parcae-train`` unless tracking.experiment names another). Progress
(tokens, tokens/s, loss, ETA) goes to stderr; at the end stdout gets one JSON summary line,
stderr the result path, the MLflow run id and the command that opens the MLflow UI.
Exit codes: 0 ok, 1 the run diverged, collapsed or failed (its record is still written) or
its record could not be written, 2 bad input, an unwritable --out or an unreachable tracking
server (nothing was trained).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

# light imports only: --help and bad arguments answer before torch and MLflow load
from parcae.config import ConfigError
from parcae.tracking import TRAIN_EXPERIMENT, check_reachable, default_tracking_uri, open_hint

if TYPE_CHECKING:
    from parcae.run import Result, RunConfig


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m parcae.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?", type=Path, help="run config YAML (optional)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a config key, e.g. model.loops=8")
    parser.add_argument("--out", type=Path, help="folder for result.json")
    return parser.parse_args(argv)


def where(cfg: RunConfig, result: Result, out: Path | None) -> None:
    """Tell where the run's records are and how to open them."""
    if out is not None:
        print(f"parcae.train: result {out / 'result.json'}", file=sys.stderr)
    if not cfg.tracking.enabled:
        return
    uri = cfg.tracking.uri or default_tracking_uri()
    print(f"parcae.train: MLflow run {result.run_id} in experiment "
          f"'{cfg.tracking.experiment or TRAIN_EXPERIMENT}' at {uri}", file=sys.stderr)
    print(f"parcae.train: open it with: {open_hint(uri, result.run_id)}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from parcae import run
    from parcae.train_progress import TrainProgress

    try:
        cfg = run.load(args.config, tuple(args.overrides))
        if cfg.tracking.enabled:  # a dead server fails now, not after training
            check_reachable(cfg.tracking.uri or default_tracking_uri())
        progress = TrainProgress(f"parcae.train: {cfg.name}")
        result = run.train_run(cfg, args.out, callbacks=(progress,))
    except ConfigError as exc:
        if exc.source is None and args.config and not exc.key.startswith("--"):
            exc = ConfigError(exc.key, exc.message, str(args.config))
        print(f"parcae.train: bad input: {exc}", file=sys.stderr)
        return 2
    except run.RecordError as exc:
        print(f"parcae.train: {exc} (the run is in MLflow, marked FAILED)", file=sys.stderr)
        return 1
    summary = {"run_id": result.run_id, "status": result.status, "params": result.params,
               "tokens": result.tokens, "flops": result.flops, "val_loss": result.val_loss,
               "seconds": round(result.train_seconds, 1), "epochs": result.epochs,
               "flops_executed": result.flops_executed,
               "tokens_per_second": result.tokens_per_second, "mfu": result.mfu,
               **result.stability}
    print(json.dumps(summary, default=str))
    where(cfg, result, args.out)
    if result.error:
        print(result.error.splitlines()[0], file=sys.stderr)
    return 0 if result.status == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
