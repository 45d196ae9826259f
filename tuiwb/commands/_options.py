"""Flags shared by several subcommands, so they are spelled the same everywhere."""

from __future__ import annotations

import argparse

from tuiwb.choices import DTYPE_NAMES, QUANT_CHOICES


def add_model_options(p: argparse.ArgumentParser, *, required: bool = True) -> None:
    """``--model --quant --device --dtype --trust-remote-code``."""
    p.add_argument("--model", required=required, help="local checkpoint directory or Hugging Face hub id")
    p.add_argument("--quant", choices=QUANT_CHOICES, default=None, help="load weights in 8-bit or 4-bit (bitsandbytes)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1 (default: cpu)")
    p.add_argument("--dtype", choices=list(DTYPE_NAMES), default=None, help="weight dtype (default: the checkpoint's)")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow the checkpoint's own Python code to run (off by default)")


def load_model_from_args(args: argparse.Namespace):
    from tuiwb.models import load_model

    return load_model(args.model, quant=args.quant, device=args.device, dtype=args.dtype,
                      trust_remote_code=args.trust_remote_code)
