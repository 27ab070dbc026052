"""One-off: how ``parcae/data/assets/austen.txt.xz`` was made (kept for provenance).

Source: Debian's ``r-cran-janeaustenr`` (MIT packaging of Jane Austen's six public-domain
novels). No R is needed::

    cd /tmp && apt-get download r-cran-janeaustenr && dpkg-deb -x r-cran-janeaustenr_*.deb x
    python scripts/extract_austen.py /tmp/x/usr/lib/R/site-library/janeaustenr/data \
        parcae/data/assets/austen.txt.xz

The package's ``data/Rdata.rdb`` is an R lazy-load database: a concatenation of blobs, each a
4-byte big-endian uncompressed length followed by a zlib stream of an R serialization (XDR).
``Rdata.rdx`` (gzip-compressed serialization) maps each variable name to (offset, length).
Each novel is one character vector, one line per element. We decode every CHARSXP on its own
(one line holds a UTF-8 '£', so scanning raw bytes would mis-split).

Output: UTF-8 text, one book after another, each introduced by a header line
``<<<BOOK: Title>>>`` (see ``parcae.data.corpus.BOOK_MARKER``); lines joined by ``\\n``.
Prints the SHA-256 of the written file, which goes into ``parcae/data/corpus.py``.
"""

from __future__ import annotations

import gzip
import hashlib
import lzma
import struct
import sys
import zlib
from pathlib import Path
from typing import Any

# R variable name -> display title, in publication order (the order books appear in the asset).
BOOKS = {
    "sensesensibility": "Sense & Sensibility",
    "prideprejudice": "Pride & Prejudice",
    "mansfieldpark": "Mansfield Park",
    "emma": "Emma",
    "northangerabbey": "Northanger Abbey",
    "persuasion": "Persuasion",
}
MARKER = "<<<BOOK: {}>>>"

# SEXP type codes from R's serialize.c.
NILVALUE, REFSXP, SYMSXP, LISTSXP, STRSXP = 254, 255, 1, 2, 16
LGLSXP, INTSXP, REALSXP, VECSXP, CHARSXP = 10, 13, 14, 19, 9
SPECIAL_NULLISH = {253, 252, 251, 250, 242, 241}  # environments etc.: not in data blobs
UTF8_MASK, LATIN1_MASK = 1 << 3, 1 << 2


class RReader:
    """Minimal reader for R XDR serialization: enough for character vectors and named lists."""

    def __init__(self, data: bytes) -> None:
        if data[:2] != b"X\n":
            raise ValueError(f"not XDR serialization: {data[:2]!r}")
        self.buf = data
        self.pos = 2
        version = self.int()
        self.int()  # writer R version
        self.int()  # minimal reader R version
        if version == 3:
            n = self.int()
            self.pos += n  # skip the native encoding name
        self.refs: list[Any] = []

    def int(self) -> int:
        (v,) = struct.unpack_from(">i", self.buf, self.pos)
        self.pos += 4
        return v

    def length(self) -> int:
        n = self.int()
        if n == -1:  # long vector: two 32-bit halves
            hi, lo = self.int(), self.int()
            n = (hi << 32) + lo
        return n

    def charsxp(self, flags: int) -> str | None:
        n = self.int()
        if n == -1:
            return None  # NA_character_
        raw = self.buf[self.pos : self.pos + n]
        self.pos += n
        levels = flags >> 12
        if levels & LATIN1_MASK:
            return raw.decode("latin-1")
        return raw.decode("utf-8")  # UTF8 or ASCII; the package declares Encoding: UTF-8

    def item(self) -> Any:
        flags = self.int()
        kind = flags & 0xFF
        has_attr, has_tag = bool(flags & (1 << 9)), bool(flags & (1 << 10))
        if kind == NILVALUE or kind in SPECIAL_NULLISH:
            return None
        if kind == REFSXP:
            idx = flags >> 8 or self.int()
            return self.refs[idx - 1]
        if kind == SYMSXP:
            name = self.item()
            self.refs.append(name)
            return name
        if kind == CHARSXP:
            return self.charsxp(flags)
        if kind == LISTSXP:  # pairlist: attributes, tag, car, then cdr
            out: dict[Any, Any] = {}
            while True:
                if has_attr:
                    self.item()
                tag = self.item() if has_tag else len(out)
                out[tag] = self.item()
                flags = self.int()
                kind = flags & 0xFF
                has_attr, has_tag = bool(flags & (1 << 9)), bool(flags & (1 << 10))
                if kind == NILVALUE:
                    return out
                if kind != LISTSXP:
                    raise ValueError(f"unexpected pairlist tail type {kind}")
        if kind == STRSXP:
            value: Any = [self.item() for _ in range(self.length())]
        elif kind == VECSXP:
            value = [self.item() for _ in range(self.length())]
        elif kind in (INTSXP, LGLSXP):
            n = self.length()
            value = list(struct.unpack_from(f">{n}i", self.buf, self.pos))
            self.pos += 4 * n
        elif kind == REALSXP:
            n = self.length()
            value = list(struct.unpack_from(f">{n}d", self.buf, self.pos))
            self.pos += 8 * n
        else:
            raise ValueError(f"unsupported SEXP type {kind} at byte {self.pos - 4}")
        if has_attr:
            attrs = self.item()
            names = attrs.get("names") if isinstance(attrs, dict) else None
            if names is not None:
                return dict(zip(names, value, strict=True))
        return value


def read_blob(rdb: bytes, offset: int, length: int) -> Any:
    blob = rdb[offset : offset + length]
    (size,) = struct.unpack(">I", blob[:4])
    data = zlib.decompress(blob[4:])
    if len(data) != size:
        raise ValueError(f"blob at {offset}: expected {size} bytes, got {len(data)}")
    return RReader(data).item()


def extract(data_dir: Path) -> str:
    index = RReader(gzip.decompress((data_dir / "Rdata.rdx").read_bytes())).item()
    rdb = (data_dir / "Rdata.rdb").read_bytes()
    parts = []
    for var, title in BOOKS.items():
        offset, length = index["variables"][var]
        lines = read_blob(rdb, offset, length)
        if not isinstance(lines, list) or not all(isinstance(s, str) for s in lines):
            raise ValueError(f"{var}: expected a character vector without NA")
        parts.append(MARKER.format(title) + "\n" + "\n".join(lines).strip("\n") + "\n")
        print(f"{var}: {len(lines)} lines, {sum(map(len, lines))} chars")
    return "\n".join(parts)


def main() -> None:
    data_dir, out = Path(sys.argv[1]), Path(sys.argv[2])
    text = extract(data_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Fixed preset, no timestamps in .xz: the same input gives the same bytes and SHA-256.
    out.write_bytes(lzma.compress(text.encode("utf-8"), preset=9 | lzma.PRESET_EXTREME))
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    print(f"wrote {out}: {out.stat().st_size} bytes, {len(set(text))} distinct chars")
    print(f"sha256 {digest}")


if __name__ == "__main__":
    main()
