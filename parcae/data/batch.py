"""The contract between data and training: a batch, a data source, seeded streams, the metric."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
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
    train_tokens: int | None
    """Tokens in the training split (what one epoch is); None for generated tasks, whose
    examples never repeat."""

    def train_batches(self, seed: int) -> Iterator[Batch]:
        """Infinite stream of batches; the same seed gives the same stream."""
        ...

    def val_batches(self, n_batches: int) -> list[Batch]:
        """Fixed validation batches (independent of any training seed)."""
        ...

    def decode(self, ids: Tensor) -> str:
        """Human-readable text for a 1-D tensor of ids (for samples and debugging)."""
        ...

    def baseline_loss(self, batches: list[Batch]) -> float:
        """Loss (nats/token) on ``batches`` of the predictor that ignores the input: the
        unigram of the training split for corpora, the marginal of each answer position for
        tasks; a model that learned something beats it (see ``marginal_loss``)."""
        ...


def stream_generator(seed: int, stream: str) -> torch.Generator:
    """A torch.Generator for one named stream; hashing keeps 'train'/'val' streams unrelated
    even for equal seeds, and works for negative seeds."""
    digest = hashlib.blake2b(f"{stream}:{seed}".encode(), digest_size=8).digest()
    gen = torch.Generator()
    gen.manual_seed(int.from_bytes(digest, "big") & (2**63 - 1))
    return gen


def answer_rank(y: Tensor) -> Tensor:
    """(B, L) targets -> the index of each scored token among its row's scored tokens (0, 1,
    ...; -1 where unscored): the answer position a task's marginal predictor conditions on."""
    scored = y != IGNORE_INDEX
    return torch.where(scored, scored.long().cumsum(dim=-1) - 1, -1)


def marginal_counts(batches: Iterable[Batch], vocab_size: int,
                    positions: int) -> Tensor:
    """Counts (positions, vocab) of scored targets per answer position (``answer_rank``),
    positions past the last pooled into it."""
    counts = torch.zeros(positions, vocab_size, dtype=torch.float64)
    for _, y in batches:
        rank = answer_rank(y)
        keep = rank >= 0
        flat = rank[keep].clamp(max=positions - 1) * vocab_size + y[keep]
        counts += torch.bincount(flat, minlength=positions * vocab_size).view_as(counts)
    return counts


def marginal_loss(counts: Tensor, batches: list[Batch]) -> float:
    """Cross-entropy on ``batches`` of the predictor p(token | answer position) = add-one
    smoothed ``counts`` (one row: the unigram), averaged per batch as validation losses are.

    Add-one smoothing keeps a token unseen in training from making the loss infinite; with
    the training splits used here it moves the loss by well under 0.01 nats.
    """
    logp = torch.log((counts + 1) / (counts + 1).sum(dim=-1, keepdim=True))
    losses = []
    for _, y in batches:
        rank = answer_rank(y)
        keep = rank >= 0
        pos = rank[keep].clamp(max=len(counts) - 1)
        losses.append(-logp[pos, y[keep]].mean().item())
    return sum(losses) / len(losses)


def exact_match(logits: Tensor, y: Tensor) -> Tensor:
    """Per-sequence exact match of all scored tokens: bool tensor of shape (B,).

    ``logits`` is (B, L, V) (or already-argmaxed ids (B, L)); ``y`` is (B, L) with
    ``IGNORE_INDEX`` at unscored positions. Sequences with no scored token count as correct.
    """
    pred = logits.argmax(-1) if logits.dim() == y.dim() + 1 else logits
    scored = y != IGNORE_INDEX
    return ((pred == y) | ~scored).all(dim=-1)
