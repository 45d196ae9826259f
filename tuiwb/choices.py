"""Names the CLI offers as choices, kept free of heavy imports so ``tuiwb --help`` stays fast."""

QUANT_CHOICES = ("8bit", "4bit")
"""bitsandbytes weight quantisations ``--quant`` accepts."""

DTYPE_NAMES = ("float32", "float16", "bfloat16")
"""Weight dtypes ``--dtype`` accepts (``tuiwb.models.DTYPES`` maps them to torch dtypes)."""
