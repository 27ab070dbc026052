"""``python -m parcae.prepare INPUT... --out DIR (--vocab-size N | --tokenizer FILE)``

Tokenizes a local corpus once, for ``data.source: tokens`` (``data.path: DIR``). INPUT is a
text file (.txt .text .md .rst: one document each), a JSONL file (.jsonl .ndjson: one
document per line, text in --text-field) or a Parquet file (one document per row; needs
pyarrow), a folder of them (searched recursively) or a quoted glob; text and JSONL files may
be compressed (.gz, .xz, or .zst with the zstandard package). DIR gets train-NNNNN.bin
and val-NNNNN.bin (token ids, uint16 when the vocabulary fits, else uint32), tokenizer.json,
unigram.npy (training-split id counts) and metadata.json (tokenizer, vocabulary size, token
counts, dtype, sources with SHA-256).

The tokenizer is a byte-level BPE trained here on the training split (--vocab-size), or the
given tokenizer.json; nothing is downloaded. A separator token ends every document. The
validation split is the tail of every input file (--val-fraction of a text file's bytes, or
of a JSONL / Parquet file's documents).

Exit codes: 0 ok; 1 an I/O error (disk full, unreadable file); 2 bad input. On either error
nothing is left in DIR.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

from parcae.config import ConfigError, check_writable

SEPARATOR = "<|endoftext|>"
"""Default token appended after every document, so windows see where documents end."""
DEFAULT_TRAIN_BYTES = 1 << 30
DEFAULT_SHARD_TOKENS = 1 << 30


def _count(text: str) -> int:
    """A positive count, also written as 1e9."""
    value = float(text)
    if not value.is_integer() or value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text}")
    return int(value)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m parcae.prepare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="text, JSONL or Parquet file, folder, or quoted glob")
    parser.add_argument("--out", type=Path, required=True,
                        help="new or empty folder for the shards, tokenizer and metadata")
    tok = parser.add_mutually_exclusive_group(required=True)
    tok.add_argument("--vocab-size", type=int, help="train a byte-level BPE of this size")
    tok.add_argument("--tokenizer", type=Path, help="use this tokenizer.json instead")
    parser.add_argument("--text-field", default="text",
                        help="JSONL key / Parquet column holding the text (default: text)")
    parser.add_argument("--val-fraction", type=float, default=0.1,
                        help="tail of every file held out for validation (default: 0.1)")
    parser.add_argument("--separator", default=SEPARATOR,
                        help=f"token ending every document (default: {SEPARATOR}; '' for none)")
    parser.add_argument("--train-bytes", type=_count, default=DEFAULT_TRAIN_BYTES,
                        help="BPE training reads at most this much of the training split, "
                        "from its start (default: 2^30)")
    parser.add_argument("--shard-tokens", type=_count, default=DEFAULT_SHARD_TOKENS,
                        help="tokens per shard file at most (default: 2^30)")
    return parser.parse_args(argv)


def check_args(args: argparse.Namespace) -> None:
    """Cheap checks of the options, before any file is read."""
    from parcae.data.bpe import min_vocab

    if args.vocab_size is not None:
        low = min_vocab(args.separator)
        if not low <= args.vocab_size <= 1 << 32:
            raise ConfigError("--vocab-size", f"must be {low} (256 bytes + the separator) to "
                              f"2^32, got {args.vocab_size}")
    if not 0.0 < args.val_fraction < 1.0:
        raise ConfigError("--val-fraction", f"must be between 0 and 1 (exclusive), got "
                          f"{args.val_fraction}")
    if args.out.exists() and (not args.out.is_dir() or any(args.out.iterdir())):
        raise ConfigError("--out", f"{args.out} is not an empty folder; name a new one")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        check_args(args)
        from parcae.data.documents import find_inputs

        sources = find_inputs(args.inputs)
        created = not args.out.exists()
        check_writable(args.out, "--out")
    except ConfigError as exc:
        print(f"parcae.prepare: bad input: {exc}", file=sys.stderr)
        return 2
    try:
        from parcae.data.preparation import prepare

        summary = prepare(sources, args.out, vocab_size=args.vocab_size,
                          tokenizer_path=args.tokenizer, separator=args.separator,
                          val_fraction=args.val_fraction, text_field=args.text_field,
                          train_bytes=args.train_bytes, shard_tokens=args.shard_tokens)
    except ConfigError as exc:
        _clean(args.out, created)
        print(f"parcae.prepare: bad input: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        _clean(args.out, created)
        print(f"parcae.prepare: I/O error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(summary))
    return 0


def _clean(out: Path, created: bool) -> None:
    """Remove what a failed preparation wrote (the folder was new or empty)."""
    with contextlib.suppress(OSError):  # best effort: the error being reported matters more
        for path in out.iterdir():
            path.unlink()
        if created:
            out.rmdir()


if __name__ == "__main__":
    sys.exit(main())
