"""The device's peak matmul throughput, measured once per machine and cached.

Model FLOP utilisation (``mfu`` in the run table) divides a run's achieved model FLOP/s by
this figure. It is a *measured* dense-matmul peak, not a datasheet number: fp32 on CPU at
the thread count the run uses, bf16 on CUDA (the precision GPU runs train in). A measured
peak is what the hardware actually reaches on the best-shaped matmul, so an MFU near 1
means the model runs at matmul speed. The figure is cached as JSON under
``$XDG_CACHE_HOME/parcae/peak.json`` (default ``~/.cache/parcae``), keyed by device name
and thread count; delete the file to measure again (e.g. after measuring on a busy machine).
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

#: Matmul sizes timed: large enough to reach the peak, small enough to finish in well
#: under 2 s (CPU: 0.27 GFLOP per product; CUDA: 1.1 TFLOP per product).
CPU_SIZE = 512
CUDA_SIZE = 8192
#: Seconds spent timing after the warm-up.
BUDGET_SECONDS = 0.6


def cache_path() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "parcae" / "peak.json"


def device_key(device: str, threads: int | None = None) -> str:
    """The cache key: the device's name, and the thread count on CPU."""
    import torch

    if device.startswith(("cuda", "gpu")):
        index = int(device.split(":")[1]) if ":" in device else 0
        return f"cuda:{torch.cuda.get_device_name(index)}:bf16"
    return f"cpu:{_cpu_name()}:threads={threads or torch.get_num_threads()}:fp32"


def device_peak(device: str, threads: int | None = None) -> float:
    """Peak matmul FLOP/s of ``device`` ("cpu", "cuda", "cuda:1" or "gpu") at ``threads``
    intra-op threads (CPU; None: the current torch setting). Measured on first use (< 2 s)
    and cached per machine."""
    key = device_key(device, threads)
    path = cache_path()
    cache = _read(path)
    if key in cache:
        return float(cache[key]["flops_per_second"])
    flops = _measure(device, threads)
    cache = _read(path)  # another process may have written meanwhile
    cache[key] = {"flops_per_second": flops, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
                  "matmul": CUDA_SIZE if key.startswith("cuda") else CPU_SIZE}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(cache, indent=2))
    os.replace(tmp, path)  # concurrent writers: the file is always one whole JSON document
    return flops


def _measure(device: str, threads: int | None) -> float:
    import torch

    if device.startswith(("cuda", "gpu")):
        dev = torch.device("cuda" if device == "gpu" else device)
        return _best_rate(CUDA_SIZE, torch.bfloat16, dev, lambda: torch.cuda.synchronize(dev))
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _best_rate(CPU_SIZE, torch.float32, torch.device("cpu"), lambda: None)
    finally:
        torch.set_num_threads(before)


def _best_rate(n: int, dtype, device, sync) -> float:
    """The best FLOP/s of repeated n x n x n products within the time budget (the fastest
    repetition is the least disturbed by other processes)."""
    import torch

    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    out = torch.empty(n, n, dtype=dtype, device=device)
    for _ in range(3):  # warm-up: kernels chosen, caches and clocks up
        torch.mm(a, b, out=out)
    sync()
    best, spent = float("inf"), 0.0
    reps = 1
    while spent < BUDGET_SECONDS:
        start = time.perf_counter()
        for _ in range(reps):
            torch.mm(a, b, out=out)
        sync()
        elapsed = time.perf_counter() - start
        best, spent = min(best, elapsed / reps), spent + elapsed
        reps = min(reps * 2, 64) if elapsed < 0.02 else reps
    return 2.0 * n**3 / best


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
