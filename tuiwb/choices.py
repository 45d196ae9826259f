"""Names the CLI offers as choices, kept free of heavy imports so ``tuiwb --help`` stays fast."""

from typing import Literal

QuantName = Literal["8bit", "4bit"]
"""bitsandbytes weight quantisations ``--quant`` accepts."""
DtypeName = Literal["float32", "float16", "bfloat16"]
"""Weight dtypes ``--dtype`` accepts (``tuiwb.model.loading.DTYPES`` maps them to torch dtypes)."""

QUANT_CHOICES = QuantName.__args__
DTYPE_NAMES = DtypeName.__args__

DEFAULT_DEVICE = "auto"
"""The torch device every command uses unless told otherwise: ``auto`` = cuda, then mps, then cpu."""
