"""Which sequences of a batch run which loop steps, given one depth T_i per sequence.

Sequences are right-aligned: sequence i runs the last T_i of the batch's T_max = max_i T_i steps,
so they all end together and the truncated-backprop window (the last ``grad_steps`` steps) is one
range of steps for the whole batch: every sequence keeps a graph for its last
min(T_i, grad_steps) steps and runs the earlier ones without gradient. Attention never mixes
sequences, so both schedules give the same logits and gradients; they differ in the work done.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from parcae.model.injection import Drive

Step = Callable[[Tensor, Drive], Tensor]
"""One loop step h -> R(A-bar h + B-bar e) of a set of sequences, given their drive."""


def window_start(total: int, grad_steps: int | None) -> int:
    """The first of ``total`` steps that keeps a graph (all of them for grad_steps=None)."""
    return total - min(grad_steps or total, total)


class Schedule:
    def run(self, step: Step, h: Tensor, drive: Drive, depths: list[int],
            grad_steps: int | None) -> Tensor:
        """The states after each sequence's own number of steps."""
        raise NotImplementedError

    def rows(self, depths: list[int], t: int) -> int:
        """Sequences the core runs on at step t."""
        raise NotImplementedError

    def executed(self, depths: list[int], grad_steps: int | None) -> tuple[int, int]:
        """(sequence, step) pairs run with and without gradient for these depths."""
        total = max(depths)
        rows = [self.rows(depths, t) for t in range(total)]
        grad_from = window_start(total, grad_steps)
        return sum(rows[grad_from:]), sum(rows[:grad_from])


class AllRows(Schedule):
    """Every step runs the whole batch; sequences still waiting compute and are masked out.
    The Parcae reference's scheme: the batch costs T_max steps per sequence."""

    def run(self, step: Step, h: Tensor, drive: Drive, depths: list[int],
            grad_steps: int | None) -> Tensor:
        total, grad = max(depths), torch.is_grad_enabled()
        grad_from, all_running = window_start(total, grad_steps), total - min(depths)
        start = torch.tensor([total - t for t in depths], device=h.device).view(-1, 1, 1)
        for t in range(total):
            with torch.set_grad_enabled(grad and t >= grad_from):
                h_next = step(h, drive)
            # masked with grad on: a waiting state keeps its graph (e for `none`)
            h = h_next if t >= all_running else torch.where(t >= start, h_next, h)
        return h

    def rows(self, depths: list[int], t: int) -> int:
        return len(depths)


class ActiveRows(Schedule):
    """Each step runs only the sequences already running. Sorted longest first once, they form
    a prefix of the batch that grows to all of it; the batch costs sum_i T_i steps.

    ``min_rows`` = 2 keeps a compiled core off batches of one sequence, which torch.compile
    specialises (a recompile mid-run); the extra waiting sequence's step is discarded."""

    def __init__(self, min_rows: int = 1) -> None:
        self.min_rows = min_rows

    def run(self, step: Step, h: Tensor, drive: Drive, depths: list[int],
            grad_steps: int | None) -> Tensor:
        total, batch, grad = max(depths), len(depths), torch.is_grad_enabled()
        grad_from = window_start(total, grad_steps)
        order = sorted(range(batch), key=lambda i: -depths[i])
        perm = None if order == list(range(batch)) else torch.tensor(order, device=h.device)
        if perm is not None:
            h, drive = h[perm], drive.rows(perm)
        for t in range(total):
            n, m = self.running(depths, t), self.rows(depths, t)
            with torch.set_grad_enabled(grad and t >= grad_from):
                h_next = step(h[:m], drive.rows(slice(m)))
            h = h_next if n == batch else torch.cat((h_next[:n], h[n:]))
        return h if perm is None else h[torch.argsort(perm)]

    @staticmethod
    def running(depths: list[int], t: int) -> int:
        """Sequences running at step t: those with T_i >= T_max - t."""
        start = max(depths) - t
        return sum(d >= start for d in depths)

    def rows(self, depths: list[int], t: int) -> int:
        return max(self.running(depths, t), min(self.min_rows, len(depths)))
