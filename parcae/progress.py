"""A progress line that stays readable both in a terminal and in a log file.

On a terminal it is one line rewritten in place (carriage return); anywhere else (a file,
a pipe, a CI log) it is a plain line at most every ``every`` seconds plus one at close, so
a log never fills with carriage-return spam.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

# the clock progress is timed with; a module attribute so tests can drive time by hand
clock = time.monotonic


def human(value: float) -> str:
    """Short human form of a count: 1234 -> '1.23k', 1.5e9 -> '1.50G'."""
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.2f}{suffix}"
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.3g}"


def duration(seconds: float) -> str:
    """'42s', '3m05s', '1h02m' — the precision a person reads an ETA at."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _field(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


class Progress:
    """Progress toward ``total`` units of work, with rate and ETA from the elapsed time.

    ``update(done, **fields)`` reports the amount done so far (not an increment) and any extra
    fields to show as ``key=value``; ``close(summary)`` prints the final line.
    """

    def __init__(self, total: float, label: str, unit: str = "", stream: TextIO | None = None,
                 every: float = 10.0) -> None:
        self.total = float(total)
        self.label = label
        self.unit = unit
        self.stream = sys.stderr if stream is None else stream
        self.every = every
        isatty = getattr(self.stream, "isatty", None)
        self.tty = bool(isatty and isatty())
        self.start = clock()
        self.done = 0.0
        self.fields: dict[str, object] = {}
        self._last_print = -float("inf")
        self._width = 0
        self._closed = False

    def line(self) -> str:
        """The current progress text (no newline)."""
        elapsed = clock() - self.start
        unit = f" {self.unit}" if self.unit else ""
        parts = [f"{self.label}: {human(self.done)}/{human(self.total)}{unit}"]
        if self.total > 0:
            parts[0] += f" ({100 * self.done / self.total:.0f}%)"
        rate = self.done / elapsed if elapsed > 0 else 0.0
        if rate > 0:
            parts.append(f"{human(rate)}{unit}/s")
        parts += [f"{key}={_field(value)}" for key, value in self.fields.items()]
        parts.append(f"elapsed {duration(elapsed)}")
        if rate > 0 and self.done < self.total:
            parts.append(f"ETA {duration((self.total - self.done) / rate)}")
        return ", ".join(parts)

    def update(self, done: float, **fields: object) -> None:
        """Record ``done`` units so far; print if a terminal or if ``every`` seconds passed."""
        self.done = float(done)
        self.fields.update(fields)
        now = clock()
        if self.tty:
            # a terminal redraws cheaply, but not faster than the eye reads
            if now - self._last_print >= 0.2:
                self._write_tty(self.line())
                self._last_print = now
        elif now - self._last_print >= self.every:
            self.stream.write(self.line() + "\n")
            self.stream.flush()
            self._last_print = now

    def _write_tty(self, text: str) -> None:
        pad = " " * max(0, self._width - len(text))
        self.stream.write("\r" + text + pad)
        self.stream.flush()
        self._width = len(text)

    def close(self, summary: str = "") -> None:
        """Print the final line (with ``summary`` appended) and end it with a newline."""
        if self._closed:
            return
        self._closed = True
        text = self.line() + (f" — {summary}" if summary else "")
        if self.tty:
            self._write_tty(text)
            self.stream.write("\n")
        else:
            self.stream.write(text + "\n")
        self.stream.flush()


class SweepProgress:
    """Trials done / running / left, and the time left of a sweep, as plain lines.

    Trials differ in size by orders of magnitude and the longest start first, so the count of
    trials says little about the time left. The estimate works in planned FLOPs instead: the
    throughput of one trial is the FLOPs of the finished full-budget trials over their wall
    time; the running ones are assumed that far along; the rest runs as many at once as ran
    so far.
    """

    def __init__(self, label: str, flops: dict[str, float], earlier: int = 0,
                 stream: TextIO | None = None, every: float = 30.0) -> None:
        self.label, self.flops, self.earlier, self.every = label, flops, earlier, every
        self.stream = sys.stdout if stream is None else stream
        self.starts: dict[str, float] = {}
        self.done: set[str] = set()
        self.work = 0.0  # planned FLOPs of the finished full-budget trials ...
        self.wall = 0.0  # ... and the seconds they ran
        self.measured = 0  # how many such trials
        self.slots = 1  # most trials seen running at once
        self._last_print = clock()

    def started(self, key: str) -> None:
        self.starts[key] = clock()  # a retried trial starts over
        self.slots = max(self.slots, len(self.starts))

    def finished(self, key: str, full_budget: bool) -> None:
        """Count ``key`` done; ``full_budget``: it trained all its planned FLOPs (not stopped
        early), so its wall time measures throughput."""
        start = self.starts.pop(key, None)
        self.done.add(key)
        if full_budget and start is not None:
            self.work += self.flops[key]
            self.wall += clock() - start
            self.measured += 1
        self.show()

    def eta(self) -> tuple[float, float] | None:
        """(seconds left, FLOP/s of one trial), or None before a full-budget trial finished."""
        if self.work <= 0 or self.wall <= 0:
            return None
        rate, now = self.work / self.wall, clock()
        running = [max(self.flops[k] - rate * (now - t), 0.0) for k, t in self.starts.items()]
        waiting = sum(f for k, f in self.flops.items() if k not in self.done
                      and k not in self.starts)
        left = (waiting + sum(running)) / (rate * self.slots)
        # one long trial cannot be shared out: it alone takes at least its own time
        return max(left, max(running, default=0.0) / rate), rate

    def line(self) -> str:
        running = len(self.starts)
        left = len(self.flops) - len(self.done) - running
        text = (f"{self.label}: {len(self.done)} done, {running} running, {left} left of "
                f"{len(self.flops)} trials")
        if self.earlier:
            text += f" ({self.earlier} finished by earlier runs)"
        estimate = self.eta()
        if estimate is None:
            return text + "; ETA once the first trial has trained its full budget"
        seconds, rate = estimate
        return (text + f"; ETA {duration(seconds)} (planned FLOPs left at {human(rate)}FLOP/s "
                f"per trial, {self.slots} at once, from {self.measured} finished)")

    def show(self) -> None:
        self.stream.write(self.line() + "\n")
        self.stream.flush()
        self._last_print = clock()

    def tick(self) -> None:
        """Print the line if ``every`` seconds passed since the last one."""
        if clock() - self._last_print >= self.every:
            self.show()
