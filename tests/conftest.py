"""Every test writes under temporary folders only: one that leaves a new entry in the
repository's root or its ``reports/`` (an ``mlruns/`` of a default MLflow store, a stray
database, a sweep's reports) fails, naming it; caches go to a session temp folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: Caches Python and the tools write wherever they run.
_IGNORED = {"__pycache__", ".pytest_cache", ".ruff_cache", ".hypothesis"}


def _entries() -> set[str]:
    """Top-level names, and those in ``reports/``, where the CLIs write by default."""
    top = {p.name for p in ROOT.iterdir()} - _IGNORED
    reports = ROOT / "reports"
    return top | ({f"reports/{p.name}" for p in reports.iterdir()} if reports.is_dir() else set())


@pytest.fixture(autouse=True)
def _repo_root_untouched():
    before = _entries()
    yield
    new = sorted(_entries() - before)
    assert not new, (f"the test wrote {', '.join(new)} into the repository root {ROOT}; "
                     f"tests write under tmp_path only")


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """The measured device peak (parcae.peak) is cached under XDG_CACHE_HOME: keep the suite's
    out of the user's ~/.cache."""
    old = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if old is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = old
