"""The contract between data and training: a batch, a data source, seeded streams, the metric."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import NamedTuple, Protocol, runtime_checkable

import torch
from torch import Tensor

IGNORE_INDEX = -100
"""Target value at unscored positions (``torch.nn.functional.cross_entropy``'s default)."""


class Batch(NamedTuple):
    """One batch. A NamedTuple so it is also the ``(x, y)`` tuple the iterators promise."""

    x: Tensor
    """Inputs, int64, shape (batch_size, seq_len)."""
    y: Tensor
    """Targets, int64, shape (batch_size, seq_len): ``x`` shifted by one for corpora;
    ``IGNORE_INDEX`` (-100) everywhere except the answer tokens for tasks."""


@runtime_checkable
class DataSource(Protocol):
    """What ``build_data`` returns; the training loop needs nothing else."""

    vocab_size: int
    """Number of token ids the model must embed (ids are in ``[0, vocab_size)``)."""
    answer_only: bool
    """True for synthetic tasks: only answer tokens are scored, and the metric is exact match."""

    def train_batches(self, seed: int) -> Iterator[Batch]:
        """Infinite stream of batches; the same seed gives the same stream."""
        ...

    def val_batches(self, n_batches: int) -> list[Batch]:
        """Fixed validation batches (independent of any training seed)."""
        ...

    def decode(self, ids: Tensor) -> str:
        """Human-readable text for a 1-D tensor of ids (for samples and debugging)."""
        ...


def stream_generator(seed: int, stream: str) -> torch.Generator:
    """A torch.Generator for one named stream; hashing keeps 'train'/'val' streams unrelated
    even for equal seeds, and works for negative seeds."""
    digest = hashlib.blake2b(f"{stream}:{seed}".encode(), digest_size=8).digest()
    gen = torch.Generator()
    gen.manual_seed(int.from_bytes(digest, "big") & (2**63 - 1))
    return gen


def exact_match(logits: Tensor, y: Tensor) -> Tensor:
    """Per-sequence exact match of all scored tokens: bool tensor of shape (B,).

    ``logits`` is (B, L, V) (or already-argmaxed ids (B, L)); ``y`` is (B, L) with
    ``IGNORE_INDEX`` at unscored positions. Sequences with no scored token count as correct.
    """
    pred = logits.argmax(-1) if logits.dim() == y.dim() + 1 else logits
    scored = y != IGNORE_INDEX
    return ((pred == y) | ~scored).all(dim=-1)
