"""reports/README.md documents exactly the run-table columns of parcae.runtable."""

from __future__ import annotations

import re
from pathlib import Path

from parcae.runtable import COLUMNS

README = Path(__file__).parent.parent / "reports" / "README.md"


def test_readme_documents_every_column_with_the_same_meaning():
    text = README.read_text().split("## Run table columns", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([^`]+)` \| (.*) \|$", text, flags=re.M)
    documented = {name: meaning.replace("\\|", "|") for name, meaning in rows}
    assert list(documented) == list(COLUMNS)
    assert documented == COLUMNS
