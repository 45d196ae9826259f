"""``ModelConfig``: which checkpoint to load and how; ``GenerateConfig``: how a continuation is decoded
(torch-free; the commands' model and generation flags come from them)."""

from __future__ import annotations

from dataclasses import dataclass, field

from tuiwb.choices import DEFAULT_DEVICE, DtypeName, QuantName
from tuiwb.configs import flag
from tuiwb.errors import ParamError


@dataclass
class ModelConfig:
    """The model a command runs."""

    model: str | None = field(default=None, metadata=flag(required=True))
    """Local checkpoint directory or Hugging Face hub id."""
    quant: QuantName | None = None
    """Load weights in 8-bit or 4-bit (bitsandbytes)."""
    device: str = DEFAULT_DEVICE
    """Torch device: auto (cuda, then mps, then cpu), cpu, cuda, cuda:1, mps."""
    device_map: str | None = field(default=None, metadata=flag(metavar="MAP"))
    """Split the model over several GPUs (accelerate): auto, balanced, or JSON {"model.layers.0": 0, ...}."""
    dtype: DtypeName | None = None
    """Weight dtype (default: the checkpoint's)."""
    trust_remote_code: bool = False
    """Allow the checkpoint's own Python code to run (off by default)."""
    allow_pickle: bool = False
    """Allow pickle weights (pytorch_model.bin), which can run arbitrary code when loaded (off by default)."""


@dataclass
class GenerateConfig:
    """How a continuation is decoded (``tuiwb generate``, ``Session.generate``)."""

    max_new_tokens: int = field(default=24, metadata=flag(metavar="N"))
    """Tokens to generate after the prompt."""
    sample: bool = False
    """Sample from the distribution instead of taking the most likely token (greedy, the default)."""
    temperature: float = field(default=1.0, metadata=flag(metavar="T"))
    """Softmax temperature when sampling (> 0)."""
    seed: int | None = field(default=None, metadata=flag(metavar="S"))
    """Random seed when sampling: baseline and patched runs draw the same random numbers."""
    ignore_eos: bool = False
    """Keep generating past the end-of-text token (always exactly max_new_tokens tokens)."""

    def __post_init__(self) -> None:
        if isinstance(self.max_new_tokens, bool) or int(self.max_new_tokens) < 1:
            raise ParamError("max_new_tokens", f"must be at least 1, not {self.max_new_tokens}")
        if not float(self.temperature) > 0:
            raise ParamError("temperature", f"must be positive, not {self.temperature}")
