"""Training speed on this machine, measured in one process in rounds (medians).

    python benchmarks/train_throughput.py [--quick] [--rounds 3] [--steps 110] [--compile]

For each shape (preset x mu), each round runs the real path with the bare loops in lockstep:
after each step of the real path, one step of each bare loop, so load drift hits all alike.

- real:  ``parcae.run.train_run`` as every run and sweep trial runs it (monitors on, tracking
         off); only its training steps are timed (validation and the test-time curve apart),
         by the run's own clock, from which the bare loops' seconds are taken out.
- bare:  a plain PyTorch loop over the same module, data stream, optimizer, schedule and
         clipping: the fast step as configured (active-only loop steps, hoisted injection,
         ``train.compile`` as its default resolves here).
- today: the same bare loop with every sequence running max_i T_i loop steps
         (``model.active_only=false``, no compile): the Parcae reference's scheme.
- compiled (with --compile): the bare loop with ``train.compile=on``; its warm-up (compile)
         seconds are reported apart from its steady speed.

A step is timed with its data, forward, backward and optimizer (and, on the real path, the
monitors and Lightning: from the end of the previous step to its own end), skipping the first
``WARMUP`` steps; tokens/s = tokens / seconds of the timed steps. Printed: tokens/s, the
ratios real/bare (goal >= 0.95) and bare/today (medians of the rounds' ratios; the 1.3x goal is
against the Parcae reference model: ``reference_throughput.py``), monitor overhead (the monitor's
measurements at their default cadence over the training step's time, the two timed
alternately; goal < 3%) and MFU (accounted model FLOP/s, from parcae.compute, over the
device's measured matmul peak, parcae.peak; a peak measured on a busy machine is low and
cached: see README "Speed"). On a GPU it trains in bf16 autocast, as the
real path does there.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Iterator
from dataclasses import replace
from functools import partial

import lightning as L
import torch

from parcae.module import LoopedLMModule, lm_loss, use_compile
from parcae.monitor import StabilityMonitor
from parcae.peak import device_peak
from parcae.run import RunConfig, data_source, plan, resolve, train_run
from parcae.trainer import WARMUP_STEPS, StepClock

WARMUP = WARMUP_STEPS
"""Steps not timed, as in the real path: the first build caches (and compile, with compile on)."""


def now(device: str) -> float:
    if device == "cuda":  # time the work, not its launch
        torch.cuda.synchronize()
    return time.perf_counter()


def config(preset: str, loops: int, steps: int, batch: int, seq: int, threads: int,
           **overrides: dict) -> RunConfig:
    cfg = resolve({
        "model": {"preset": preset, "loops": loops},
        "data": {"batch_size": batch, "seq_len": seq},
        "train": {"tokens": steps * batch * seq, "threads": threads,
                  "test_time_loops": [loops]},
        "tracking": {"enabled": False}})
    return replace(cfg, **{k: replace(getattr(cfg, k), **v) for k, v in overrides.items()})


class Lockstep(L.Callback):
    """Runs one step of each bare loop after every step of the real path, in its process, so
    that load on the machine hits all alike; the seconds they take are moved out of the real
    path's own step clock (``StepClock``, which times from one step's end to the next's)."""

    def __init__(self, loops: dict[str, Iterator[float]]) -> None:
        self.loops = loops
        self.times: dict[str, list[float]] = {name: [] for name in loops}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        start = time.perf_counter()
        for name, loop in self.loops.items():
            self.times[name].append(next(loop))
        clock = next(c for c in trainer.callbacks if isinstance(c, StepClock))
        clock.mark += time.perf_counter() - start


def lockstep(cfgs: dict[str, RunConfig]) -> dict[str, tuple[float, float | None]]:
    """The real path (``cfgs["real"]``: ``parcae.run.train_run``, its tokens/s as the run
    records them) with the bare loops of the other configs stepped in lockstep:
    {name: (tokens/s after the warm-up, warm-up seconds of a bare loop)}."""
    step = Lockstep({name: bare_steps(cfg) for name, cfg in cfgs.items() if name != "real"})
    result = train_run(cfgs["real"], callbacks=(step,))
    if result.status == "failed" or result.tokens_per_second is None:
        raise RuntimeError(result.error or "no training step ran after the warm-up")
    out: dict[str, tuple[float, float | None]] = {"real": (result.tokens_per_second, None)}
    for name, times in step.times.items():
        out[name] = steady(times, cfgs[name])
    return out


def steady(times: list[float], cfg: RunConfig) -> tuple[float, float]:
    """(tokens/s over the steps after the warm-up, warm-up seconds) of a loop's step times."""
    timed = times[WARMUP:]
    return len(timed) * cfg.data.batch_size * cfg.data.seq_len / sum(timed), sum(times[:WARMUP])


def bare_steps(cfg: RunConfig) -> Iterator[float]:
    """A plain PyTorch training loop, built at once; yields the seconds of each step (data
    included)."""
    device = "cuda" if torch.cuda.is_available() and cfg.train.device != "cpu" else "cpu"
    source = data_source(cfg)
    p = plan(cfg, source)
    L.seed_everything(cfg.train.seed, verbose=False)
    module = LoopedLMModule(p.model, cfg.train, p.steps).to(device).train()
    if use_compile(cfg.train.compile, device):
        module.model.compile_core()
    opt_cfg = module.configure_optimizers()
    opt, sched = opt_cfg["optimizer"], opt_cfg["lr_scheduler"]["scheduler"]
    stream = source.train_batches(cfg.train.seed)

    def steps() -> Iterator[float]:
        for _ in range(p.steps):
            start = now(device)
            train_step(module, opt, sched, *(t.to(device) for t in next(stream)))
            yield now(device) - start

    return steps()


def train_step(module: LoopedLMModule, opt, sched, x: torch.Tensor, y: torch.Tensor) -> None:
    """What the real path's training step does, without Lightning."""
    with torch.autocast(x.device.type, torch.bfloat16, enabled=x.device.type == "cuda"):
        loss = lm_loss(module.model(x, module.depths(x.shape[0]), module.model.cfg.mu_bwd), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(module.parameters(), module.cfg.grad_clip)
    opt.step()
    sched.step()


def ratio(speed: dict[str, list[float]], a: str, b: str) -> str:
    """Median of the rounds' ratios a/b (within a round both ran under the same load)."""
    rs = [x / y for x, y in zip(speed[a], speed[b], strict=True)]
    return f"{statistics.median(rs):.3f} (rounds: " + " ".join(f"{r:.3f}" for r in rs)


def monitor_overhead(cfg: RunConfig, repeats: int) -> tuple[float, float]:
    """(monitor seconds per training step at the default cadence / training step seconds,
    seconds of one Lipschitz estimate). The monitor's measurements and training steps of the
    same module are timed alternately, so drifting load hits both alike; timed directly since
    a few percent is below the noise of two whole runs."""
    p = plan(cfg)
    module = LoopedLMModule(p.model, cfg.train, p.steps)
    opt_cfg = module.configure_optimizers()
    opt, sched = opt_cfg["optimizer"], opt_cfg["lr_scheduler"]["scheduler"]
    stream = data_source(cfg).train_batches(cfg.train.seed)
    monitor = StabilityMonitor(cfg.monitor, p.model.loops)
    times: dict[str, list[float]] = {"step": [], "trace": [], "lipschitz": []}
    for _ in range(repeats):
        x, y = next(stream)
        sample = x[: cfg.monitor.sample]
        jobs = {"step": partial(train_step, module, opt, sched, x, y),
                "trace": partial(monitor.measure, module.model, sample, False),
                "lipschitz": partial(monitor.measure, module.model, sample, True)}
        for key, work in jobs.items():
            start = time.perf_counter()
            work()
            times[key].append(time.perf_counter() - start)
    step, trace, both = (statistics.median(times[k]) for k in ("step", "trace", "lipschitz"))
    m = cfg.monitor
    added = trace / m.every + (both - trace) / max(m.lipschitz_every, 1)
    return added / step, both - trace


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", default="tiny,small")
    parser.add_argument("--loops", default="4,8")
    parser.add_argument("--steps", type=int, default=110,
                        help="optimizer steps per run (> 100 so the real path's monitors make "
                             "a Lipschitz estimate inside the timed steps, at step 100)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--compile", action="store_true",
                        help="also time the bare loop with train.compile=on")
    parser.add_argument("--quick", action="store_true",
                        help="smoke check: tiny at mu 4, 2 rounds of 20 steps")
    args = parser.parse_args()
    if args.quick:
        args.presets, args.loops, args.rounds, args.steps = "tiny", "4", 2, 20
    torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    peak = device_peak(device, None if device == "cuda" else args.threads)
    print(f"device={device} threads={args.threads} batch={args.batch}x{args.seq} "
          f"steps/run={args.steps} (first {WARMUP} untimed) rounds={args.rounds}; "
          f"peak {peak / 1e9:.0f} GFLOP/s (parcae.peak)", flush=True)
    shapes = [(p, int(mu)) for p in args.presets.split(",") for mu in args.loops.split(",")]
    variants = {
        "real": {}, "bare": {}, "today": {"model": {"active_only": False},
                                          "train": {"compile": "off"}}}
    if args.compile:
        variants["compiled"] = {"train": {"compile": "on"}}
    for preset, mu in shapes:
        cfgs = {name: config(preset, mu, args.steps, args.batch, args.seq, args.threads, **o)
                for name, o in variants.items()}
        speed: dict[str, list[float]] = {name: [] for name in cfgs}
        warm: dict[str, list[float]] = {name: [] for name in cfgs}
        for _ in range(args.rounds):
            for name, (tps, warmup) in lockstep(cfgs).items():
                speed[name].append(tps)
                if warmup is not None:
                    warm[name].append(warmup)
        med = {name: statistics.median(v) for name, v in speed.items()}
        p = plan(cfgs["bare"])
        print(f"\n{preset} mu={mu} mu_bwd={p.model.mu_bwd} params={p.accounting.params:,} "
              f"compile(default here)="
              f"{'on' if use_compile(cfgs['bare'].train.compile, device) else 'off'}")
        for name, value in med.items():
            mfu = value * p.accounting.flops_per_token / peak
            line = f"  {name:>8}: {value:9.0f} tokens/s  MFU {mfu:6.2%}"
            if warm[name]:
                line += f"  warm-up {statistics.median(warm[name]):6.1f} s"
            print(line + "  rounds: " + " ".join(f"{v:.0f}" for v in speed[name]))
        print(f"  real/bare  {ratio(speed, 'real', 'bare')}; goal >= 0.95)")
        print(f"  bare/today {ratio(speed, 'bare', 'today')}; the fast step over the all-run "
              f"scheme)")
        if "compiled" in med:
            print(f"  compiled/bare {ratio(speed, 'compiled', 'bare')}; steady state, compile "
                  f"time in its warm-up)")
        overhead, lipschitz_s = monitor_overhead(cfgs["bare"], 3 * args.rounds)
        m = cfgs["bare"].monitor
        print(f"  monitor overhead {overhead:.2%} of a training step at the default cadence "
              f"(trace every {m.every} steps, Lipschitz every {m.lipschitz_every}: "
              f"{lipschitz_s * 1e3:.0f} ms each; goal < 3%)", flush=True)


if __name__ == "__main__":
    main()
