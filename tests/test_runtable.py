"""reports/README.md documents exactly the run-table columns of parcae.runtable."""

from __future__ import annotations

import re
from pathlib import Path

from parcae.monitor import RULES
from parcae.runtable import COLUMNS, TEST_TIME_COLUMNS, append_row, append_test_time, read_rows

README = Path(__file__).parent.parent / "reports" / "README.md"


def test_readme_documents_every_column_with_the_same_meaning():
    text = README.read_text().split("## Run table columns", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([^`]+)` \| (.*) \|$", text, flags=re.M)
    documented = {name: meaning.replace("\\|", "|") for name, meaning in rows}
    assert list(documented) == list(COLUMNS)
    assert documented == COLUMNS


def test_readme_documents_the_test_time_columns_and_every_divergence_rule():
    text = README.read_text()
    tt = text.split("## Test-time table columns", 1)[1].split("\n## ", 1)[0]
    assert re.findall(r"^\| `([^`]+)` \|", tt, flags=re.M) == list(TEST_TIME_COLUMNS)
    rules = text.split("## Divergence, collapse and learning", 1)[1]
    assert re.findall(r"^\| `([^`]+)` \|", rules, flags=re.M) == [*RULES, "stop_rule"]


def test_rows_write_booleans_and_missing_values_as_the_readme_says(tmp_path):
    path = tmp_path / "runs.csv"
    append_row(path, {"run_id": "a", "learned": True, "val_accuracy": None,
                      "val_loss": float("nan")})
    append_test_time(tmp_path / "tt.csv", "a", {1: 2.0, 2: 1.5}, {2: 0.25})
    (row,) = read_rows(path)
    assert (row["learned"], row["val_accuracy"], row["val_loss"]) == ("true", "", "")
    tt = read_rows(tmp_path / "tt.csv")
    assert [(r["T"], r["val_accuracy"]) for r in tt] == [("1", ""), ("2", "0.25")]


def test_a_table_written_before_columns_were_added_gets_the_new_header(tmp_path):
    path = tmp_path / "runs.csv"
    old = [c for c in COLUMNS if c not in ("epochs", "flops_executed", "mfu")]
    path.write_text(",".join(old) + "\n" + ",".join("a" if c == "run_id" else "1.5"
                                                     if c == "flops" else "" for c in old)
                    + "\n")
    append_row(path, {"run_id": "b", "flops": 2.0, "flops_executed": 2.5, "mfu": 0.25})
    assert path.read_text().splitlines()[0] == ",".join(COLUMNS)
    first, second = read_rows(path)
    assert (first["run_id"], first["flops"], first["flops_executed"]) == ("a", "1.5", "")
    assert (second["run_id"], second["flops_executed"], second["mfu"]) == ("b", "2.5", "0.25")
