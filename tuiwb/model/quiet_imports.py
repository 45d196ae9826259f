"""Import bitsandbytes (and peft, which imports it) without reaching the network.

On CPUs with AVX-512 BF16, importing bitsandbytes asks the optional ``kernels`` package to download
a kernel from the Hugging Face hub, and logs a warning when it cannot — on every ``--lora`` command.
Nothing in tuiwb may leave the host unasked, so during that first import ``kernels`` is made
unimportable (bitsandbytes then falls back to its own CPU kernel) and the warning is muted.
"""

from __future__ import annotations

import contextlib
import logging
import sys

_BNB_LOGGERS = ("bitsandbytes", "bitsandbytes.backends.cpu.ops")


@contextlib.contextmanager
def no_kernel_downloads():
    """For the ``with`` block, ``import kernels`` fails and bitsandbytes' fallback warning is silent."""
    saved = {name: sys.modules.get(name, _MISSING) for name in ("kernels",)}
    levels = {name: logging.getLogger(name).level for name in _BNB_LOGGERS}
    sys.modules["kernels"] = None  # an ImportError for `from kernels import get_kernel`
    for name in _BNB_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        yield
    finally:
        for name, mod in saved.items():
            if mod is _MISSING:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = mod
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def import_peft():
    """``peft``, imported (with bitsandbytes under it) without a kernel download."""
    with no_kernel_downloads():
        import peft

    return peft


_MISSING = object()
