"""``python -m parcae.train [CONFIG.yaml] [--set key=value ...] [--out DIR]``: one run.

With no arguments it trains the tiny preset on the embedded corpus and records it in
MLflow. Exit codes: 0 ok, 1 the run diverged, collapsed or failed (its record is still
written) or its record could not be written, 2 bad input or an unwritable --out (nothing was
trained).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from parcae.config import ConfigError
from parcae.run import RecordError, load, train_run


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m parcae.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?", type=Path, help="run config YAML (optional)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a config key, e.g. model.loops=8")
    parser.add_argument("--out", type=Path, help="folder for result.json")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = load(args.config, tuple(args.overrides))
        result = train_run(cfg, args.out)
    except ConfigError as exc:
        if exc.source is None and args.config and not exc.key.startswith("--"):
            exc = ConfigError(exc.key, exc.message, str(args.config))
        print(f"parcae.train: bad input: {exc}", file=sys.stderr)
        return 2
    except RecordError as exc:
        print(f"parcae.train: {exc} (the run is in MLflow, marked FAILED)", file=sys.stderr)
        return 1
    summary = {"run_id": result.run_id, "status": result.status, "params": result.params,
               "tokens": result.tokens, "flops": result.flops, "val_loss": result.val_loss,
               "seconds": round(result.train_seconds, 1), **result.stability}
    print(json.dumps(summary, default=str))
    if result.error:
        print(result.error.splitlines()[0], file=sys.stderr)
    return 0 if result.status == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
