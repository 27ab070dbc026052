"""Progress lines: one rewritten line on a terminal, plain throttled lines in a log."""

from __future__ import annotations

import io

import pytest

from parcae import progress
from parcae.progress import Progress, SweepProgress, duration, human


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(progress, "clock", fake)
    return fake


def test_log_stream_gets_plain_lines_throttled(clock: Clock) -> None:
    out = io.StringIO()
    bar = Progress(1000, "train", unit="tok", stream=out, every=10.0)
    for step in range(1, 101):  # 100 updates over 50 s
        clock.now += 0.5
        bar.update(step * 10, loss=3.25)
    bar.close("done")
    text = out.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    # first update prints at once, then one line per 10 s of 50 s, plus the closing line
    assert 5 <= len(lines) <= 7
    assert lines[-1].endswith("— done")
    assert "1.00k/1.00k tok (100%)" in lines[-1]
    assert "loss=3.25" in lines[-1]


def test_eta_follows_rate(clock: Clock) -> None:
    out = io.StringIO()
    bar = Progress(1000, "train", unit="tok", stream=out, every=0.0)
    clock.now += 20
    bar.update(250)  # 12.5 tok/s, 750 left -> 60 s
    assert "ETA 1m00s" in out.getvalue()
    assert "12.5 tok/s" in out.getvalue()


def test_terminal_rewrites_one_line(clock: Clock) -> None:
    out = Terminal()
    bar = Progress(100, "sweep", stream=out, every=10.0)
    for done in range(1, 11):
        clock.now += 1
        bar.update(done * 10)
    bar.close()
    text = out.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n")
    assert text.count("\r") == 11  # 10 redraws and the closing one


def test_close_is_idempotent(clock: Clock) -> None:
    out = io.StringIO()
    bar = Progress(10, "x", stream=out)
    bar.close()
    bar.close()
    assert len(out.getvalue().splitlines()) == 1


def test_formats() -> None:
    assert human(1234) == "1.23k"
    assert human(1.5e9) == "1.50G"
    assert human(7) == "7"
    assert duration(42) == "42s"
    assert duration(185) == "3m05s"
    assert duration(3720) == "1h02m"


def test_sweep_eta_from_planned_flops_and_throughput(clock: Clock) -> None:
    out = io.StringIO()
    sweep = SweepProgress("s", {"a": 100.0, "b": 200.0, "c": 50.0, "d": 50.0}, stream=out)
    sweep.started("b")
    sweep.started("a")
    assert "ETA once the first trial" in sweep.line()
    clock.now += 10
    sweep.finished("a", full_budget=True)  # 100 FLOPs in 10 s: 10 FLOP/s per trial
    # b has 100 left, c and d 100 together, two at a time at 10 FLOP/s: 10 s
    assert out.getvalue().splitlines()[-1] == (
        "s: 1 done, 1 running, 2 left of 4 trials; ETA 10s (planned FLOPs left at 10FLOP/s "
        "per trial, 2 at once, from 1 finished)")
    sweep.started("c")
    clock.now += 1
    sweep.finished("c", full_budget=False)  # stopped early: says nothing of throughput
    assert sweep.eta() == (pytest.approx(9.0), pytest.approx(10.0))
    assert "2 done, 1 running, 1 left" in out.getvalue().splitlines()[-1]


def test_sweep_line_at_most_every_period(clock: Clock) -> None:
    out = io.StringIO()
    sweep = SweepProgress("s", {"a": 1.0}, earlier=3, stream=out, every=30.0)
    sweep.started("a")
    for _ in range(59):  # a minute of Tune's loop
        clock.now += 1
        sweep.tick()
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and "(3 finished by earlier runs)" in lines[0]
