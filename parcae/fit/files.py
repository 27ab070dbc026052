"""Writing output files so that a killed fit never leaves a partial one.

Each file is written to a temporary name in the same folder and renamed into place
(``os.replace`` is atomic on one file system): readers see the previous file or the new
one, never a 0-byte or truncated file.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np


@contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path``; renamed onto ``path`` when the block succeeds."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix,
                               dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path: Path, text: str) -> None:
    with replacing(path) as tmp:
        tmp.write_text(text)


def write_with(path: Path, writer: Callable[[Path], None]) -> None:
    """``writer(tmp)`` writes the file (e.g. ``savefig``); it then replaces ``path``."""
    with replacing(path) as tmp:
        writer(tmp)


def write_samples(path: Path, samples: dict[tuple[str, str], tuple[tuple[str, ...], np.ndarray]]
                  ) -> None:
    """bootstrap.npz: ``<law>|<subset>`` -> replicates (n, k), ``<law>|<subset>|names`` ->
    parameter names."""
    arrays: dict[str, np.ndarray] = {}
    for (law, subset), (names, values) in samples.items():
        arrays[f"{law}|{subset}"] = np.asarray(values, dtype=float)
        arrays[f"{law}|{subset}|names"] = np.array(names, dtype=str)
    with replacing(path) as tmp, tmp.open("wb") as fh:
        np.savez_compressed(fh, **arrays)
