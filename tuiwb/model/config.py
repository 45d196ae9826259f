"""``ModelConfig``: which checkpoint to load and how (torch-free; every command's model flags come from it)."""

from __future__ import annotations

from dataclasses import dataclass, field

from tuiwb.choices import DEFAULT_DEVICE, DtypeName, QuantName
from tuiwb.configs import flag


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
