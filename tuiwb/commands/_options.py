"""Flags shared by several subcommands, so they are spelled the same everywhere."""

from __future__ import annotations

import argparse


def add_model_options(p: argparse.ArgumentParser, *, required: bool = True) -> None:
    """``--model --quant --device --dtype --trust-remote-code``, from ``ModelConfig``."""
    from tuiwb.commands._config_args import add_config_args, set_flags
    from tuiwb.model.config import ModelConfig

    set_flags(p, add_config_args(p, ModelConfig, overrides={"model": {"required": required}}))


def add_lab_options(p: argparse.ArgumentParser, *, prompt_help: str) -> None:
    """``--saes --acts --lora --prompt``: what a live lab opens on (``ui``, ``serve``)."""
    p.add_argument("--saes", required=True, metavar="DIR", help="directory of layer_N/ SAEs (from `tuiwb train`)")
    p.add_argument("--acts", metavar="DIR", help="activation store (NAME.parquet/) for feature stats and contexts")
    p.add_argument("--lora", action="append", default=[], metavar="DIR",
                   help="a lora/NAME patch (attached as NAME, enabled), or a directory of them (repeatable)")
    p.add_argument("--prompt", default="", help=prompt_help)


def load_model_from_args(args: argparse.Namespace):
    from tuiwb.model.loading import load_model

    return load_model(args.model, quant=args.quant, device=args.device, dtype=args.dtype,
                      trust_remote_code=args.trust_remote_code, allow_pickle=args.allow_pickle)
