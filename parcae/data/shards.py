"""The folder ``python -m parcae.prepare`` writes, and ``data.source: tokens`` reads.

Layout: ``train-00000.bin``, ``train-00001.bin``, ..., ``val-00000.bin`` (raw little-endian
token ids of ``dtype``, read by memmap), ``unigram.npy`` (count of every id in the training
split, so a run's unigram baseline needs no pass over billions of tokens), ``tokenizer.json``,
and ``metadata.json`` (written last, so a folder without it is incomplete). Windows never
cross a shard boundary; documents inside a shard are separated by the separator token.
Opening a folder checks the shard sizes against the metadata, not every id.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from parcae.config import ConfigError

METADATA = "metadata.json"
"""Name of the metadata file in a prepared folder."""
TOKENIZER = "tokenizer.json"
"""Name of the tokenizer file in a prepared folder."""
UNIGRAM = "unigram.npy"
"""Name of the training split's token counts (int64, one per id) in a prepared folder."""
FORMAT = "parcae.tokens/1"
"""Value of the metadata's ``format`` key; bumped when the layout changes."""
SPLITS = ("train", "val")


def token_dtype(vocab: int) -> str:
    """Smallest unsigned dtype holding every id below ``vocab``."""
    return "uint16" if vocab <= 1 << 16 else "uint32"


def prepare_hint(folder: Path | str) -> str:
    """The command that makes ``folder``, for errors about a missing or incomplete one."""
    return f"python -m parcae.prepare YOUR_FILES --out {folder} --vocab-size 32768"


class ShardWriter:
    """Appends token ids to ``<split>-NNNNN.bin`` files of at most ``shard_tokens`` each."""

    def __init__(self, folder: Path, split: str, dtype: str, shard_tokens: int) -> None:
        self.folder, self.split, self.shard_tokens = folder, split, shard_tokens
        self.dtype = np.dtype(dtype)
        self.shards: list[dict[str, Any]] = []  # {"path", "tokens"}, the last one open
        self._file = None

    @property
    def tokens(self) -> int:
        return sum(s["tokens"] for s in self.shards)

    def write(self, ids: np.ndarray) -> None:
        ids = ids.astype(self.dtype, copy=False)
        while len(ids):
            if self._file is None or self.shards[-1]["tokens"] >= self.shard_tokens:
                self._open()
            room = self.shard_tokens - self.shards[-1]["tokens"]
            head, ids = ids[:room], ids[room:]
            head.tofile(self._file)
            self.shards[-1]["tokens"] += len(head)

    def _open(self) -> None:
        self.close()
        name = f"{self.split}-{len(self.shards):05d}.bin"
        self._file = (self.folder / name).open("wb")
        self.shards.append({"path": name, "tokens": 0})

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def write_metadata(folder: Path, meta: dict[str, Any]) -> Path:
    """Write ``metadata.json`` (atomically: a reader never sees half of it)."""
    path = folder / METADATA
    tmp = folder / f".{METADATA}.tmp"
    tmp.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def is_prepared(path: Path) -> bool:
    """True if ``path`` names a prepared folder (a folder, or its metadata file)."""
    return path.is_dir() or path.name == METADATA


@dataclass(frozen=True)
class Prepared:
    """A prepared folder, opened: shards memory-mapped, metadata checked."""

    folder: Path
    """The folder."""
    meta: dict[str, Any]
    """Its metadata.json."""
    train: list[np.ndarray]
    """Training shards (memmaps)."""
    val: list[np.ndarray]
    """Validation shards (memmaps)."""
    unigram: np.ndarray
    """Count of every id in the training split."""

    @property
    def vocab_size(self) -> int:
        return int(self.meta["vocab_size"])

    @property
    def tokenizer_path(self) -> Path:
        return self.folder / self.meta["tokenizer"]["path"]


def open_prepared(path: Path, source_file: str | None = None) -> Prepared:
    """Open a prepared folder (or its metadata file); problems are ConfigErrors on 'path'."""
    folder = path.parent if path.name == METADATA else path
    meta_path = folder / METADATA
    if not meta_path.is_file():
        raise ConfigError("path", f"no {METADATA} in {folder}: not a folder made by "
                          f"parcae.prepare (make one with: {prepare_hint(folder)})", source_file)
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError("path", f"cannot read {meta_path}: {exc}", source_file) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise ConfigError("path", f"{meta_path} has format {found!r}, expected {FORMAT!r}; "
                          "prepare the corpus again with this version", source_file)
    dtype = np.dtype(meta["dtype"])
    splits = {}
    for split in SPLITS:
        arrays = []
        for shard in meta["splits"][split]["shards"]:
            shard_path = folder / shard["path"]
            expected = shard["tokens"] * dtype.itemsize
            size = shard_path.stat().st_size if shard_path.is_file() else None
            if size != expected:
                found = "missing" if size is None else f"{size} bytes"
                raise ConfigError("path", f"{shard_path} is {found}, {meta_path} says "
                                  f"{expected} bytes; prepare the corpus again", source_file)
            if shard["tokens"]:
                arrays.append(np.memmap(shard_path, dtype=dtype, mode="r"))
        splits[split] = arrays
    try:
        unigram = np.load(folder / UNIGRAM, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ConfigError("path", f"cannot read {folder / UNIGRAM} ({exc}); prepare the "
                          "corpus again", source_file) from None
    if unigram.shape != (int(meta["vocab_size"]),):
        raise ConfigError("path", f"{folder / UNIGRAM} has shape {unigram.shape}, expected "
                          f"({meta['vocab_size']},); prepare the corpus again", source_file)
    return Prepared(folder, meta, splits["train"], splits["val"], unigram)
