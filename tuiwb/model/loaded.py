"""``LoadedModel``: a causal LM, its tokenizer and its residual-stream anatomy.

Every other module talks to a model through it: the decoder blocks (whose outputs are the hook
points ``blocks.{L}.hook_resid_post``), the modules that *write* into the residual stream
(embedding, each block's attention out-projection and MLP down-projection — what a LoRA patch
edits), the final norm and the unembedding. Temporary hooks go through :meth:`LoadedModel.hooks`
(TransformerLens' ``model.hooks()``) and partial forwards through :meth:`LoadedModel.run_to`, so no
module keeps private copies of that plumbing.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from functools import cached_property
from typing import Callable, Iterable, Iterator, Union

import torch
from torch import nn

from tuiwb.errors import TuiwbError
from tuiwb.model.arch import ArchSpec, config_hash, get_module, weights_fingerprint
from tuiwb.model.device_map import input_device, module_device
from tuiwb.model.hooks import EMBED_HOOK, StopForward, hidden, parse_hook_name

EMBED = -1
"""The "layer" of the token embeddings (the residual stream before block 0)."""

HookPoint = Union[str, int, nn.Module]
"""A hook point name (``blocks.3.hook_resid_post``, ``hook_embed``), a layer index (its block's
output; ``EMBED`` for the embeddings) or a module."""
Hook = tuple[HookPoint, Callable]


@dataclass
class LoadedModel:
    """A causal LM plus its tokenizer and residual-stream anatomy."""

    model: nn.Module
    """The ``*ForCausalLM`` module, in eval mode."""
    tokenizer: object
    """The matching ``PreTrainedTokenizer(Fast)``."""
    model_id: str
    """What the user passed: a local path or a hub id."""
    arch: ArchSpec
    """Attribute paths for this architecture."""
    quant: str | None = None
    """``"8bit"``, ``"4bit"`` or None."""

    @property
    def config(self):
        return self.model.config

    @cached_property
    def config_hash(self) -> str:
        return config_hash(self.model.config)

    @cached_property
    def fingerprint(self) -> list[float]:
        """``weights_fingerprint`` of the weights: recorded with activations, SAEs and patches, checked on
        every join, so a model of the same config but other weights is refused."""
        return weights_fingerprint(self.model)

    @property
    def n_layers(self) -> int:
        return len(self.blocks)

    @property
    def d_model(self) -> int:
        return int(self.model.get_input_embeddings().weight.shape[1])

    @property
    def vocab_size(self) -> int:
        return int(self.model.get_output_embeddings().weight.shape[0])

    @property
    def device(self) -> torch.device:
        """Where token ids go (the input embedding's device; the only device unless split by a device map)."""
        return input_device(self.model)

    def layer_device(self, layer: int) -> torch.device:
        """The device block ``layer`` computes on: its SAE, hook tensors and LoRA factors live there."""
        if layer == EMBED:
            return self.device
        self.check_layer(layer)
        return module_device(self.model, f"{self.arch.blocks}.{layer}", self.blocks[layer])

    @property
    def devices(self) -> list[str]:
        """The devices the model is split over (one entry unless a device map split it)."""
        dmap = getattr(self.model, "hf_device_map", None) or {}
        found = [str(self.layer_device(i)) for i in range(self.n_layers)] if len(set(dmap.values())) > 1 else []
        return list(dict.fromkeys([str(self.device), *found]))

    @property
    def max_positions(self) -> int | None:
        c = self.model.config
        for key in ("max_position_embeddings", "n_positions", "n_ctx"):
            if getattr(c, key, None):
                return int(getattr(c, key))
        return None

    @property
    def pad_id(self) -> int:
        """The id right-padded batches are filled with (pad, else EOS, else 0: it is never attended to)."""
        tok = self.tokenizer
        for pid in (tok.pad_token_id, tok.eos_token_id):
            if pid is not None:
                return int(pid)
        return 0

    # --- anatomy --------------------------------------------------------------------------------
    @cached_property
    def blocks(self) -> nn.ModuleList:
        return get_module(self.model, self.arch.blocks)

    def block(self, layer: int) -> nn.Module:
        self.check_layer(layer)
        return self.blocks[layer]

    def check_layer(self, layer: int) -> None:
        if not 0 <= layer < self.n_layers:
            raise TuiwbError(f"layer {layer} is out of range: this model has layers 0..{self.n_layers - 1}")

    @property
    def embed(self) -> nn.Module:
        return get_module(self.model, self.arch.embed)

    @property
    def final_norm(self) -> nn.Module:
        return get_module(self.model, self.arch.final_norm)

    @property
    def unembed(self) -> nn.Module:
        """The logits projection (``lm_head``, whatever the architecture calls it)."""
        return self.model.get_output_embeddings()

    def writer_names(self, layer: int) -> dict[str, str]:
        """Full dotted names of the modules of block ``layer`` that write into the residual stream."""
        self.check_layer(layer)
        prefix = f"{self.arch.blocks}.{layer}"
        return {"attn_out": f"{prefix}.{self.arch.attn_out}", "mlp_out": f"{prefix}.{self.arch.mlp_out}"}

    def writers(self, layer: int) -> dict[str, nn.Module]:
        """``{"attn_out": module, "mlp_out": module}`` for block ``layer``."""
        return {k: get_module(self.model, n) for k, n in self.writer_names(layer).items()}

    def hook_module(self, point: HookPoint) -> nn.Module:
        """The module whose forward output *is* the hook point."""
        if isinstance(point, nn.Module):
            return point
        if isinstance(point, int):
            return self.embed if point == EMBED else self.block(point)
        if point == EMBED_HOOK:
            return self.embed
        layer, kind = parse_hook_name(point)
        self.check_layer(layer)
        return self.blocks[layer] if kind == "resid_post" else self.writers(layer)[kind]

    # --- hooks ----------------------------------------------------------------------------------
    def add_hook(self, point: HookPoint, fn: Callable, *, pre: bool = False):
        """Register a persistent forward (or, with ``pre``, forward-pre) hook; returns its handle."""
        module = self.hook_module(point)
        return module.register_forward_pre_hook(fn) if pre else module.register_forward_hook(fn)

    @contextlib.contextmanager
    def hooks(self, fwd_hooks: Iterable[Hook] = (), pre_hooks: Iterable[Hook] = ()) -> Iterator[None]:
        """Forward hooks ``[(point, fn)]`` (and forward-pre hooks) for the ``with`` block only.

        Hooks run in the order given; all are removed on exit, even when the body raises.
        """
        handles = []
        try:
            for point, fn in pre_hooks:
                handles.append(self.add_hook(point, fn, pre=True))
            for point, fn in fwd_hooks:
                handles.append(self.add_hook(point, fn))
            yield
        finally:
            for h in handles:
                h.remove()

    def run_to(self, ids: torch.Tensor, stop: HookPoint, *, attention_mask: torch.Tensor | None = None,
               hooks: Iterable[Hook] = (), pre_hooks: Iterable[Hook] = ()) -> torch.Tensor:
        """Forward ``ids [B, T]`` only until ``stop`` has run; its output ``[B, T, d]``.

        Nothing after the stop point (later blocks, the unembedding) is computed. ``hooks`` /
        ``pre_hooks`` (as for :meth:`hooks`) run on the way, for this forward only.
        """
        box = {}

        def grab(module, args, output):
            box["h"] = hidden(output)
            raise StopForward

        with self.hooks([*hooks, (stop, grab)], pre_hooks):
            try:
                self.model(input_ids=ids, attention_mask=attention_mask, use_cache=False)
            except StopForward:
                pass
        if "h" not in box:
            raise RuntimeError(f"hook point {stop!r} did not run")
        return box["h"]

    # --- tokens ---------------------------------------------------------------------------------
    def encode(self, text: str, *, add_bos: bool = True) -> list[int]:
        """Token ids of ``text``, BOS-prefixed, checked against the context length.

        A blank prompt is refused: with the BOS alone the "next token" would be the model's prior, which
        reads like an answer but is not one.
        """
        if not str(text).strip():
            raise TuiwbError("the prompt is empty: give some text")
        ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        bos = self.tokenizer.bos_token_id
        if add_bos and bos is not None:
            ids = [bos] + ids
        limit = self.max_positions
        if limit is not None and len(ids) > limit:
            raise TuiwbError(f"prompt is {len(ids)} tokens but the model's context is {limit}: shorten the prompt")
        return ids

    def token_str(self, token_id: int) -> str:
        return self.tokenizer.decode([int(token_id)])
