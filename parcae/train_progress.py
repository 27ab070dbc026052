"""The progress line of ``python -m parcae.train``: tokens done of the budget, tokens/s,
loss and ETA, as a Lightning callback over :class:`parcae.progress.Progress`.

Only the CLI adds it: a sweep's trials report to the sweep, not to its terminal.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

import lightning as L

from parcae.progress import Progress

#: Seconds between reads of the loss: reading it waits for the device, so not every step.
READ_EVERY = 0.5


class TrainProgress(L.Callback):
    """Shows training progress on ``stream`` (one rewritten line on a terminal, a line every
    ``every`` seconds in a log)."""

    def __init__(self, label: str, stream: TextIO | None = None, every: float = 10.0) -> None:
        self.label, self.every = label, every
        self.stream = sys.stderr if stream is None else stream
        self.progress: Progress | None = None
        self.per_step = 0
        self.last_read = -float("inf")

    def on_train_start(self, trainer, pl_module) -> None:
        # the rate counts from here: warm-up and compile steps are part of the time a run takes
        self.progress = Progress(0, self.label, "tok", self.stream, self.every)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self.per_step:  # the budget in tokens: steps times the first batch's tokens
            self.per_step = batch[0].numel() * trainer.world_size
            self.progress.total = trainer.max_steps * self.per_step
        now = time.monotonic()
        if now - self.last_read < READ_EVERY and trainer.global_step < trainer.max_steps:
            return
        self.last_read = now
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.progress.update(trainer.global_step * self.per_step, loss=float(loss))

    def on_validation_end(self, trainer, pl_module) -> None:
        if self.progress is not None and getattr(pl_module, "val_loss", None) is not None:
            self.progress.fields["val_loss"] = pl_module.val_loss

    def on_train_end(self, trainer, pl_module) -> None:
        if self.progress is not None:
            self.progress.close("training ended")

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if self.progress is not None:
            self.progress.close(f"stopped: {type(exception).__name__}")
