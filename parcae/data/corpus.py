"""Language-modelling corpora: embedded texts, the byte tokenizer, and random-window batches.

Byte-level tokenization (vocab 256, one id per UTF-8 byte) needs no files, works offline, and
round-trips any text exactly; 256 rather than 257+ because no special tokens are needed:
windows are cut from running text and never padded.
"""

from __future__ import annotations

import functools
import hashlib
import lzma
import re
from collections.abc import Callable, Iterator, Sequence
from importlib import resources
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from parcae.config import ConfigError
from parcae.data.batch import Batch, marginal_loss, stream_generator

BYTE_VOCAB = 256
"""Vocabulary of the byte tokenizer: every byte value, no special tokens."""

AUSTEN_ASSET = "austen.txt.xz"
AUSTEN_SHA256 = "7a122547f03e980e285c63046d1c56f74788387606e8143968acb5d54178047b"
"""SHA-256 of the shipped asset, as printed by ``scripts/extract_austen.py``."""
_CHUNK = 1 << 24
"""Tokens counted at a time for the unigram."""
BOOK_MARKER = re.compile(r"^<<<BOOK: (.+)>>>\n", re.MULTILINE)
"""Header line introducing each book in the asset (written by the extraction script)."""


class AssetError(RuntimeError):
    """A packaged data file is missing or corrupted (an installation problem, not user input)."""


def encode(text: str) -> Tensor:
    """Text -> uint8 tensor of its UTF-8 bytes (the byte tokenizer)."""
    return torch.frombuffer(bytearray(text.encode("utf-8")), dtype=torch.uint8)


def decode(ids: Tensor | Sequence[int]) -> str:
    """Byte ids -> text; bytes that are not valid UTF-8 (a window cut mid-character) become
    U+FFFD rather than raising."""
    data = bytes(int(i) for i in (ids.tolist() if isinstance(ids, Tensor) else ids))
    return data.decode("utf-8", errors="replace")


class Book(NamedTuple):
    """One document of an embedded corpus."""

    title: str
    """Display title, e.g. 'Emma'."""
    tokens: Tensor
    """Its UTF-8 bytes as a uint8 tensor."""


def asset_path(name: str) -> Path:
    """Location of a packaged asset under ``parcae/data/assets``."""
    return Path(str(resources.files("parcae.data").joinpath("assets", name)))


def read_austen(path: Path, sha256: str = AUSTEN_SHA256) -> tuple[Book, ...]:
    """Verify and decode the Austen asset at ``path`` into its six books."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise AssetError(f"cannot read packaged corpus {path}: {exc.strerror}; "
                         "reinstall parcae") from None
    digest = hashlib.sha256(raw).hexdigest()
    if digest != sha256:
        raise AssetError(f"packaged corpus {path} is corrupted (sha256 {digest}, expected "
                         f"{sha256}); reinstall parcae or rerun scripts/extract_austen.py")
    text = lzma.decompress(raw).decode("utf-8")
    # re.split with one group gives ['', title1, body1, title2, body2, ...].
    parts = BOOK_MARKER.split(text)[1:]
    return tuple(Book(title, encode(body)) for title, body in zip(parts[::2], parts[1::2],
                                                                   strict=True))


@functools.cache
def austen_books() -> tuple[Book, ...]:
    """Jane Austen's six novels (public domain; see assets/AUSTEN_LICENSE.txt), decompressed
    once per process."""
    return read_austen(asset_path(AUSTEN_ASSET))


@functools.cache
def pydoc_books() -> tuple[Book, ...]:
    """Python's own help topics (always installed): a small fallback corpus for tests."""
    from pydoc_data.topics import topics  # stdlib; imported lazily, it is 0.5 MB of text

    return (Book("pydoc topics", encode("\n\n".join(topics[k] for k in sorted(topics)))),)


def split_tail(arr: np.ndarray, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(head, tail) of a 1-D array, the tail holding ``val_fraction`` of it (for validation)."""
    cut = len(arr) - int(round(len(arr) * val_fraction))
    return arr[:cut], arr[cut:]


class WindowSource:
    """Next-token prediction on random windows of token segments (books, files).

    Windows never cross a segment boundary, so no window joins two unrelated documents and
    train/val (head/tail of each segment) never share a token.
    """

    answer_only = False

    def __init__(self, train: Sequence[np.ndarray], val: Sequence[np.ndarray], *,
                 vocab_size: int, batch_size: int, seq_len: int, name: str,
                 decoder: Callable[[Tensor], str] | None = None,
                 unigram: np.ndarray | None = None, short_key: str = "path",
                 source_file: str | None = None) -> None:
        self.vocab_size = vocab_size
        self.unigram = unigram  # counts per id over the training split, when already known
        self.batch_size = batch_size
        self.seq_len = seq_len
        self._decode = decoder or decode
        self.train = [s for s in train if len(s) > seq_len]
        self.val = [s for s in val if len(s) > seq_len]
        self.train_tokens: int | None = sum(len(s) for s in self.train)
        """Tokens of the training split that windows are drawn from."""
        for split, kept, given in (("training", self.train, train), ("validation", self.val, val)):
            if not kept:
                longest = max((len(s) for s in given), default=0)
                raise ConfigError(
                    short_key,
                    f"{name}: the {split} split has no stretch of seq_len + 1 = {seq_len + 1} "
                    f"tokens (longest has {longest}); use more data, a shorter seq_len or "
                    "another val_fraction", source_file)

    @staticmethod
    def _starts(segs: Sequence[np.ndarray], seq_len: int) -> np.ndarray:
        """Cumulative count of valid window starts per segment (for uniform sampling)."""
        return np.cumsum([len(s) - seq_len for s in segs])

    def _windows(self, segs: Sequence[np.ndarray], flat: np.ndarray) -> Batch:
        """Windows at flat start indices (0 <= i < total starts) -> (x, y)."""
        cum = self._starts(segs, self.seq_len)
        seg_ids = np.searchsorted(cum, flat, side="right")
        offsets = flat - np.concatenate([[0], cum[:-1]])[seg_ids]
        rows = [np.asarray(segs[s][o : o + self.seq_len + 1], dtype=np.int64)
                for s, o in zip(seg_ids.tolist(), offsets.tolist(), strict=True)]
        tokens = torch.from_numpy(np.stack(rows))
        return Batch(tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous())

    def train_batches(self, seed: int) -> Iterator[Batch]:
        """Infinite uniformly random windows from the training split, seeded by ``seed``."""
        gen = stream_generator(seed, "train")
        total = int(self._starts(self.train, self.seq_len)[-1])
        while True:
            flat = torch.randint(total, (self.batch_size,), generator=gen).numpy()
            yield self._windows(self.train, flat)

    def val_batches(self, n_batches: int) -> list[Batch]:
        """Evenly spaced windows over the validation split: fixed, no randomness at all."""
        total = int(self._starts(self.val, self.seq_len)[-1])
        count = n_batches * self.batch_size
        flat = (np.arange(count, dtype=np.int64) * total) // max(count, 1)
        return [self._windows(self.val, flat[i * self.batch_size : (i + 1) * self.batch_size])
                for i in range(n_batches)]

    def baseline_loss(self, batches: list[Batch]) -> float:
        """Loss of the unigram predictor (token frequencies of the training split)."""
        if self.unigram is not None:  # counted when the corpus was prepared: no rescan
            return marginal_loss(torch.from_numpy(self.unigram.astype(np.float64))[None],
                                 batches)
        counts = np.zeros(self.vocab_size, dtype=np.float64)
        for seg in self.train:
            for start in range(0, len(seg), _CHUNK):  # memory-mapped token files can be large
                chunk = np.asarray(seg[start : start + _CHUNK], dtype=np.int64)
                counts += np.bincount(chunk, minlength=self.vocab_size)
        return marginal_loss(torch.from_numpy(counts)[None], batches)

    def decode(self, ids: Tensor) -> str:
        """Text of ``ids`` (bytes by default; the source's tokenizer if it was given one)."""
        return self._decode(ids)


def books_source(books: Sequence[Book], *, val_fraction: float, batch_size: int, seq_len: int,
                 name: str, source_file: str | None = None) -> WindowSource:
    """Byte windows over embedded books; validation is the tail of every book."""
    heads, tails = zip(*(split_tail(b.tokens.numpy(), val_fraction) for b in books),
                       strict=True)
    return WindowSource(heads, tails, vocab_size=BYTE_VOCAB, batch_size=batch_size,
                        seq_len=seq_len, name=name, short_key="seq_len",
                        source_file=source_file)
