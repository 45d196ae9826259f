"""The ``--ablate L:F[,F...]`` and ``--scale L:F[,F...]=ALPHA`` flag syntax (``logits`` and friends)."""

from __future__ import annotations

import math
import re

from tuiwb.errors import TuiwbError

_ABLATE_RE = re.compile(r"^\s*(\d+)\s*:\s*(\d+(?:\s*,\s*\d+)*)\s*$")
_SCALE_SPEC_RE = re.compile(r"^\s*(\d+)\s*:\s*(\d+(?:\s*,\s*\d+)*)\s*=\s*(\S+)\s*$")


def parse_ablate(spec: str) -> tuple[int, list[int]]:
    """``"L:F[,F...]"`` → ``(L, [F, ...])`` (the ``--ablate`` flag)."""
    m = _ABLATE_RE.match(spec or "")
    if not m:
        raise TuiwbError(f"bad --ablate {spec!r}: expected LAYER:FEATURE[,FEATURE...], e.g. 2:17,40")
    return int(m.group(1)), [int(f) for f in m.group(2).split(",")]


def parse_scale(spec: str) -> tuple[int, list[int], float]:
    """``"L:F[,F...]=ALPHA"`` → ``(L, [F, ...], ALPHA)`` (the ``--scale`` flag)."""
    m = _SCALE_SPEC_RE.match(spec or "")
    if not m:
        raise TuiwbError(f"bad --scale {spec!r}: expected LAYER:FEATURE[,FEATURE...]=ALPHA, e.g. 2:17=0.5")
    try:
        alpha = float(m.group(3))
    except ValueError:
        alpha = float("nan")
    if not math.isfinite(alpha):
        raise TuiwbError(f"bad --scale {spec!r}: ALPHA {m.group(3)!r} is not a number; expected "
                         "LAYER:FEATURE[,FEATURE...]=ALPHA, e.g. 2:17=0.5")
    return int(m.group(1)), [int(f) for f in m.group(2).split(",")], alpha


def add_patch_options(p) -> None:
    """``--saes --ablate --scale --lora``: the patches a headless command runs with (``logits`` and friends)."""
    p.add_argument("--saes", metavar="DIR", help="saes/ directory (layer_N/ below) for --ablate/--scale")
    p.add_argument("--ablate", action="append", default=[], metavar="L:F[,F...]",
                   help="ablate SAE features F at layer L (exact hook patch); may repeat")
    p.add_argument("--scale", action="append", default=[], metavar="L:F[,F...]=ALPHA",
                   help="multiply SAE features F at layer L by ALPHA (exact hook patch); may repeat")
    p.add_argument("--lora", action="append", default=[], metavar="lora/NAME",
                   help="apply a LoRA patch made by `tuiwb patch build`; may repeat")


def patch_specs(args) -> list[tuple[int, list[int], str]]:
    """``--ablate``/``--scale`` → ``[(layer, features, mode)]``, syntax checked before any loading."""
    from tuiwb.patch.edit import format_mode

    specs = [(*parse_ablate(s), "ablate") for s in args.ablate]
    for s in args.scale:
        layer, feats, alpha = parse_scale(s)
        specs.append((layer, feats, format_mode(alpha)))
    if specs and not args.saes:
        raise TuiwbError("--ablate/--scale edit SAE features: pass --saes with the saes/ directory")
    return specs


def open_patched_session(args, specs):
    """A Session on ``--model`` with ``--saes``, the ``--lora`` patches and one hook patch per spec, all on."""
    from tuiwb.session.session import Session

    session = Session.open(args.model, saes_dir=args.saes, lora_dirs=args.lora, quant=args.quant,
                           device=args.device, dtype=args.dtype, trust_remote_code=args.trust_remote_code,
                           allow_pickle=args.allow_pickle, device_map=args.device_map)
    for i, (layer, feats, mode) in enumerate(specs):
        session.add_patch(name=f"cli{i}", layer=layer, features=feats, mode=mode, method="hook")
    return session
