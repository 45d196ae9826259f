"""``TrainConfig``: how ``tuiwb train`` trains an SAE (torch-free; the CLI flags are generated from it)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from tuiwb.configs import flag
from tuiwb.errors import ParamError

DEFAULT_LR = 4e-3
"""TopK/ReLU learning rate used unless ``lr="auto"`` (see docs/benchmarks.md ``## train``)."""
DEFAULT_L1 = 0.25
"""β of the ReLU β-sparsity loss. On the demo model's middle layer (1M tokens, 8×) it gave held-out
L0 ≈ 26 at FVU ≈ 0.003; β = 0.5 / 1 / 2 gave L0 ≈ 14 / 11 / 7 at FVU ≈ 0.004 / 0.007 / 0.016, with
more dead latents (docs/benchmarks.md ``## train``)."""


def token_count(text: str) -> int:
    """``4000000``, ``4e6``, ``4M``, ``500k`` → an int (token budgets)."""
    import re

    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([kKmMgG]?)\s*", str(text).replace("_", ""))
    if not m:
        raise ValueError(f"{text!r} is not a token count (e.g. 4000000, 4e6, 4M, 500k)")
    mult = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9}[m.group(2).lower()]
    return int(float(m.group(1)) * mult)


def lr_value(text: str) -> float | str:
    """A learning rate or ``auto`` (the ``lr`` field's parser)."""
    if str(text).strip().lower() == "auto":
        return "auto"
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number or 'auto'") from None


Arch = Literal["topk", "relu"]
Strategy = Literal["auto", "ddp", "ddp_spawn"]
Accelerator = Literal["cpu", "gpu", "auto"]
BDecInit = Literal["geometric_median", "mean", "zeros"]
Logger = Literal["csv", "tensorboard", "none"]


@dataclass
class TrainConfig:
    """How to train one SAE per layer."""

    arch: Arch = "topk"
    """topk (TopK + AuxK) or relu (ReLU + β-sparsity loss)."""
    k: int = 32
    """Active latents per token (topk)."""
    l1: float = field(default=DEFAULT_L1, metadata=flag(metavar="BETA"))
    """β, the sparsity coefficient of the relu loss (ignored for topk)."""
    expansion: int = 8
    """d_sae = EXPANSION × d_model, unless d_sae is given."""
    d_sae: int | None = field(default=None, metadata=flag(metavar="N"))
    """Explicit number of latents (overrides expansion)."""
    lr: float | str = field(default=DEFAULT_LR, metadata=flag(metavar="auto|FLOAT", parse=lr_value))
    """Peak Adam learning rate, or 'auto': short probe runs on a factor-2 grid scored on held-out FVU."""
    tokens: int = field(default=2_000_000, metadata=flag(metavar="N", parse=token_count))
    """Training budget in tokens over all devices, e.g. 500k, 2M; decides the number of steps."""
    batch_size: int = field(default=4096, metadata=flag(metavar="B"))
    """Tokens per step and device."""
    val_fraction: float = field(default=0.1, metadata=flag(metavar="F"))
    """Fraction of documents held out for metrics (0 = none)."""
    devices: int = field(default=1, metadata=flag(metavar="N"))
    """Devices (processes) to train on."""
    strategy: Strategy = "auto"
    """Lightning strategy; ddp: data-parallel over the devices (gloo on CPU, NCCL on GPU)."""
    accelerator: Accelerator = "auto"
    """Where to train: auto (a GPU when there is one), cpu or gpu."""
    seed: int = field(default=0, metadata=flag(metavar="S"))
    """Seeds weights, data order and the init samples."""
    threads: int | None = field(default=None, metadata=flag(metavar="T"))
    """Torch CPU threads while training (default: picked by timing steps at 1, half and all cores,
    re-checked every 200 steps: on a CPU shared with busy processes fewer threads can be far faster)."""
    b_dec_init: BDecInit = "geometric_median"
    """Initial b_dec: geometric_median, mean or zeros."""
    warmup_fraction: float = 0.02
    """Fraction of steps of linear LR warm-up."""
    decay_fraction: float = 0.3
    """Fraction of steps, at the end, of linear LR decay to zero."""
    l1_warmup_fraction: float = 0.05
    """Fraction of steps over which β ramps up linearly from 0 (relu)."""
    aux_k: int | None = None
    """Dead latents used by the AuxK loss per token (default d_model // 2)."""
    aux_coef: float = 1 / 32
    """Weight of the AuxK loss."""
    dead_tokens: int = field(default=250_000, metadata=flag(parse=token_count))
    """A latent counts as dead after this many training tokens without firing."""
    init_tokens: int = field(default=32_768, metadata=flag(parse=token_count))
    """Rows sampled to compute the norm factor and b_dec's init."""
    val_tokens: int = field(default=16_384, metadata=flag(parse=token_count))
    """Held-out rows used for the periodic metrics in the progress bar."""
    val_every: int | None = None
    """Steps between periodic held-out metrics (default: about 8 times per run)."""
    eval_tokens: int | None = field(default=262_144, metadata=flag(parse=token_count))
    """Held-out tokens for the final metrics saved with the SAE (None: the whole held-out split)."""
    grad_clip: float = 1.0
    """Gradient-norm clipping (0 = off)."""
    lr_find_steps: int = 40
    """Steps of each probe run of lr auto (capped at the run's steps); 3–5 probes run."""
    logger: Logger = field(default="csv", metadata=flag(name="--log"))
    """Local metrics log under the log directory: csv, tensorboard or none."""
    log_dir: str | None = field(default=None, metadata=flag(metavar="DIR"))
    """Where the log goes (default OUT/logs)."""
    wandb: bool = False
    """Also log to Weights & Biases (needs wandb installed; off unless asked)."""
    wandb_project: str = "tuiwb"
    """W&B project name."""

    def __post_init__(self):
        if self.arch not in Arch.__args__:
            raise ParamError("arch", f"must be topk or relu, not {self.arch!r}")
        if isinstance(self.lr, str):
            try:
                self.lr = lr_value(self.lr)
            except ValueError:
                raise ParamError("lr", f"must be a number or 'auto', not {self.lr!r}") from None
        if self.lr != "auto" and not (math.isfinite(self.lr) and self.lr > 0):
            raise ParamError("lr", f"must be positive, got {self.lr}")
        for name in ("k", "expansion", "tokens", "batch_size", "devices", "lr_find_steps"):
            if int(getattr(self, name)) < 1:
                raise ParamError(name, "must be at least 1")
        if self.d_sae is not None and self.d_sae < 1:
            raise ParamError("d_sae", "must be at least 1")
        if self.arch == "topk" and self.d_sae is not None and self.k > self.d_sae:
            raise ParamError("k", f"{self.k} is larger than `d_sae` {self.d_sae}: pick k <= d_sae")
        if not (self.l1 >= 0 and math.isfinite(self.l1)):
            raise ParamError("l1", f"must be a non-negative number, got {self.l1}")
        if not 0 <= self.val_fraction < 1:
            raise ParamError("val_fraction", f"must be in [0, 1), got {self.val_fraction}")
        for name, kind in (("strategy", Strategy), ("accelerator", Accelerator), ("b_dec_init", BDecInit),
                           ("logger", Logger)):
            if getattr(self, name) not in kind.__args__:
                raise ParamError(name, f"must be one of {', '.join(kind.__args__)}, not {getattr(self, name)!r}")
        for name in ("warmup_fraction", "decay_fraction", "l1_warmup_fraction"):
            if not 0 <= getattr(self, name) <= 1:
                raise ParamError(name, "must be in [0, 1]")

    def d_sae_for(self, d_model: int) -> int:
        """The number of latents for a model of width ``d_model``, checked against ``k``."""
        d_sae = int(self.d_sae) if self.d_sae else self.expansion * d_model
        if self.arch == "topk" and self.k > d_sae:
            raise ParamError("k", f"{self.k} is larger than the SAE's {d_sae} latents "
                                  f"(`expansion` {self.expansion} × d_model {d_model}): lower k or raise expansion")
        return d_sae

    def steps_for(self) -> int:
        return max(1, math.ceil(self.tokens / (self.batch_size * self.devices)))
