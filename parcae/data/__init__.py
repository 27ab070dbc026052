"""Data that works offline: embedded corpora, a user's files, and synthetic looping tasks.

``build_data(DataConfig(...))`` returns a ``DataSource`` whose ``train_batches(seed)`` and
``val_batches(n)`` yield ``Batch(x, y)`` pairs of int64 tensors (batch_size, seq_len).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from parcae.config import check
from parcae.data.batch import IGNORE_INDEX, Batch, DataSource, exact_match
from parcae.data.corpus import BYTE_VOCAB, austen_books, books_source, pydoc_books
from parcae.data.files import text_source, token_source
from parcae.data.tasks import AdditionTask, PHopTask, addition_length, addition_width

__all__ = ["BYTE_VOCAB", "IGNORE_INDEX", "Batch", "DataConfig", "DataSource", "build_data",
           "exact_match"]


@dataclass(frozen=True)
class DataConfig:
    """Where training and validation tokens come from, and how they are batched."""

    source: Literal["austen", "pydoc", "text", "tokens", "addition", "phop"] = "austen"
    """'austen': Jane Austen's six novels (embedded, byte-level); 'pydoc': Python's help
    topics (small, for tests); 'text': your UTF-8 text file(s) at ``path``, byte-level;
    'tokens': a folder made by ``python -m parcae.prepare`` or pre-tokenized file(s) at
    ``path``; 'addition' / 'phop': synthetic tasks."""
    path: str | None = None
    """'text': a file or glob. 'tokens': a folder made by ``python -m parcae.prepare`` (or its
    metadata.json), or a file or glob of '.npy' / raw '.bin' (of ``token_dtype``) files."""
    token_dtype: Literal["uint16", "uint32"] = "uint16"
    """Element type of raw '.bin' token files ('.npy' files and prepared folders carry
    their own)."""
    vocab_size: int | None = None
    """Vocabulary of raw 'tokens' files (required there: every id must be below it). A
    prepared folder sets its own (give it only to assert it); other sources fix theirs
    (256 bytes; 13 for addition; phop_alphabet + 1 for phop)."""
    val_fraction: float = 0.1
    """Share held out for validation: the tail of every book / file (corpora and raw token
    files; a prepared folder was split by ``parcae.prepare --val-fraction``)."""
    max_epochs: float = 4.0
    """Runs planned to see the training split more than this many times warn: beyond a few
    epochs extra tokens are worth less than fresh ones (Muennighoff et al. 2023), so a
    scaling study would measure memorisation. Not used by the synthetic tasks."""
    batch_size: int = 8
    """Sequences per batch."""
    seq_len: int = 128
    """Tokens per sequence (tasks right-pad shorter examples)."""
    addition_train_n: tuple[int, ...] = (2, 4, 8, 16, 32)
    """Addition: how many numbers per training example (drawn uniformly per example)."""
    addition_test_n: tuple[int, ...] = (8, 16, 24, 32)
    """Addition: how many numbers per validation example (equal shares)."""
    addition_digits: int = 3
    """Addition: digits per (zero-padded) number."""
    phop_hops: int = 16
    """p-hop: number of hops p."""
    phop_length: int = 256
    """p-hop: symbols per sequence."""
    phop_alphabet: int = 4
    """p-hop: number of distinct symbols (chance accuracy is 1 / phop_alphabet)."""

    def __post_init__(self) -> None:
        check(self.batch_size >= 1, "batch_size", f"must be at least 1, got {self.batch_size}")
        check(self.seq_len >= 1, "seq_len", f"must be at least 1, got {self.seq_len}")
        check(0.0 < self.val_fraction < 1.0, "val_fraction",
              f"must be between 0 and 1 (exclusive), got {self.val_fraction}")
        check(self.max_epochs > 0, "max_epochs", f"must be positive, got {self.max_epochs}")
        check(self.vocab_size is None or self.source == "tokens", "vocab_size",
              f"only set for source 'tokens'; source '{self.source}' fixes its own vocabulary")
        _SOURCES[self.source].validate(self)


def _validate_path(cfg: DataConfig) -> None:
    check(bool(cfg.path), "path", f"required for source '{cfg.source}': a file or glob")


def _validate_tokens(cfg: DataConfig) -> None:
    """Whether vocab_size is needed depends on what ``path`` holds: checked when built."""
    _validate_path(cfg)
    check(cfg.vocab_size is None or cfg.vocab_size >= 2, "vocab_size",
          f"must be at least 2, got {cfg.vocab_size}")


def _validate_addition(cfg: DataConfig) -> None:
    for key in ("addition_train_n", "addition_test_n"):
        ns = getattr(cfg, key)
        check(len(ns) > 0 and all(n >= 2 for n in ns), key,
              f"must be a non-empty list of counts >= 2, got {list(ns)}")
    check(1 <= cfg.addition_digits <= 9, "addition_digits",
          f"must be 1 to 9, got {cfg.addition_digits}")
    width = addition_width(cfg.addition_digits, max(cfg.addition_train_n + cfg.addition_test_n))
    longest = max(addition_length(n, cfg.addition_digits, width)
                  for n in cfg.addition_train_n + cfg.addition_test_n)
    # The last answer token is only a target, so inputs need one token less than an example.
    check(cfg.seq_len >= longest - 1, "seq_len",
          f"addition with up to {max(cfg.addition_train_n + cfg.addition_test_n)} numbers of "
          f"{cfg.addition_digits} digits needs seq_len >= {longest - 1}, got {cfg.seq_len}")


def _validate_phop(cfg: DataConfig) -> None:
    check(cfg.phop_alphabet >= 2, "phop_alphabet", f"must be at least 2, got {cfg.phop_alphabet}")
    check(cfg.phop_hops >= 1, "phop_hops", f"must be at least 1, got {cfg.phop_hops}")
    # Kac's lemma: a hop moves back phop_alphabet positions on average; a margin of 2x makes
    # chains that run off the start (and get redrawn) rare.
    need = 2 * cfg.phop_alphabet * cfg.phop_hops
    check(cfg.phop_length >= need, "phop_length",
          f"{cfg.phop_hops} hops over {cfg.phop_alphabet} symbols need phop_length >= {need}, "
          f"got {cfg.phop_length}")
    check(cfg.seq_len >= cfg.phop_length, "seq_len",
          f"must be at least phop_length = {cfg.phop_length}, got {cfg.seq_len}")


def _no_checks(cfg: DataConfig) -> None:
    """Embedded corpora: a too-long seq_len is reported when the data is built."""


def _build_austen(cfg: DataConfig, source_file: str | None) -> DataSource:
    return books_source(austen_books(), val_fraction=cfg.val_fraction, batch_size=cfg.batch_size,
                        seq_len=cfg.seq_len, name="austen", source_file=source_file)


def _build_pydoc(cfg: DataConfig, source_file: str | None) -> DataSource:
    return books_source(pydoc_books(), val_fraction=cfg.val_fraction, batch_size=cfg.batch_size,
                        seq_len=cfg.seq_len, name="pydoc", source_file=source_file)


def _build_text(cfg: DataConfig, source_file: str | None) -> DataSource:
    assert cfg.path is not None  # validated
    return text_source(cfg.path, val_fraction=cfg.val_fraction, batch_size=cfg.batch_size,
                       seq_len=cfg.seq_len, source_file=source_file)


def _build_tokens(cfg: DataConfig, source_file: str | None) -> DataSource:
    assert cfg.path is not None  # validated
    return token_source(cfg.path, token_dtype=cfg.token_dtype, vocab_size=cfg.vocab_size,
                        val_fraction=cfg.val_fraction, batch_size=cfg.batch_size,
                        seq_len=cfg.seq_len, source_file=source_file)


def _build_addition(cfg: DataConfig, source_file: str | None) -> DataSource:
    return AdditionTask(train_n=cfg.addition_train_n, test_n=cfg.addition_test_n,
                        digits=cfg.addition_digits, batch_size=cfg.batch_size,
                        seq_len=cfg.seq_len)


def _build_phop(cfg: DataConfig, source_file: str | None) -> DataSource:
    return PHopTask(hops=cfg.phop_hops, length=cfg.phop_length, alphabet=cfg.phop_alphabet,
                    batch_size=cfg.batch_size, seq_len=cfg.seq_len)


@dataclass(frozen=True)
class _Source:
    validate: Callable[[DataConfig], None]
    """Source-specific config checks (run in DataConfig.__post_init__)."""
    build: Callable[[DataConfig, str | None], DataSource]
    """Make the DataSource; may read files and raise ConfigError about them."""


_SOURCES: dict[str, _Source] = {
    "austen": _Source(_no_checks, _build_austen),
    "pydoc": _Source(_no_checks, _build_pydoc),
    "text": _Source(_validate_path, _build_text),
    "tokens": _Source(_validate_tokens, _build_tokens),
    "addition": _Source(_validate_addition, _build_addition),
    "phop": _Source(_validate_phop, _build_phop),
}
"""Source name -> how to check its settings and build it (the one place names are mapped)."""


def build_data(cfg: DataConfig, source_file: str | None = None) -> DataSource:
    """The DataSource for ``cfg``. File problems raise ConfigError keyed by the DataConfig field
    ('path', 'vocab_size', ...) with ``source_file`` (the YAML file) attached for the CLI."""
    return _SOURCES[cfg.source].build(cfg, source_file)
