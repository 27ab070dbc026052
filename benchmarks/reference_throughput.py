"""Training speed of this project's looped LM against the Parcae reference implementation, on CPU.

    git clone https://github.com/sandyresearch/parcae /tmp/parcae-ref   # the authors' code
    python benchmarks/reference_throughput.py --reference /tmp/parcae-ref [--quick]

The reference's ``parcae_lm`` is imported from that checkout (nothing is downloaded or copied).
For each shape (preset x mu) both models train in one process, in lockstep (one step of each in
turn, so drifting machine load hits both alike), fp32 on the CPU, on the same data stream with
the same AdamW settings, schedule and gradient clipping:

- parcae:    ``train_throughput.bare_steps``, the plain PyTorch loop over this project's model,
             eager (``train.compile`` is off on CPU by default) or, with ``--compile``, compiled
             (the compile time falls in the warm-up steps, printed apart).
- reference: the authors' ``Parcae`` model from their 140M recipe (``parcae-small-140m``: its
             RMSNorm, ReLU^2 MLP, value embeddings, init) with parcae's shape put in: widths,
             layers, vocabulary, tied embeddings, diagonal injection, like-init state, per-sequence
             depths T ~ max(Poisson(mu), 1) with the last ceil(mu/2) steps backpropagated,
             PyTorch cross-entropy head; ``model.step`` advances each step as its trainer does,
             seeding its depth sampler. Attention takes its SDPA path (FA3 is Hopper-only).

A step (data, forward, backward, clip, optimizer, schedule) is timed, skipping the first
``WARMUP`` steps; tokens/s = tokens / seconds of the timed steps, median over rounds; the ratio
is the median of the rounds' ratios. Printed per
shape: both models' parameter counts (checked equal up to the reference's value embeddings), the
mean loop depth each ran, the (sequence, loop step) pairs each ran per step (the reference runs
every sequence max_i T_i steps, parcae only the running ones), tokens/s and parcae/reference
(goal >= 1.3).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from parcae.model.schedule import Schedule
    from parcae.run import Plan, RunConfig

SHAPE_TOLERANCE = 0.02
"""Largest relative gap allowed between the two models' non-embedding parameter counts."""


def reference_config(p: Plan, seq: int) -> Any:
    """The reference's 140M recipe at parcae's shape."""
    from parcae_lm.models.parcae.config import ParcaeConfig

    m = p.model
    return ParcaeConfig.from_name(
        "parcae-small-140m", block_size=seq, vocab_size=m.vocab_size,
        padded_vocab_size=m.vocab_size, n_embd=m.d_model, num_attention_heads=m.n_heads,
        num_key_value_heads=m.n_heads, intermediate_size=m.ffn_mult * m.d_model,
        recurrent_embedding_dimension=m.d_model,
        recurrent_intermediation_embedding_dimension=m.ffn_mult * m.d_model,
        n_layers_in_prelude=m.prelude_layers, n_layers_in_recurrent_block=m.core_layers,
        n_layers_in_coda=m.coda_layers, injection_type=m.injection, state_init=m.state_init,
        prelude_norm=m.normalize_injection, tie_embeddings=True, qk_norm=True,
        recurrent_iteration_method="per-sequence", sampling_scheme="poisson-truncated-full",
        mean_recurrence=m.loops, mean_backprop_depth=m.mu_bwd, use_fused_head="pytorch")


def reference_steps(cfg: RunConfig, p: Plan) -> Iterator[tuple[float, list[int], int]]:
    """The reference's training loop; yields (seconds, depths T_i, (sequence, loop step) pairs
    run) per step. Its depths are redrawn outside the timing from the seed ``forward`` used."""
    import torch
    from parcae_lm.models.parcae.parcae import Parcae

    from parcae.module import lr_factor
    from parcae.run import data_source

    torch.manual_seed(cfg.train.seed)
    model = Parcae(reference_config(p, cfg.data.seq_len)).train()
    t = cfg.train
    params = list(model.parameters())
    # grouped as its trainer groups them: norms and the tagged injection and C undecayed
    no_decay = [q for q in params if q.ndim < 2 or getattr(q, "_no_weight_decay", False)]
    decay = [q for q in params if all(q is not r for r in no_decay)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": t.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=t.lr, betas=(t.beta1, t.beta2), fused=True)  # as parcae's
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, p.steps, t))
    stream = data_source(cfg).train_batches(t.seed)
    for _ in range(p.steps):
        start = time.perf_counter()
        x, y = next(stream)
        model.step += 1  # as its trainer does: the step seeds the depth sampler
        loss = model(x, labels=y)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, t.grad_clip)
        opt.step()
        sched.step()
        seconds = time.perf_counter() - start
        n, k = model._sample_batch_depths(x.shape[0])  # no-grad and grad steps per sequence
        yield seconds, (n + k).tolist(), x.shape[0] * int(n.max() + k.max())


def parcae_depths(cfg: RunConfig, p: Plan, schedule: Schedule) -> Iterator[tuple[list[int], int]]:
    """Per step of ``bare_steps``: (depths T_i, (sequence, loop step) pairs run), replayed from
    a sampler seeded as its module seeds its own."""
    from parcae.module import DepthSampler

    sampler = DepthSampler(p.model, cfg.train.seed)
    for _ in range(p.steps):
        depths = sampler(cfg.data.batch_size).tolist()
        yield depths, sum(schedule.executed(depths, p.model.mu_bwd))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reference", type=Path, required=True,
                        help="checkout of https://github.com/sandyresearch/parcae")
    parser.add_argument("--presets", default="tiny,small")
    parser.add_argument("--loops", default="4,8")
    parser.add_argument("--steps", type=int, default=110)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--compile", action="store_true",
                        help="parcae with train.compile=on (compile time in its warm-up steps, "
                             "printed apart); the reference stays eager")
    parser.add_argument("--quick", action="store_true",
                        help="smoke check: tiny at mu 4, 2 rounds of 20 steps")
    args = parser.parse_args()
    if not (args.reference / "parcae_lm").is_dir():
        parser.error(f"--reference {args.reference}: no parcae_lm package in it")
    if args.quick:
        args.presets, args.loops, args.rounds, args.steps = "tiny", "4", 2, 20
    sys.path.insert(0, str(args.reference.resolve()))
    try:
        from parcae_lm.models.parcae.parcae import Parcae
    except ModuleNotFoundError as exc:
        print(f"the Parcae reference needs the package {exc.name!r}, not installed here: "
              f"pip install {exc.name}", file=sys.stderr)
        sys.exit(2)
    import torch

    # this script's folder is on sys.path
    from train_throughput import WARMUP, bare_steps, config, ratio, steady

    from parcae.model import build_model
    from parcae.run import plan

    torch.set_num_threads(args.threads)
    print(f"cpu threads={args.threads} batch={args.batch}x{args.seq} steps/run={args.steps} "
          f"(first {WARMUP} untimed) rounds={args.rounds}; reference at {args.reference}")
    print("differences (reference vs parcae): MLP ReLU^2 vs GELU (one autograd node on CPU); "
          "value-embedding tables with gates vs none; parameter-free vs learnable QK-norm; "
          "separate vs fused q/k/v; RMSNorm in Python ops vs one with a written-out gradient "
          "on CPU; RoPE on the same adjacent pairs in real ops vs one complex product on CPU; "
          "'scaled-zero' orthogonal vs normal init; RoPE base 50000 vs 10000; loop steps on "
          "every sequence for max_i T_i vs on the running ones", flush=True)
    for preset in args.presets.split(","):
        for mu in map(int, args.loops.split(",")):
            cfg = config(preset, mu, args.steps, args.batch, args.seq, args.threads,
                         train={"device": "cpu", "compile": "on" if args.compile else "off"})
            p = plan(cfg)
            ref = Parcae(reference_config(p, args.seq))
            ref_ve = sum(q.numel() for q in ref.value_embeds.parameters())
            ref_embed = ref.transformer.wte.weight.numel()
            ref_core = sum(q.numel() for q in ref.parameters()) - ref_embed - ref_ve
            model = build_model(p.model)
            embed = model.embed.weight.numel()
            ours = sum(q.numel() for q in model.parameters()) - embed
            gap = ref_core / ours - 1
            print(f"\n{preset} mu={mu} mu_bwd={p.model.mu_bwd} d={p.model.d_model} "
                  f"vocab={p.model.vocab_size}\n  non-embedding params: parcae {ours:,}  "
                  f"reference {ref_core:,} ({gap:+.2%}); embedding {embed:,} vs {ref_embed:,}; "
                  f"reference value embeddings {ref_ve:,}")
            if abs(gap) > SHAPE_TOLERANCE or embed != ref_embed:
                sys.exit(f"shapes differ beyond {SHAPE_TOLERANCE:.0%}: not a like-for-like test")
            speed: dict[str, list[float]] = {"parcae": [], "reference": []}
            warm: dict[str, list[float]] = {"parcae": [], "reference": []}
            for _ in range(args.rounds):
                times: dict[str, list[float]] = {"parcae": [], "reference": []}
                stats: dict[str, list[tuple[list[int], int]]] = {"parcae": [], "reference": []}
                for ours_s, (ref_s, ref_d, ref_x), ours_dx in zip(
                        bare_steps(cfg), reference_steps(cfg, p),
                        parcae_depths(cfg, p, model.schedule), strict=True):
                    times["parcae"].append(ours_s)
                    times["reference"].append(ref_s)
                    stats["parcae"].append(ours_dx)
                    stats["reference"].append((ref_d, ref_x))
                for name, seconds in times.items():
                    tps, warmup = steady(seconds, cfg)
                    speed[name].append(tps)
                    warm[name].append(warmup)
            for name in speed:
                depths = [d for ds, _ in stats[name] for d in ds]
                loop = statistics.mean(x for _, x in stats[name])
                print(f"  {name:>9}: {statistics.median(speed[name]):8.0f} tokens/s  "
                      f"mean depth {statistics.mean(depths):.2f}  (sequence, loop step) pairs/step "
                      f"{loop:6.1f}  rounds: " + " ".join(f"{v:.0f}" for v in speed[name])
                      # per round: the first holds the compile, later rounds reuse its graphs
                      + "  warm-up s: " + " ".join(f"{w:.1f}" for w in warm[name]))
            print(f"  parcae/reference {ratio(speed, 'parcae', 'reference')}; goal >= 1.3)",
                  flush=True)


if __name__ == "__main__":
    main()
