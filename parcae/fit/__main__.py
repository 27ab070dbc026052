"""``python -m parcae.fit PATH [--spec fits/X.yaml] [--out DIR] [--set key=value ...]``.

Exit status: 0 when at least one law was fitted, 2 when nothing could be fitted (every
problem is printed as one paragraph naming the file, column or law).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from parcae.config import ConfigError, parse_override


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m parcae.fit",
        description="Fit scaling laws and test-time laws to run tables, with bootstrap "
                    "confidence intervals, plots and a report.")
    parser.add_argument("path", type=Path,
                        help="reports folder (each sub-folder with a runs.csv is one table), "
                             "one such folder, or a CSV file")
    parser.add_argument("--spec", type=Path, default=None,
                        help="fit spec YAML (default: built-in, equal to fits/default.yaml)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default: next to each table)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a spec value, e.g. bootstrap.n=50")
    parser.add_argument("--workers", type=int, default=None,
                        help="bootstrap worker processes (default: the spec's bootstrap.workers)")
    args = parser.parse_args(argv)
    from parcae.fit import TableError, fit_path, load_spec  # numpy and scipy: after parsing

    try:
        spec = load_spec(args.spec, dict(parse_override(o) for o in args.overrides))
        outcomes = fit_path(args.path, spec, args.out, workers=args.workers,
                            spec_label=str(args.spec or "built-in defaults"))
    except (ConfigError, TableError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from parcae.fit import findings, summary

    for outcome in outcomes:  # what each table shows, in sentences (also atop report.md)
        if outcome.result is not None:
            print(summary.terminal(outcome.result.table.name, findings.of_fit(outcome.result)))
    if not any(o.fitted for o in outcomes):
        print("error: nothing could be fitted (see the messages above).", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
