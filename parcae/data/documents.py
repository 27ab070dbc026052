"""Raw corpora for ``python -m parcae.prepare``: finding input files and reading their documents.

Inputs are text files (one document each), JSONL files (one document per line, text in a
named field) and Parquet files (one document per row); text and JSONL files may be compressed
(.gz, .xz, or .zst with the ``zstandard`` package) and are read decompressed, as real corpora
ship that way. Every file is split the same way the
other file sources are: its tail is validation — the last ``val_fraction`` of a text file's
bytes (from a line start on), or of a JSONL / Parquet file's documents — so neither split
depends on how files are grouped, and the split is known before a token is produced.
Problems are ConfigErrors keyed by the command-line argument ('INPUT', '--text-field').
"""

from __future__ import annotations

import contextlib
import glob
import gzip
import hashlib
import io
import json
import lzma
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

from parcae.config import ConfigError

KINDS: dict[str, Literal["text", "jsonl", "parquet"]] = {
    ".txt": "text", ".text": "text", ".md": "text", ".rst": "text",
    ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet",
}
"""File suffix -> input format; files in folders with other suffixes are skipped."""
COMPRESSIONS = (".gz", ".xz", ".zst")
"""Suffixes of compressed text / JSONL files (e.g. corpus.jsonl.gz), read decompressed."""
PIECE_BYTES = 1 << 18
"""Text is handed to the tokenizer in pieces of about this many bytes, cut at line ends."""
_HASH_BLOCK = 1 << 22


@dataclass(frozen=True)
class InputFile:
    """One input file and how to read it."""

    path: Path
    """Absolute path."""
    kind: Literal["text", "jsonl", "parquet"]
    """Format, from the suffix (the one before a compression suffix)."""
    compression: str = ""
    """'.gz', '.xz', '.zst', or '' for a plain file."""


@dataclass(frozen=True)
class Piece:
    """A stretch of one document's text, tagged with the split it belongs to."""

    split: Literal["train", "val"]
    """'train' or 'val'."""
    text: str
    """The text (a whole document, or part of a long text file)."""
    end: bool
    """True if the document ends here (a separator token follows it)."""
    nbytes: int
    """Bytes of the input file (compressed, if it is) this piece accounts for (for progress)."""


def _compression(path: Path) -> str:
    return path.suffix.lower() if path.suffix.lower() in COMPRESSIONS else ""


def _kind(path: Path) -> Literal["text", "jsonl", "parquet"] | None:
    if _compression(path):  # Parquet compresses inside the file, so never outside it
        kind = KINDS.get(Path(path.stem).suffix.lower())
        return kind if kind != "parquet" else None
    return KINDS.get(path.suffix.lower())


def _folder_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and _kind(p))


def find_inputs(inputs: list[str]) -> list[InputFile]:
    """Files, folders (searched recursively for known suffixes) and globs -> input files, in
    the order given, each folder or glob sorted, duplicates dropped."""
    expected = ", ".join(KINDS) + " (text and JSONL also as " + ", ".join(COMPRESSIONS) + ")"
    found: list[Path] = []
    for item in inputs:
        if glob.has_magic(item):
            matches = [Path(p) for p in sorted(glob.glob(item, recursive=True))]
            paths = [f for m in matches for f in ([m] if m.is_file() else _folder_files(m))]
            if not paths:
                raise ConfigError("INPUT", f"no file matches {item} (expected {expected} files)")
        elif Path(item).is_dir():
            paths = _folder_files(Path(item))
            if not paths:
                raise ConfigError("INPUT", f"no {expected} file in folder {item}")
        elif Path(item).is_file():
            paths = [Path(item)]
        else:
            raise ConfigError("INPUT", f"not found: {item} (expected a file, folder or glob)")
        for path in paths:
            if _kind(path) is None:
                raise ConfigError("INPUT", f"unknown format of {path}: expected a file "
                                  f"ending in {expected}")
            found.append(path.resolve())
    return [InputFile(p, _kind(p), _compression(p))  # type: ignore[arg-type]
            for p in dict.fromkeys(found)]


Decompressing = tuple[BinaryIO, tuple[type[Exception], ...]]
"""A reader of an open file's decompressed bytes, and the errors its library raises on corrupt
data."""


def _gzip(raw: BinaryIO) -> Decompressing:
    stream = gzip.GzipFile(fileobj=raw, mode="rb")
    return stream, (gzip.BadGzipFile, zlib.error)  # type: ignore[return-value]


def _xz(raw: BinaryIO) -> Decompressing:
    return lzma.LZMAFile(raw), (lzma.LZMAError,)  # type: ignore[return-value]


def _zstd(raw: BinaryIO) -> Decompressing:
    try:
        import zstandard
    except ImportError:
        raise ConfigError("INPUT", f"{raw.name}: reading .zst files needs the zstandard "
                          "package: pip install zstandard (or decompress it first: "
                          "zstd -d FILE)") from None
    reader = zstandard.ZstdDecompressor().stream_reader(raw)
    return io.BufferedReader(reader), (zstandard.ZstdError,)  # type: ignore[arg-type]


_DECOMPRESSORS: dict[str, Callable[[BinaryIO], Decompressing]] = {
    ".gz": _gzip, ".xz": _xz, ".zst": _zstd}
"""Compression suffix -> how to read it."""


@contextlib.contextmanager
def _opened(source: InputFile) -> Iterator[tuple[BinaryIO, Callable[[], int]]]:
    """(the file's decompressed bytes, bytes of the file itself read so far). Corrupt or
    truncated compressed data is a ConfigError naming the file."""
    with source.path.open("rb") as raw:
        if not source.compression:
            yield raw, raw.tell
            return
        stream, corrupt = _DECOMPRESSORS[source.compression](raw)
        try:
            with stream:
                yield stream, raw.tell
        except (EOFError, *corrupt) as exc:  # EOFError: the file ends mid-stream
            raise ConfigError("INPUT", f"not readable {source.compression} data: "
                              f"{source.path} ({exc or 'truncated'})") from None


def content_bytes(source: InputFile) -> int:
    """Bytes of the file's (decompressed) content."""
    if not source.compression:
        return source.path.stat().st_size
    with _opened(source) as (f, _):
        return sum(len(block) for block in iter(lambda: f.read(_HASH_BLOCK), b""))


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(_HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def val_count(n: int, val_fraction: float) -> int:
    """Documents of a file held out for validation: its share, at least one if there are two,
    never all."""
    return min(max(round(n * val_fraction), 1 if n >= 2 else 0), max(n - 1, 0))


def _text_pieces(source: InputFile, val_fraction: float) -> Iterator[Piece]:
    size = content_bytes(source)
    cut = size - round(size * val_fraction)
    pos, start, lines, read = 0, 0, [], 0
    with _opened(source) as (f, consumed):
        for line in f:
            if pos >= cut > start or pos - start >= PIECE_BYTES:  # split or size boundary
                yield _decoded(source.path, b"".join(lines), start, cut, end=False,
                               nbytes=consumed() - read)
                start, lines, read = pos, [], consumed()
            lines.append(line)
            pos += len(line)
        if lines:
            yield _decoded(source.path, b"".join(lines), start, cut, end=True,
                           nbytes=consumed() - read)


def _decoded(path: Path, data: bytes, start: int, cut: int, *, end: bool,
             nbytes: int) -> Piece:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        where = "decompressed byte" if _compression(path) else "byte"
        raise ConfigError("INPUT", f"not UTF-8 text ({where} {start + exc.start}): {path}") \
            from None
    return Piece("train" if start < cut else "val", text, end, nbytes)


def _field_text(record: object, field: str, where: str) -> str:
    if not isinstance(record, dict) or field not in record:
        raise ConfigError("--text-field", f"{where}: no field '{field}' in this record")
    text = record[field]
    if text is None:
        return ""
    if not isinstance(text, str):
        raise ConfigError("--text-field", f"{where}: field '{field}' holds "
                          f"{type(text).__name__}, expected text")
    return text


def _jsonl_pieces(source: InputFile, val_fraction: float, field: str) -> Iterator[Piece]:
    path = source.path
    with _opened(source) as (f, _):
        n = sum(1 for line in f if line.strip())
    first_val = n - val_count(n, val_fraction)
    index, read = 0, 0
    with _opened(source) as (f, consumed):
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as exc:
                raise ConfigError("INPUT", f"{path}:{lineno}: not a JSON line ({exc})") \
                    from None
            text = _field_text(record, field, f"{path}:{lineno}")
            yield Piece("train" if index < first_val else "val", text, True, consumed() - read)
            index, read = index + 1, consumed()


def _parquet_pieces(source: InputFile, val_fraction: float, field: str) -> Iterator[Piece]:
    path = source.path
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ConfigError("INPUT", f"{path}: reading Parquet needs pyarrow: pip install "
                          "pyarrow (or pip install 'parcae[parquet]')") from None
    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises its own ArrowInvalid / OSError variants
        raise ConfigError("INPUT", f"not a readable Parquet file: {path} ({exc})") from None
    if field not in pf.schema_arrow.names:
        raise ConfigError("--text-field", f"{path}: no column '{field}' (columns: "
                          f"{', '.join(pf.schema_arrow.names)})")
    n = pf.metadata.num_rows
    first_val = n - val_count(n, val_fraction)
    size, index = path.stat().st_size, 0
    for batch in pf.iter_batches(columns=[field], batch_size=1024):
        for value in batch.column(0).to_pylist():
            text = _field_text({field: value}, field, f"{path} row {index}")
            # progress in file bytes: a row's share of the (compressed) file
            yield Piece("train" if index < first_val else "val", text, True,
                        (index + 1) * size // n - index * size // n)
            index += 1


_READERS: dict[str, Callable[[InputFile, float, str], Iterator[Piece]]] = {
    "text": lambda source, val_fraction, _field: _text_pieces(source, val_fraction),
    "jsonl": _jsonl_pieces,
    "parquet": _parquet_pieces,
}
"""Input format -> its reader (file, val_fraction, text field)."""


def pieces(source: InputFile, val_fraction: float, text_field: str) -> Iterator[Piece]:
    """The documents of one input file as pieces, in file order, each tagged with its split."""
    return _READERS[source.kind](source, val_fraction, text_field)
