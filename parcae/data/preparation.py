"""What ``python -m parcae.prepare`` does: checksum the inputs, get a tokenizer (train a BPE or
load one), tokenize every document into train / val shards, write the metadata last."""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import numpy as np

import parcae
from parcae.config import ConfigError
from parcae.data import bpe
from parcae.data.documents import InputFile, Piece, content_bytes, pieces, sha256
from parcae.data.shards import (
    FORMAT,
    METADATA,
    SPLITS,
    TOKENIZER,
    UNIGRAM,
    ShardWriter,
    token_dtype,
    write_metadata,
)
from parcae.progress import Progress

BATCH_BYTES = 4 << 20
"""Text handed to the tokenizer at once (it spreads a batch over its threads)."""
BATCH_DOCS = 4096
"""Documents handed to the tokenizer at once, at most."""


def _checksums(sources: list[InputFile], stream: TextIO | None) -> list[dict[str, Any]]:
    total = sum(s.path.stat().st_size for s in sources)
    progress = Progress(total, "checksums", "B", stream=stream)
    out, done = [], 0
    for source in sources:
        size = source.path.stat().st_size
        out.append({"path": str(source.path), "format": source.kind, "bytes": size,
                    "sha256": sha256(source.path)})
        done += size
        progress.update(done)
    progress.close()
    return out


def _training_texts(sources: list[InputFile], val_fraction: float, text_field: str,
                    limit: int, progress: Progress) -> Iterator[str]:
    """Training-split text from the start of the inputs, up to ``limit`` bytes."""
    done = 0
    for source in sources:
        for piece in pieces(source, val_fraction, text_field):
            if piece.split != "train" or not piece.text:
                continue
            yield piece.text
            done += len(piece.text.encode("utf-8"))
            progress.update(min(done, limit))
            if done >= limit:
                return


def _train_tokenizer(sources: list[InputFile], *, vocab_size: int, separator: str,
                     val_fraction: float, text_field: str, train_bytes: int,
                     stream: TextIO | None) -> tuple[Any, dict[str, Any]]:
    """(tokenizer, its metadata) for a byte-level BPE trained on the training split."""
    # in text bytes, as the limit is (compressed inputs: one more pass to count them)
    total = sum(content_bytes(s) for s in sources) * (1 - val_fraction)
    progress = Progress(min(train_bytes, total), "training BPE", "B", stream=stream)
    start = time.perf_counter()
    tok = bpe.train_bpe(_training_texts(sources, val_fraction, text_field, train_bytes,
                                        progress), vocab_size, separator)
    progress.close(f"{bpe.vocab_size(tok)} tokens")
    if bpe.vocab_size(tok) < vocab_size:
        print(f"parcae.prepare: note: the BPE stopped at {bpe.vocab_size(tok)} tokens, fewer than "
              f"--vocab-size {vocab_size}: the text has no more pairs worth merging",
              file=stream or sys.stderr)
    return tok, {"kind": "bpe", "requested_vocab_size": vocab_size,
                 "trained_on_bytes": int(progress.done),
                 "train_seconds": round(time.perf_counter() - start, 3)}


def _batches(sources: list[InputFile], val_fraction: float,
             text_field: str) -> Iterator[tuple[int, list[Piece]]]:
    """(source index, pieces of one split) in input order, a few MB at a time."""
    for index, source in enumerate(sources):
        batch: list[Piece] = []
        size = 0
        for piece in pieces(source, val_fraction, text_field):
            if batch and (piece.split != batch[0].split or size >= BATCH_BYTES
                          or len(batch) >= BATCH_DOCS):
                yield index, batch
                batch, size = [], 0
            batch.append(piece)
            size += piece.nbytes
        if batch:
            yield index, batch


def _tokenize(tok: Any, sources: list[InputFile], stats: list[dict[str, Any]],
              writers: dict[str, ShardWriter], sep_id: int | None, unigram: np.ndarray, *,
              val_fraction: float, text_field: str, stream: TextIO | None) -> float:
    """Write every document's ids (+ separator) to its split and count the training split's
    ids into ``unigram``; returns the seconds it took."""
    encode = getattr(tok, "encode_batch_fast", tok.encode_batch)  # no offsets: faster
    for stat in stats:
        stat.update({f"{split}_{what}": 0 for split in SPLITS for what in ("documents",
                                                                            "tokens")})
    progress = Progress(sum(s["bytes"] for s in stats), "tokenizing", "B", stream=stream)
    start, done, tokens = time.perf_counter(), 0, 0
    for index, batch in _batches(sources, val_fraction, text_field):
        split = batch[0].split
        parts = []
        for piece, enc in zip(batch, encode([p.text for p in batch], add_special_tokens=False),
                              strict=True):
            parts.append(np.asarray(enc.ids, dtype=np.int64))
            if piece.end and sep_id is not None:
                parts.append(np.array([sep_id], dtype=np.int64))
        ids = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        writers[split].write(ids)
        if split == "train":
            unigram += np.bincount(ids, minlength=len(unigram))
        stats[index][f"{split}_tokens"] += len(ids)
        stats[index][f"{split}_documents"] += sum(p.end for p in batch)
        done += sum(p.nbytes for p in batch)
        tokens += len(ids)
        progress.update(done, tokens=tokens)
    seconds = time.perf_counter() - start
    progress.close(f"{tokens} tokens")
    return seconds


def prepare(sources: list[InputFile], out: Path, *, vocab_size: int | None,
            tokenizer_path: Path | None, separator: str, val_fraction: float,
            text_field: str, train_bytes: int, shard_tokens: int,
            stream: TextIO | None = None) -> dict[str, Any]:
    """Prepare ``sources`` into the empty folder ``out``; returns a summary for the CLI.
    Progress goes to ``stream`` (default: stderr)."""
    if not sum(s.path.stat().st_size for s in sources):
        raise ConfigError("INPUT", f"the corpus is empty: {len(sources)} file(s), 0 bytes")
    if tokenizer_path is not None:  # checked before hours of reading
        tok = bpe.load_tokenizer(tokenizer_path)
        tok_meta = {"kind": "given", "source": str(tokenizer_path.resolve()),
                    "source_sha256": sha256(tokenizer_path)}
        bpe.separator_id(tok, separator, tokenizer_path)
    stats = _checksums(sources, stream)
    if tokenizer_path is None:
        assert vocab_size is not None  # the CLI requires one of the two
        tok, tok_meta = _train_tokenizer(sources, vocab_size=vocab_size, separator=separator,
                                         val_fraction=val_fraction, text_field=text_field,
                                         train_bytes=train_bytes, stream=stream)
    sep_id = bpe.separator_id(tok, separator, tokenizer_path)
    vocab = bpe.vocab_size(tok)
    dtype = token_dtype(vocab)
    writers = {split: ShardWriter(out, split, dtype, shard_tokens) for split in SPLITS}
    unigram = np.zeros(vocab, dtype=np.int64)
    try:
        seconds = _tokenize(tok, sources, stats, writers, sep_id, unigram,
                            val_fraction=val_fraction, text_field=text_field, stream=stream)
    finally:
        for writer in writers.values():
            writer.close()
    for split, writer in writers.items():
        if not writer.tokens:
            name = "training" if split == "train" else "validation"
            raise ConfigError("INPUT", f"the {name} split is empty: the inputs hold too little "
                              f"text for --val-fraction {val_fraction} (each file's tail, "
                              "from a line start, is validation)")
    np.save(out / UNIGRAM, unigram)
    if tokenizer_path is not None:
        shutil.copyfile(tokenizer_path, out / TOKENIZER)
    else:
        tok.save(str(out / TOKENIZER))
    tokens = sum(w.tokens for w in writers.values())
    meta = {
        "format": FORMAT,
        "parcae_version": parcae.__version__,
        "tokenizer": {"path": TOKENIZER, "sha256": sha256(out / TOKENIZER), **tok_meta},
        "unigram": UNIGRAM,
        "vocab_size": vocab,
        "dtype": dtype,
        "separator": separator or None,
        "separator_id": sep_id,
        "val_fraction": val_fraction,
        "text_field": text_field,
        "splits": {split: {"tokens": w.tokens, "shards": w.shards}
                   for split, w in writers.items()},
        "sources": stats,
        "tokenize_seconds": round(seconds, 3),
    }
    write_metadata(out, meta)
    return {"out": str(out / METADATA), "vocab_size": vocab, "dtype": dtype,
            "train_tokens": writers["train"].tokens, "val_tokens": writers["val"].tokens,
            "files": len(sources), "tokenize_seconds": round(seconds, 2),
            "tokens_per_second": round(tokens / seconds) if seconds > 0 else None}
