"""LoRA refinement that runs only block L: its inputs are recorded once, then each Adam step is one block.

At 7B width the first refinement re-ran the model up to layer L on every Adam step (300 steps ×
L blocks). Block L's output depends on the LoRA only through block L itself (the patched modules are
its attention out-projection and MLP down-projection), so its inputs — the hidden state and the
keyword arguments the decoder passes every layer (position embeddings, attention mask, positions) —
are recorded once, with the exact edit's target, and every later forward is one block.

On a bitsandbytes model the gradient would flow through 4-bit/8-bit kernels, some of which have no
autograd support (``bitsandbytes::gemv_4bit: an autograd kernel was not registered``). The Adam
steps therefore run on a *dequantized copy* of block L (checked against the quantized block on the
recorded inputs), while the error that decides whether the refinement is kept is measured on the
real, quantized block.
"""

from __future__ import annotations

import contextlib
import copy
import math
from dataclasses import dataclass

import torch
from torch import nn

from tuiwb.errors import warn
from tuiwb.model.batching import right_padded
from tuiwb.model.hooks import hidden
from tuiwb.progress import as_progress

QUANT_LINEARS = ("Linear4bit", "Linear8bitLt")


def _is_bnb_linear(mod: nn.Module) -> bool:
    """A bitsandbytes quantized linear itself (PEFT's wrappers of one share its class name, not its module)."""
    return type(mod).__name__ in QUANT_LINEARS and type(mod).__module__.startswith("bitsandbytes")
_WINDOW = 50


@dataclass
class BlockBatch:
    """One batch of block L's recorded inputs and the exact edit's target output."""

    args: tuple
    """Positional inputs of block L (the hidden state ``[B, T, d]`` first)."""
    kwargs: dict
    """Keyword inputs (position embeddings, attention mask, position ids …), as the decoder passed them."""
    mask: torch.Tensor
    """``[B, T]`` 1 on real tokens, on the block's device."""
    target: torch.Tensor
    """``h + Δ`` ``[B, T, d]`` float32: the block output under the exact edit."""
    delta_energy: float
    """``‖Δ‖²`` over the batch's real tokens."""


def _detach(x):
    if isinstance(x, torch.Tensor):
        return x.detach()
    if isinstance(x, tuple):
        return tuple(_detach(v) for v in x)
    if isinstance(x, list):
        return [_detach(v) for v in x]
    if isinstance(x, dict):
        return {k: _detach(v) for k, v in x.items()}
    return x


def record_block_inputs(loaded, edit, layer: int, sequences, batch_size: int, max_tokens: int) -> list[BlockBatch]:
    """Run the model up to block L once per batch, keeping block L's inputs and the target ``h + Δ``."""
    block = loaded.blocks[layer]
    box: dict = {}

    def grab(module, args, kwargs):
        box["args"], box["kwargs"] = _detach(args), _detach(kwargs)

    out, total = [], 0
    handle = block.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            for ids, mask, _ in right_padded(sequences, batch_size, loaded.pad_id, loaded.device):
                h = loaded.run_to(ids, layer)  # [B, T, d]
                mask = mask.to(h.device)
                delta = edit.delta(h).to(h.device, torch.float32)  # [B, T, d]
                target = h.float() + delta  # [B, T, d]
                energy = float((delta.pow(2).sum(-1) * mask).sum())
                out.append(BlockBatch(box["args"], box["kwargs"], mask, target, energy))
                total += int(mask.sum())
                if total >= max_tokens:
                    break
    finally:
        handle.remove()
    return out


def block_output(block: nn.Module, batch: BlockBatch) -> torch.Tensor:
    """Block L's output ``[B, T, d]`` float32 on the recorded inputs."""
    return hidden(block(*batch.args, **batch.kwargs)).float()


@contextlib.contextmanager
def factor_hooks_on(modules: dict[str, nn.Module], factors: dict[str, tuple[torch.Tensor, torch.Tensor]]):
    """Add ``B @ A @ x`` to each named module's output; plain tensors move to the module's device once."""
    handles = []
    try:
        for name, (A, B) in factors.items():
            mod = modules[name]
            if not isinstance(A, nn.Parameter):
                dev = _module_device(mod)
                A, B = A.to(dev), B.to(dev)

            def hook(mod, args, output, A=A, B=B):
                x = args[0]
                upd = (x.to(A.device, A.dtype) @ A.T) @ B.T  # [..., d_out]
                return output + upd.to(output.device, output.dtype)

            handles.append(mod.register_forward_hook(hook))
        yield
    finally:
        for h in handles:
            h.remove()


def _module_device(mod: nn.Module) -> torch.device:
    for p in mod.parameters():
        if p.device.type != "meta":
            return p.device
    return torch.device("cpu")


def block_error(block: nn.Module, names: dict[str, str], factors, data: list[BlockBatch]) -> float:
    """‖h_lora − h_hook‖² / ‖Δ‖² over the recorded tokens, block L run with the factors on.

    ``names`` maps the full module names of ``factors`` to names inside ``block``.
    """
    modules = dict(block.named_modules())
    hooked = {rel: modules[rel] for rel in names.values()}
    num = den = 0.0
    with torch.no_grad(), factor_hooks_on(hooked, {names[full]: f for full, f in factors.items()}):
        for b in data:
            h = block_output(block, b)  # [B, T, d]
            num += float(((h - b.target.to(h.device)).pow(2).sum(-1) * b.mask.to(h.device)).sum())
            den += b.delta_energy
    return num / den if den > 0 else math.inf


def differentiable_block(block: nn.Module, sample: BlockBatch | None) -> nn.Module:
    """``block`` itself, or for a bitsandbytes block a copy with every quantized linear dequantized
    (so backpropagation never enters a 4-bit/8-bit kernel); the copy is checked against the original."""
    if not any(_is_bnb_linear(m) for m in block.modules()):
        return block
    dense = copy.deepcopy(block)
    for name, mod in list(dense.named_modules()):
        if _is_bnb_linear(mod):
            dense.set_submodule(name, _dequantized(mod))
    dense.requires_grad_(False)
    if sample is not None:
        with torch.no_grad():
            ref, got = block_output(block, sample), block_output(dense, sample)  # [B, T, d]
        err = float((ref - got).norm() / ref.norm().clamp_min(1e-12))
        if not err < 0.05:
            warn(f"the dequantized copy of the block differs from the quantized one by {err:.1%}: "
                 "the LoRA refinement may be off; check the fit's fidelity")
    return dense


def _dequantized(mod: nn.Module) -> nn.Linear:
    """A plain ``nn.Linear`` computing what bitsandbytes' ``mod`` computes."""
    w = mod.weight
    if type(mod).__name__ == "Linear4bit":
        import bitsandbytes.functional as bnbf

        weight = bnbf.dequantize_4bit(w.data, w.quant_state)  # [out, in]
        dtype = getattr(mod, "compute_dtype", None) or weight.dtype
    else:  # Linear8bitLt: int8 rows with a per-row absmax scale
        scb = getattr(w, "SCB", None)
        if scb is None:
            scb = getattr(mod.state, "SCB", None)
        weight = w.data.float() * (scb.float()[:, None] / 127.0) if scb is not None else w.data.float()  # [out, in]
        dtype = torch.float16 if weight.device.type == "cuda" else torch.float32
    out = nn.Linear(weight.shape[1], weight.shape[0], bias=mod.bias is not None, device=weight.device, dtype=dtype)
    with torch.no_grad():
        out.weight.copy_(weight.to(dtype))
        if mod.bias is not None:
            out.bias.copy_(mod.bias.to(dtype))
    return out


def refine_block(block: nn.Module, names: dict[str, str], factors, data: list[BlockBatch], cfg,
                 progress: bool, label: str):
    """Adam on the LoRA factors against the exact edit's block output → (new factors, steps run).

    ``names`` maps the full module names of ``factors`` to names inside ``block``.
    """
    modules = dict(block.named_modules())
    params: dict[str, tuple[nn.Parameter, nn.Parameter]] = {}
    groups = []
    for full, rel in names.items():
        A, B = factors[full]
        dev = _module_device(modules[rel])
        pa, pb = nn.Parameter(A.clone().to(dev)), nn.Parameter(B.clone().to(dev))
        params[rel] = (pa, pb)
        for p in (pa, pb):
            rms = float(p.detach().pow(2).mean().sqrt()) or 1e-3
            groups.append({"params": [p], "lr": cfg.refine_lr * rms})
    opt = torch.optim.Adam(groups)
    norm = max(sum(b.delta_energy for b in data) / len(data), 1e-12)
    flat = [p for pair in params.values() for p in pair]
    losses, steps = [], 0
    with as_progress(progress).task(label, cfg.refine_steps, "step") as task, \
            factor_hooks_on({rel: modules[rel] for rel in params}, params):
        for step in range(cfg.refine_steps):
            if step >= 2 * _WINDOW and step % _WINDOW == 0:
                last, prev = losses[-_WINDOW:], losses[-2 * _WINDOW:-_WINDOW]
                if sum(last) > (1 - cfg.refine_min_gain) * sum(prev):
                    break  # plateau: more steps would cost time for nothing
            b = data[step % len(data)]
            with torch.enable_grad():
                h = block_output(block, b)  # [B, T, d]
                # One normaliser for all batches: an epoch's mean loss is then exactly the global
                # ‖h_lora − h_hook‖²/‖Δ‖² that decides whether the refinement is kept.
                loss = ((h - b.target.to(h.device)).pow(2).sum(-1) * b.mask.to(h.device)).sum() / norm
                grads = torch.autograd.grad(loss, flat)
            for p, g in zip(flat, grads):
                p.grad = g
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
            steps += 1
            task.advance(1)
    rel_to_full = {rel: full for full, rel in names.items()}
    new = {rel_to_full[rel]: (pa.detach().float().cpu(), pb.detach().float().cpu()) for rel, (pa, pb) in params.items()}
    return new, steps
