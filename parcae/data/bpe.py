"""Subword tokenizers for prepared corpora: train a byte-level BPE locally, or load one.

Byte-level BPE (Radford et al. 2019) starts from the 256 byte values, so any text encodes and
decodes back exactly, and no character is ever unknown. Hugging Face ``tokenizers`` does the
work; it is imported here only, so configs and CLIs that never tokenize stay fast.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from parcae.config import ConfigError

if TYPE_CHECKING:
    from tokenizers import Tokenizer

BYTE_ALPHABET = 256
"""Tokens a byte-level BPE holds before its first merge."""


def min_vocab(separator: str) -> int:
    """Smallest vocabulary a trained byte-level BPE can have: bytes + the separator."""
    return BYTE_ALPHABET + (1 if separator else 0)


def train_bpe(texts: Iterator[str], vocab_size: int, separator: str) -> Tokenizer:
    """A byte-level BPE with at most ``vocab_size`` tokens (fewer if the texts run out of
    pairs worth merging), trained on ``texts``; ``separator`` (if any) is a special token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[separator] if separator else [],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(texts, trainer)
    return tokenizer


def load_tokenizer(path: Path, key: str = "--tokenizer") -> Tokenizer:
    """A ``tokenizer.json`` -> Tokenizer; problems are ConfigErrors naming ``key``."""
    from tokenizers import Tokenizer

    if not path.is_file():
        raise ConfigError(key, f"not found: {path} (expected a tokenizer.json file)")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a bare Exception for any parse problem
        raise ConfigError(key, f"not a tokenizer.json the tokenizers library can load: "
                          f"{path} ({str(exc).splitlines()[0][:200]})") from None


def vocab_size(tokenizer: Tokenizer) -> int:
    """Ids the model must embed: one past the largest id (vocabularies may have gaps)."""
    ids = tokenizer.get_vocab(with_added_tokens=True).values()
    return max(max(ids, default=-1) + 1, tokenizer.get_vocab_size(with_added_tokens=True))


def separator_id(tokenizer: Tokenizer, separator: str, path: Path | None) -> int | None:
    """Id of ``separator`` ('' -> None); a tokenizer without it is a ConfigError."""
    if not separator:
        return None
    token_id = tokenizer.token_to_id(separator)
    if token_id is None:
        where = f"{path} has" if path else "the tokenizer has"
        raise ConfigError("--separator", f"{where} no token {json.dumps(separator)}: name one "
                          "of its special tokens (e.g. its end-of-text token), or pass "
                          "--separator '' to join documents without one")
    return token_id
