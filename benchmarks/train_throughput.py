"""Tokens/s of the Lightning training step against a bare PyTorch loop, same model and batches.

    python benchmarks/train_throughput.py [--preset tiny] [--steps 60] [--loops 4]

Both loops run the same LoopedLMModule (same init, depth sampling, AdamW groups, schedule
and clipping) over the same pre-built batches, in this process; the ratio
lightning / bare is the Lightning overhead (target >= 0.95 on CPU). On a GPU it also
prints model FLOPs utilisation against the given peak (bf16).
"""

from __future__ import annotations

import argparse
import time

import lightning as L
import torch
from torch.utils.data import DataLoader

from parcae.data import DataConfig, build_data
from parcae.module import LoopedLMModule, TrainConfig, lm_loss
from parcae.run import plan, resolve


def batches(preset: str, loops: int, n: int, batch: int, seq: int):
    cfg = resolve({"model": {"preset": preset, "loops": loops},
                   "data": {"batch_size": batch, "seq_len": seq}})
    source = build_data(DataConfig(batch_size=batch, seq_len=seq))
    stream = source.train_batches(0)
    return cfg, plan(cfg, source), [next(stream) for _ in range(n)]


def bare(module: LoopedLMModule, data, device: str, bf16: bool) -> float:
    opt_cfg = module.configure_optimizers()
    opt, sched = opt_cfg["optimizer"], opt_cfg["lr_scheduler"]["scheduler"]
    module.to(device).train()
    start = None
    for i, (x, y) in enumerate(data):
        if i == 2:  # skip warm-up steps, as Lightning's count below does
            sync(device)
            start = time.perf_counter()
        x, y = x.to(device), y.to(device)
        with torch.autocast(device, torch.bfloat16, enabled=bf16):
            steps = module.depths(x.shape[0]).to(device)
            loss = lm_loss(module.model(x, steps, module.model.cfg.mu_bwd), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), module.cfg.grad_clip)
        opt.step()
        sched.step()
    sync(device)
    return time.perf_counter() - start


class Timer(L.Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == 2:
            sync(pl_module.device.type)
            self.start = time.perf_counter()

    def on_train_end(self, trainer, pl_module):
        sync(pl_module.device.type)
        self.seconds = time.perf_counter() - self.start


def lightning(module: LoopedLMModule, data, gpu: bool) -> float:
    timer = Timer()
    trainer = L.Trainer(max_steps=len(data), accelerator="gpu" if gpu else "cpu", devices=1,
                        precision="bf16-mixed" if gpu else "32-true", logger=False,
                        callbacks=[timer], enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0)
    trainer.fit(module, DataLoader(data, batch_size=None))
    return timer.seconds


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--loops", type=int, default=4)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--peak-tflops", type=float, default=989.0,
                        help="GPU bf16 dense peak for MFU (H100 SXM: 989)")
    args = parser.parse_args()
    gpu = torch.cuda.is_available()
    device = "cuda" if gpu else "cpu"
    cfg, p, data = batches(args.preset, args.loops, args.steps, args.batch, args.seq)
    tokens = (args.steps - 2) * args.batch * args.seq
    train = TrainConfig(tokens=p.tokens)
    results = {"bare": [], "lightning": []}
    for _ in range(args.repeats):  # interleaved so drift in machine load hits both
        torch.manual_seed(0)
        results["bare"].append(bare(LoopedLMModule(p.model, train, len(data)), data, device, gpu))
        torch.manual_seed(0)
        results["lightning"].append(lightning(LoopedLMModule(p.model, train, len(data)), data,
                                              gpu))
    best = {k: min(v) for k, v in results.items()}
    print(f"device={device} preset={args.preset} loops={args.loops} params={p.accounting.params}"
          f" batch={args.batch}x{args.seq} timed_steps={args.steps - 2}")
    for name, seconds in best.items():
        line = f"{name:>9}: {tokens / seconds:10.0f} tokens/s"
        if gpu:
            mfu = tokens * p.accounting.flops_per_token / seconds / (args.peak_tflops * 1e12)
            line += f"  MFU {mfu:.1%}"
        print(line)
    print(f"ratio lightning/bare: {best['bare'] / best['lightning']:.3f}")


if __name__ == "__main__":
    main()
