"""Model shape and recurrence settings, and the named presets."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from parcae.config import check

Injection = Literal["diagonal", "linear", "add", "none", "baseline"]


@dataclass(frozen=True)
class ModelConfig:
    """A looped LM: prelude -> core looped `loops` times -> coda -> tied LM head."""

    preset: str = "tiny"
    """Name of the shape preset the other fields started from (recorded, not re-applied)."""
    d_model: int = 64
    """Residual width d."""
    n_heads: int = 2
    """Attention heads; d_model must divide evenly into them."""
    prelude_layers: int = 1
    """Non-shared blocks before the loop (0 allowed)."""
    core_layers: int = 1
    """Shared blocks k in the recurrent core."""
    coda_layers: int = 1
    """Non-shared blocks after the loop (0 allowed)."""
    ffn_mult: int = 4
    """FFN hidden width as a multiple of d_model."""
    vocab_size: int = 256
    """Token vocabulary; set from the data source when the run is built."""
    injection: Injection = "diagonal"
    """How the input is re-injected each loop step: diagonal (Parcae), linear, add, none,
    or baseline (no loop: `loops` untied copies of the core run once)."""
    loops: int = 4
    """Mean training recurrence mu_rec (Poisson mean, or the fixed depth; 1 is always one
    fixed step)."""
    backprop_depth: int | None = None
    """Loop steps with gradient mu_bwd; default ceil(loops / 2)."""
    depth_sampling: Literal["poisson", "fixed"] = "poisson"
    """poisson: T ~ Poisson(loops) per sequence, clamped >= 1; fixed: T = loops. loops = 1 is
    always fixed (see ``fixed_depth``)."""
    normalize_injection: bool = True
    """RMSNorm on the prelude output before it is injected."""
    bound_b: bool = False
    """Spectrally normalise B (||B||_2 = 1) in the diagonal injection."""
    state_init: Literal["like-init", "zero"] = "like-init"
    """h_0: Normal(0, init_std^2) cut at +-3 init_std, redrawn each forward; or zeros."""
    init_std: float = 0.02
    """Std of weight init and of the like-init state."""
    a_bar_init: float = 0.4472135954999579
    """Initial decay A-bar in every channel (sqrt(1/5) as in the reference)."""
    rope_base: float = 10000.0
    """RoPE frequency base."""
    active_only: bool = True
    """Run each loop step only on the sequences still running (exact: attention never mixes
    sequences, so logits and gradients are those of running every sequence T_max steps, the
    Parcae reference's scheme, which ``false`` restores). A batch then costs sum_i T_i loop
    steps instead of B * max_i T_i."""

    def __post_init__(self) -> None:
        check(self.d_model > 0, "d_model", "must be a positive integer")
        check(self.n_heads > 0, "n_heads", "must be a positive integer")
        check(self.d_model % self.n_heads == 0, "n_heads",
              f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        check((self.d_model // self.n_heads) % 2 == 0, "n_heads",
              "head dimension d_model/n_heads must be even for RoPE")
        for key in ("prelude_layers", "coda_layers"):
            check(getattr(self, key) >= 0, key, "must be 0 or more layers")
        check(self.core_layers >= 1, "core_layers", "must be at least 1 layer")
        check(self.ffn_mult >= 1, "ffn_mult", "must be at least 1")
        check(self.vocab_size >= 2, "vocab_size", "must be at least 2")
        check(self.loops >= 1, "loops", "must be at least 1")
        check(self.backprop_depth is None or self.backprop_depth >= 1, "backprop_depth",
              "must be at least 1 (or omitted for ceil(loops/2))")
        check(0.0 < self.a_bar_init < 1.0, "a_bar_init", "must lie strictly between 0 and 1")
        check(self.init_std > 0, "init_std", "must be positive")

    @property
    def mu_bwd(self) -> int:
        return self.backprop_depth or math.ceil(self.loops / 2)

    @property
    def looped(self) -> bool:
        return self.injection != "baseline"

    @property
    def fixed_depth(self) -> bool:
        """True when every sequence runs exactly ``loops`` steps: fixed sampling, the baseline,
        or loops = 1 (one loop step is one step, never Poisson(1), whose clamped mean is 1.37).
        The depth sampler and the compute accounting both ask this."""
        return self.depth_sampling == "fixed" or self.loops == 1 or not self.looped

    @property
    def sampling(self) -> str:
        """The depth sampling actually used: ``fixed`` or ``poisson`` (the run table's cell)."""
        return "fixed" if self.fixed_depth else "poisson"

    @property
    def effective_depth(self) -> int:
        """Core-block applications per forward pass at T = loops: core_layers * loops (the
        baseline runs its core_layers * loops untied blocks once)."""
        return self.core_layers * self.loops


#: Shapes: (d_model, n_heads, prelude, core, coda). The reference sizes use head dim 128.
#: The ``-shape`` presets are the block shapes of the Parcae paper's models without their value
#: embeddings, so they are smaller than the paper's names say: N (the run table's
#: ``params``, non-embedding) is 43.7M / 153M / 357M / 684M; the paper's 140M
#: counts its embedding and three value-embedding tables (144.3M at a 32,768 vocabulary, where
#: this shape plus its tied embedding is 68.8M).
#: The tiny preset starts from a larger weight scale: at d_model = 64 the reference 0.02 (meant
#: for d >= 768) leaves the tied embedding so small that 50k-150k-token runs stay at the unigram
#: loss; 0.1 learns within 50k tokens (0.05 and 0.2 learn less; LOG.md, 2026-11-25).
PRESETS: dict[str, dict[str, float]] = {
    "tiny": dict(d_model=64, n_heads=2, prelude_layers=1, core_layers=1, coda_layers=1,
                 init_std=0.1),
    "small": dict(d_model=128, n_heads=4, prelude_layers=1, core_layers=2, coda_layers=1),
    "140m-shape": dict(d_model=768, n_heads=6, prelude_layers=2, core_layers=2, coda_layers=2),
    "370m-shape": dict(d_model=1024, n_heads=8, prelude_layers=4, core_layers=4, coda_layers=4),
    "770m-shape": dict(d_model=1280, n_heads=10, prelude_layers=6, core_layers=6,
                       coda_layers=6),
    "1.3b-shape": dict(d_model=1536, n_heads=12, prelude_layers=8, core_layers=8,
                       coda_layers=8),
}

#: Former preset names -> the preset they became (naming them is an error that says so).
RENAMED_PRESETS: dict[str, str] = {
    "140m": "140m-shape", "370m": "370m-shape", "770m": "770m-shape", "1.3b": "1.3b-shape"}
