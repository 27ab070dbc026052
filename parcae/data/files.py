"""A user's own data: UTF-8 text files (tokenized bytewise), token folders made by
``python -m parcae.prepare``, and pre-tokenized token files.

Every problem is a ConfigError naming the config key ('path', 'vocab_size', ...) and the file,
so the CLI can print ``data.path: file not found: /x/y`` and exit 2.
"""

from __future__ import annotations

import glob
from pathlib import Path

import numpy as np
from torch import Tensor

from parcae.config import ConfigError
from parcae.data.bpe import load_tokenizer
from parcae.data.corpus import BYTE_VOCAB, WindowSource, split_tail
from parcae.data.shards import METADATA, Prepared, is_prepared, open_prepared, prepare_hint

TOKEN_DTYPES = {"uint16": np.uint16, "uint32": np.uint32}
"""``token_dtype`` name -> numpy dtype of raw ``.bin`` token files."""
_MAX_CHUNK = 1 << 26  # tokens per chunk when scanning a memmap for its largest id


def resolve_paths(pattern: str, source_file: str | None) -> list[Path]:
    """A path or a glob -> sorted existing files; sorted so splits are deterministic."""
    if glob.has_magic(pattern):
        paths = sorted(Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file())
        if not paths:
            raise ConfigError("path", f"no file matches: {pattern}", source_file)
        return paths
    path = Path(pattern)
    if not path.exists():
        raise ConfigError("path", f"file not found: {pattern}", source_file)
    if not path.is_file():
        raise ConfigError("path", f"not a file: {pattern}", source_file)
    return [path]


def read_text_tokens(path: Path, source_file: str | None) -> np.ndarray:
    """One UTF-8 text file -> its bytes as a uint8 array."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError("path", f"cannot read {path}: {exc.strerror}", source_file) from None
    if not data:
        raise ConfigError("path", f"file is empty: {path}", source_file)
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError("path", f"not UTF-8 text (byte {exc.start}): {path}",
                          source_file) from None
    return np.frombuffer(data, dtype=np.uint8)


def open_token_file(path: Path, token_dtype: str, source_file: str | None) -> np.ndarray:
    """A ``.npy`` (own dtype) or raw ``.bin`` (dtype from config) token file, memory-mapped."""
    try:
        if path.suffix == ".npy":
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        else:
            itemsize = np.dtype(TOKEN_DTYPES[token_dtype]).itemsize
            size = path.stat().st_size
            if size % itemsize:
                raise ConfigError("token_dtype", f"size of {path} ({size} bytes) is not a "
                                  f"multiple of {itemsize} bytes ({token_dtype})", source_file)
            if size == 0:
                raise ConfigError("path", f"file is empty: {path}", source_file)
            arr = np.memmap(path, dtype=TOKEN_DTYPES[token_dtype], mode="r")
    except ConfigError:
        raise
    except OSError as exc:
        raise ConfigError("path", f"cannot read {path}: {exc.strerror or exc}",
                          source_file) from None
    except ValueError as exc:  # np.load on a file that is not .npy
        raise ConfigError("path", f"not a valid .npy file: {path} ({exc})", source_file) from None
    if arr.ndim != 1 or arr.dtype.kind not in "iu":
        raise ConfigError("path", f"expected a 1-D integer array in {path}, got "
                          f"{arr.ndim}-D {arr.dtype}", source_file)
    if arr.size == 0:
        raise ConfigError("path", f"file is empty: {path}", source_file)
    return arr


def check_ids(arr: np.ndarray, vocab_size: int, path: Path, source_file: str | None) -> None:
    """Every id must be in [0, vocab_size): else the embedding lookup fails mid-training."""
    lo, hi = 0, 0
    for start in range(0, arr.size, _MAX_CHUNK):
        chunk = arr[start : start + _MAX_CHUNK]
        lo, hi = min(lo, int(chunk.min())), max(hi, int(chunk.max()))
    if lo < 0 or hi >= vocab_size:
        bad = lo if lo < 0 else hi
        raise ConfigError("vocab_size", f"{path} holds token id {bad}, outside "
                          f"[0, vocab_size = {vocab_size})", source_file)


def text_source(pattern: str, *, val_fraction: float, batch_size: int, seq_len: int,
                source_file: str | None = None) -> WindowSource:
    """Byte windows over text files; validation is the last ``val_fraction`` of each file."""
    arrays = [read_text_tokens(p, source_file) for p in resolve_paths(pattern, source_file)]
    heads, tails = zip(*(split_tail(a, val_fraction) for a in arrays), strict=True)
    return WindowSource(heads, tails, vocab_size=BYTE_VOCAB, batch_size=batch_size,
                        seq_len=seq_len, name=f"text {pattern}", source_file=source_file)


def token_source(pattern: str, *, token_dtype: str, vocab_size: int | None,
                 val_fraction: float, batch_size: int, seq_len: int,
                 source_file: str | None = None) -> WindowSource:
    """Windows over a folder made by ``parcae.prepare`` (its splits, vocabulary and tokenizer),
    or over memory-mapped token files (validation: the last fraction of each file)."""
    path = Path(pattern)
    if not glob.has_magic(pattern):
        if not path.exists():
            raise ConfigError("path", f"not found: {pattern}; make a token folder with: "
                              f"{prepare_hint(pattern)} (or point path at .bin/.npy token files)",
                              source_file)
        if is_prepared(path):
            return prepared_source(open_prepared(path, source_file), vocab_size=vocab_size,
                                   batch_size=batch_size, seq_len=seq_len,
                                   source_file=source_file)
    if vocab_size is None:
        raise ConfigError("vocab_size", "required for raw token files (.bin/.npy); a folder "
                          "made by parcae.prepare carries its own", source_file)
    limit = 1 << (16 if token_dtype == "uint16" else 32)
    if vocab_size > limit:
        raise ConfigError("vocab_size", f"{vocab_size} ids do not fit token_dtype "
                          f"{token_dtype} (at most {limit})", source_file)
    paths = resolve_paths(pattern, source_file)
    arrays = [open_token_file(p, token_dtype, source_file) for p in paths]
    for arr, file in zip(arrays, paths, strict=True):
        check_ids(arr, vocab_size, file, source_file)
    heads, tails = zip(*(split_tail(a, val_fraction) for a in arrays), strict=True)
    return WindowSource(heads, tails, vocab_size=vocab_size, batch_size=batch_size,
                        seq_len=seq_len, name=f"tokens {pattern}", decoder=_ids_text,
                        source_file=source_file)


def _ids_text(ids: Tensor) -> str:
    """Raw token files come without a tokenizer: show the ids."""
    return " ".join(map(str, ids.tolist()))


class TokenizerText:
    """Decodes ids with a prepared folder's tokenizer, loaded on first use (training never
    needs it, so a run does not pay for loading it)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._tokenizer = None

    def __call__(self, ids: Tensor) -> str:
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.path, "path")
        return self._tokenizer.decode(ids.tolist(), skip_special_tokens=False)


def prepared_source(prep: Prepared, *, vocab_size: int | None, batch_size: int, seq_len: int,
                    source_file: str | None = None) -> WindowSource:
    """Windows over a prepared folder's splits; a config ``vocab_size`` must match its own."""
    if vocab_size is not None and vocab_size != prep.vocab_size:
        raise ConfigError("vocab_size", f"is {vocab_size}, but {prep.folder / METADATA} says "
                          f"{prep.vocab_size}; leave vocab_size out (the folder sets it)",
                          source_file)
    return WindowSource(prep.train, prep.val, vocab_size=prep.vocab_size,
                        batch_size=batch_size, seq_len=seq_len, name=f"tokens {prep.folder}",
                        decoder=TokenizerText(prep.tokenizer_path), unigram=prep.unigram,
                        source_file=source_file)
