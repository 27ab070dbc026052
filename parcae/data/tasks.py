"""Synthetic tasks where looping matters (Saunshi et al. 2025): n-ary addition and p-hop.

Both use a small task vocabulary, right-pad to ``seq_len`` with a PAD id, and score only the
answer tokens (targets are -100 elsewhere); the metric is whole-answer exact match
(``parcae.data.batch.exact_match``). Training and validation come from differently named
random streams, so validation is the same for every training seed.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from parcae.config import ConfigError
from parcae.data.batch import (
    IGNORE_INDEX,
    Batch,
    marginal_counts,
    marginal_loss,
    stream_generator,
)

VAL_SEED = 0
"""Seed of the validation stream (its name, 'val', already keeps it apart from training)."""
BASELINE_EXAMPLES = 4096
"""Training examples the chance predictor's answer marginals are counted on."""


class _TaskSource:
    """Shared plumbing: a task makes ``count`` examples from a generator; we batch them."""

    answer_only = True
    train_tokens = None  # fresh examples every batch: no epochs
    vocab_size: int
    batch_size: int

    def make(self, gen: torch.Generator, count: int, *, val: bool) -> Batch:
        raise NotImplementedError

    def train_batches(self, seed: int) -> Iterator[Batch]:
        """Infinite stream of fresh random examples, deterministic in ``seed``."""
        gen = stream_generator(seed, "train")
        while True:
            yield self.make(gen, self.batch_size, val=False)

    def val_batches(self, n_batches: int) -> list[Batch]:
        """Fixed held-out examples from the 'val' stream (the same for every training seed)."""
        gen = stream_generator(VAL_SEED, "val")
        return [self.make(gen, self.batch_size, val=True) for _ in range(n_batches)]

    def baseline_loss(self, batches: list[Batch]) -> float:
        """Loss of the chance predictor: the marginal of each answer position (its k-th answer
        token), counted on training examples from their own stream."""
        gen = stream_generator(VAL_SEED, "baseline")
        sample = self.make(gen, BASELINE_EXAMPLES, val=False)
        positions = int((sample.y != IGNORE_INDEX).sum(dim=-1).max())
        return marginal_loss(marginal_counts([sample], self.vocab_size, positions), batches)


# --- n-ary addition -----------------------------------------------------------------------

PLUS, EQUALS, ADD_PAD = 10, 11, 12
"""Addition ids: digits are their own value 0-9, then '+', '=', and padding."""
ADD_CHARS = "0123456789+=_"


def addition_width(digits: int, max_n: int) -> int:
    """Fixed answer width: digits of the largest possible sum, so every answer has one length."""
    return len(str((10**digits - 1) * max_n))


def addition_length(n: int, digits: int, width: int) -> int:
    """Tokens in one example: n numbers, n - 1 '+', one '=', the answer."""
    return n * (digits + 1) + width


class AdditionTask(_TaskSource):
    """``315+120+045+824=01304``: n zero-padded numbers, answer zero-padded to fixed width.

    Training draws n uniformly from ``train_n`` per example; validation cycles through
    ``test_n`` (example k uses ``test_n[k % len(test_n)]``) so each n is equally represented.
    """

    vocab_size = len(ADD_CHARS)

    def __init__(self, *, train_n: tuple[int, ...], test_n: tuple[int, ...], digits: int,
                 batch_size: int, seq_len: int) -> None:
        self.train_n, self.test_n, self.digits = train_n, test_n, digits
        self.batch_size, self.seq_len = batch_size, seq_len
        self.width = addition_width(digits, max(train_n + test_n))

    def make(self, gen: torch.Generator, count: int, *, val: bool) -> Batch:
        if val:
            ns = torch.tensor([self.test_n[k % len(self.test_n)] for k in range(count)])
        else:
            choice = torch.randint(len(self.train_n), (count,), generator=gen)
            ns = torch.tensor(self.train_n)[choice]
        tokens = torch.full((count, self.seq_len + 1), ADD_PAD, dtype=torch.long)
        scored = torch.zeros_like(tokens, dtype=torch.bool)
        # Draw numbers for every row in one call (max n), then use the first n of each row:
        # keeps the stream's consumption independent of how rows group by n.
        numbers = torch.randint(10**self.digits, (count, max(ns.tolist())), generator=gen)
        for n in sorted(set(ns.tolist())):
            rows = (ns == n).nonzero().squeeze(1)
            nums = numbers[rows, :n]
            prompt = self.number_digits(nums, self.digits)  # (m, n, digits)
            ops = torch.full((len(rows), n, 1), PLUS, dtype=torch.long)
            ops[:, -1, 0] = EQUALS
            prompt = torch.cat([prompt, ops], dim=2).reshape(len(rows), -1)
            answer = self.number_digits(nums.sum(dim=1, keepdim=True), self.width)
            seq = torch.cat([prompt, answer.reshape(len(rows), -1)], dim=1)
            tokens[rows, : seq.shape[1]] = seq
            scored[rows, prompt.shape[1] : seq.shape[1]] = True
        y = torch.where(scored[:, 1:], tokens[:, 1:], IGNORE_INDEX)
        return Batch(tokens[:, :-1].contiguous(), y)

    @staticmethod
    def number_digits(values: Tensor, width: int) -> Tensor:
        """Integers (...) -> their zero-padded decimal digits (..., width), most significant
        first."""
        powers = 10 ** torch.arange(width - 1, -1, -1)
        return (values.unsqueeze(-1) // powers) % 10

    def decode(self, ids: Tensor) -> str:
        return "".join(ADD_CHARS[int(i)] for i in ids.tolist())


# --- p-hop induction -------------------------------------------------------------------------

_MAX_REDRAWS = 100


def previous_occurrence(seqs: Tensor, alphabet: int) -> Tensor:
    """(B, T) symbols -> (B, T): index of the previous occurrence of the same symbol, or -1."""
    batch, length = seqs.shape
    pos = torch.arange(length).expand(batch, length)
    prev = torch.empty_like(seqs)
    for a in range(alphabet):
        seen = torch.where(seqs == a, pos, -1).cummax(dim=1).values  # last a at or before i
        before = torch.cat([torch.full((batch, 1), -1), seen[:, :-1]], dim=1)
        prev = torch.where(seqs == a, before, prev)
    return prev


def hop_answers(seqs: Tensor, hops: int, alphabet: int) -> tuple[Tensor, Tensor]:
    """Follow ``hops`` hops from the last token: (answers (B,), well_defined (B,) bool)."""
    prev = previous_occurrence(seqs, alphabet)
    rows = torch.arange(seqs.shape[0])
    at = torch.full((seqs.shape[0],), seqs.shape[1] - 1)
    ok = torch.ones(seqs.shape[0], dtype=torch.bool)
    for _ in range(hops):
        j = prev[rows, at]
        ok &= j >= 0
        at = torch.where(j >= 0, j + 1, at)
    return seqs[rows, at], ok


class PHopTask(_TaskSource):
    """p-hop induction: from the last token, jump to the token right after the previous
    occurrence of the current token, ``hops`` times; predict the token landed on.

    Sequences never repeat a symbol twice in a row, so every hop moves strictly back (a repeat
    would make a hop land where it started and silently shorten the chain); rows where some hop
    finds no previous occurrence are redrawn, so every answer is well defined. Symbols are ids
    ``0..alphabet-1``; ``alphabet`` is the padding id.
    """

    def __init__(self, *, hops: int, length: int, alphabet: int, batch_size: int,
                 seq_len: int) -> None:
        self.hops, self.length, self.alphabet = hops, length, alphabet
        self.batch_size, self.seq_len = batch_size, seq_len
        self.vocab_size = alphabet + 1

    def sequences(self, gen: torch.Generator, count: int) -> tuple[Tensor, Tensor]:
        """``count`` well-defined sequences (count, length) and their answers (count,)."""
        seqs = torch.empty((count, self.length), dtype=torch.long)
        answers = torch.empty(count, dtype=torch.long)
        todo = torch.arange(count)
        for _ in range(_MAX_REDRAWS):
            first = torch.randint(self.alphabet, (len(todo), 1), generator=gen)
            # Each step adds 1..alphabet-1 mod alphabet: uniform over the other symbols.
            steps = torch.randint(1, self.alphabet, (len(todo), self.length - 1), generator=gen)
            drawn = torch.cat([first, steps], dim=1).cumsum(dim=1) % self.alphabet
            ans, ok = hop_answers(drawn, self.hops, self.alphabet)
            seqs[todo[ok]], answers[todo[ok]] = drawn[ok], ans[ok]
            todo = todo[~ok]
            if not len(todo):
                return seqs, answers
        raise ConfigError("phop_hops", f"{self.hops} hops rarely fit in phop_length = "
                          f"{self.length}; use fewer hops or longer sequences")

    def make(self, gen: torch.Generator, count: int, *, val: bool) -> Batch:
        seqs, answers = self.sequences(gen, count)
        x = torch.full((count, self.seq_len), self.alphabet, dtype=torch.long)
        x[:, : self.length] = seqs
        y = torch.full_like(x, IGNORE_INDEX)
        y[:, self.length - 1] = answers  # the last sequence token predicts the answer
        return Batch(x, y)

    def decode(self, ids: Tensor) -> str:
        chars = "abcdefghijklmnopqrstuvwxyz"
        if self.alphabet > len(chars):
            return " ".join(map(str, ids.tolist()))
        return "".join(chars[i] if i < self.alphabet else "_" for i in ids.tolist())
