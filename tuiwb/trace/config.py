"""``TraceConfig``: what ``tuiwb trace`` records and where (torch-free; the CLI is generated from it)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Literal

from tuiwb.choices import DEFAULT_DEVICE, DtypeName, QuantName
from tuiwb.configs import flag
from tuiwb.errors import ParamError, TuiwbError

STORE_DTYPES = ("float16", "float32")


@dataclass
class TraceConfig:
    """What to record and where."""

    data: list[str] = field(default_factory=list, metadata=flag(repeat=True, metavar="FILE", required=True))
    """Input: .txt (one document per line), .jsonl, .parquet, or hf:NAME[:SPLIT]."""
    out: str = field(default="", metadata=flag(required=True))
    """Output directory, conventionally NAME.parquet."""
    layers: list[int | str] | str = field(default_factory=list,
                                          metadata=flag(name="--layer", repeat=True, metavar="L", required=True))
    """Blocks whose output (blocks.L.hook_resid_post) is recorded; 'all' = every block."""
    model: str | None = field(default=None, metadata=flag(required=True))
    """Local checkpoint directory or Hugging Face hub id (unused when the caller passes a loaded model)."""
    seq_len: int = 128
    """Tokens per window, BOS at position 0 included."""
    batch_size: int = field(default=16, metadata=flag(metavar="B"))
    """Windows per forward pass."""
    max_tokens: int | None = field(default=None, metadata=flag(metavar="N"))
    """Stop after this many tokens (whole windows), over all slices."""
    store_dtype: Literal["float16", "float32"] = field(default="float16", metadata=flag(aliases=("--dtype",)))
    """Storage dtype of the recorded activations: float16 (half the disk) or float32."""
    model_dtype: DtypeName | None = None
    """Weight dtype to load the model in (default: the checkpoint's)."""
    quant: QuantName | None = None
    """Load weights in 8-bit or 4-bit (bitsandbytes)."""
    device: str = DEFAULT_DEVICE
    """Torch device for the forward passes: auto (cuda, then mps, then cpu), cpu, cuda, cuda:1, mps."""
    device_map: str | None = field(default=None, metadata=flag(metavar="MAP"))
    """Split the model over several GPUs (accelerate): auto, balanced, or JSON {"model.layers.0": 0, ...}."""
    trust_remote_code: bool = False
    """Allow the checkpoint's own Python code to run (off by default)."""
    allow_pickle: bool = False
    """Allow pickle weights (pytorch_model.bin), which can run arbitrary code when loaded (off by default)."""
    text_field: str = "text"
    """The JSON field of .jsonl input / the column of .parquet input holding the text."""
    resume: bool = False
    """Continue an interrupted trace in OUT: keep its whole shards, record the rest."""
    overwrite: bool = False
    """Replace an existing OUT (with a shard slice: only that slice's shards)."""
    shard: tuple[int, int] | str = field(default=(0, 1), metadata=flag(metavar="I/N"))
    """Record the I-th of N disjoint slices of the windows (run N processes into the same OUT)."""
    windows_per_shard: int | None = field(default=None, metadata=flag(metavar="W"))
    """Windows per shard file (default: about 256 MB of activations; inherited on resume)."""

    def __post_init__(self) -> None:
        if isinstance(self.data, (str, os.PathLike)):
            self.data = [str(self.data)]
        self.data = [str(d) for d in self.data]
        if not self.data:
            raise TuiwbError("no input data: pass `data` (.txt, .jsonl or .parquet files)")
        if not str(self.out):
            raise TuiwbError("no output directory: pass `out` (e.g. acts.parquet)")
        self.out = str(self.out)
        if isinstance(self.layers, (str, int)):
            self.layers = [self.layers]
        self.layers = [_parse_layer(x) for x in self.layers]
        if not self.layers:
            raise TuiwbError("no layers to record: pass `layers` (e.g. 2, or all)")
        if int(self.seq_len) < 2:
            raise ParamError("seq_len", "must be at least 2")
        if int(self.batch_size) < 1:
            raise ParamError("batch_size", "must be at least 1")
        if self.max_tokens is not None and self.max_tokens < self.seq_len:
            raise ParamError("max_tokens", f"{self.max_tokens} is less than one window (`seq_len` {self.seq_len})")
        if self.store_dtype not in STORE_DTYPES:
            raise ParamError("store_dtype", f"must be one of {', '.join(STORE_DTYPES)}, not {self.store_dtype!r}")
        if self.resume and self.overwrite:
            raise TuiwbError("`resume` and `overwrite` contradict each other: pass one")
        if isinstance(self.shard, str):
            self.shard = _parse_shard(self.shard)
        i, n = self.shard
        if not (n >= 1 and 0 <= i < n):
            raise ParamError("shard", f"{i}/{n} is invalid: use I/N with 0 <= I < N")
        self.shard = (int(i), int(n))
        if self.windows_per_shard is not None and self.windows_per_shard < 1:
            raise ParamError("windows_per_shard", "must be at least 1")


def _parse_layer(x) -> int | str:
    if isinstance(x, str) and x.strip().lower() == "all":
        return "all"
    try:
        return int(x)
    except (TypeError, ValueError):
        raise ParamError("layers", f"{x!r} is not a layer index: give an integer or 'all'") from None


def _parse_shard(s: str) -> tuple[int, int]:
    try:
        i, n = s.split("/")
        return int(i), int(n)
    except ValueError:
        raise ParamError("shard", f"{s!r} is malformed: use I/N, e.g. 0/2") from None
