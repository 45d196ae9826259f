"""Hook points, TransformerLens-style: their names and the plumbing every forward hook shares.

A hook point is named ``blocks.{L}.hook_{kind}``: ``resid_post`` is decoder layer L's output (the
residual stream after the block, ``hidden_states[L+1]``), ``attn_out`` / ``mlp_out`` the outputs of
its attention out-projection / MLP down-projection; ``hook_embed`` is the token embedding's output.
In transformers 5.x a decoder layer returns a plain tensor ``[batch, pos, d_model]`` (older
architectures a tuple whose first item it is); a forward hook's return value replaces the output.
"""

from __future__ import annotations

import re

from tuiwb.errors import TuiwbError

HOOK_KINDS = ("resid_post", "attn_out", "mlp_out")
EMBED_HOOK = "hook_embed"
HOOK_RE = re.compile(r"^blocks\.(\d+)\.hook_(resid_post|attn_out|mlp_out)$")
"""The one pattern of a layer's hook point (SAE configs, manifests and the model all use it)."""


class StopForward(Exception):
    """Raised by a hook to end a forward pass once the hook point that is needed has run."""


def hook_name(layer: int, kind: str = "resid_post") -> str:
    """TransformerLens-style hook point name, e.g. ``blocks.3.hook_resid_post``."""
    if kind not in HOOK_KINDS:
        raise TuiwbError(f"unknown hook kind {kind!r}; expected one of {', '.join(HOOK_KINDS)}")
    return f"blocks.{layer}.hook_{kind}"


def parse_hook_name(name: str) -> tuple[int, str]:
    """``"blocks.3.hook_resid_post"`` → ``(3, "resid_post")``."""
    m = HOOK_RE.match(name)
    if not m:
        raise TuiwbError(f"bad hook name {name!r}: expected blocks.<layer>.hook_resid_post|attn_out|mlp_out")
    return int(m.group(1)), m.group(2)


def hook_layer(name: str | None) -> int | None:
    """The layer a hook point name belongs to, or None for a name that is not a layer's."""
    m = HOOK_RE.match(name or "")
    return int(m.group(1)) if m else None


def hidden(output):
    """The hidden states ``[batch, pos, d]`` of a module's output, tensor or tuple alike."""
    return output[0] if isinstance(output, tuple) else output


def with_hidden(output, h):
    """``output`` with its hidden states replaced by ``h`` (the same container type)."""
    return (h, *output[1:]) if isinstance(output, tuple) else h
