"""Fit a rank-r LoRA on one layer's residual writers that imitates the exact SAE-gated edit.

docs/patches.md ("The patch math") records what was measured: projecting feature directions out of the
weights is *not* the gated edit (it broke the model), while a reduced-rank least-squares fit matched
the hook closely. The recipe, for the edit at layer L's output h with target Δ = (α−1)·Σ a_f(h)·d_f:

1. record, on real text, the inputs of L's attention out-projection ``X_attn`` and MLP
   down-projection ``X_mlp`` together with Δ — only as sufficient statistics (Gram matrix ``XᵀX`` and
   ``XᵀΔ``), so memory does not grow with the number of tokens;
2. solve the ridge least squares ``[X_attn, X_mlp] W ≈ Δ`` jointly (on standardised columns, so one
   relative ridge works for every model; fp32 Cholesky, no D×D copies: ``tuiwb.patch.solve``);
3. reduced-rank regression: keep the top-r eigenvectors V_r of the fitted values' covariance
   ``WᵀXᵀXW`` and use ``W V_r V_rᵀ`` — both modules share B = V_r, each gets A = (W_module V_r)ᵀ;
4. refine A and B with a few hundred Adam steps on the *real* layer output (the closed form ignores
   that editing the attention output changes the MLP's input), running block L alone on its recorded
   inputs (``tuiwb.patch.block_refine``); keep the refinement only if it lowers the error, measured on
   the same real output.

Factors are "effective": a module's output gains ``B @ A @ x``; ``tuiwb.patch_io`` folds PEFT's
``lora_alpha / r`` scaling in when it writes an adapter.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterable, NamedTuple, Sequence

import torch

from tuiwb.errors import TuiwbError
from tuiwb.model.batching import right_padded
from tuiwb.patch.block_refine import (block_error, differentiable_block, factor_hooks_on, record_block_inputs,
                                     refine_block)
from tuiwb.patch.config import FitConfig
from tuiwb.patch.edit import FeatureEdit
from tuiwb.patch.solve import solve_reduced_rank
from tuiwb.sae.compat import sae_layer
from tuiwb.progress import as_progress

@dataclass(frozen=True)
class LoraFactors:
    """A low-rank update per module: the module's output gains ``B @ (A @ x)``."""

    modules: dict[str, tuple[torch.Tensor, torch.Tensor]]
    """Dotted module name → (A ``[r, d_in]``, B ``[d_out, r]``), float32 on CPU."""
    rank: int
    """r, the same for every module."""


@dataclass(frozen=True)
class FitReport:
    """What a fit produced and how well it imitates the exact edit at the layer output."""

    factors: LoraFactors
    """The fitted factors (refined ones if refinement helped)."""
    n_tokens: int
    """Tokens recorded for the closed-form fit."""
    r2_closed: float
    """Share of the target Δ's energy the rank-r closed form explains, on the recorded inputs."""
    rel_err_closed: float
    """‖h_lora − h_hook‖² / ‖Δ‖² of the closed form on the real layer output (refinement tokens)."""
    rel_err_refined: float | None
    """The same after refinement; None when refinement was off."""
    refined: bool
    """True when the refined factors were kept (they lowered the error)."""
    refine_steps: int
    """Adam steps actually run (0: skipped; fewer than configured: stopped on a plateau)."""
    seconds: float
    """Wall time of the whole fit."""
    solve_seconds: float = 0.0
    """Wall time of the closed-form solve alone."""
    refine_seconds: float = 0.0
    """Wall time of the refinement (recording block L's inputs included); 0 when skipped."""
    peak_extra_bytes: int = 0
    """Peak memory the fit added on top of the model: measured on CUDA, else the solve's buffers."""
    peak_measured: bool = False
    """True when ``peak_extra_bytes`` is the CUDA allocator's measurement, not the buffers' sizes."""


# ---------------------------------------------------------------------------------------- data


def encode_texts(loaded, texts: Iterable[str], *, max_len: int = 128, max_tokens: int | None = None,
                 ) -> list[list[int]]:
    """BOS-prefixed token sequences of at most ``max_len`` tokens (long texts are cut in chunks)."""
    limit = loaded.max_positions or max_len
    max_len = min(max_len, limit)
    bos = loaded.tokenizer.bos_token_id
    out: list[list[int]] = []
    total = 0
    for text in texts:
        text = text.strip()
        if not text:
            continue
        ids = list(loaded.tokenizer(text, add_special_tokens=False)["input_ids"])
        step = max_len - (1 if bos is not None else 0)
        for i in range(0, len(ids), step):
            seq = ([bos] if bos is not None else []) + ids[i:i + step]
            if len(seq) < 2:
                continue
            out.append(seq)
            total += len(seq)
            if max_tokens is not None and total >= max_tokens:
                return out
    return out


def with_trigger_contexts(loaded, sequences: Sequence[list[int]], prompts: Iterable[str] | None,
                          repeat: int = 8, clean: Iterable[str] | None = None) -> list[list[int]]:
    """The fit data with the positive (trigger) prompts first, each ``repeat`` times, and the clean
    prompts (``clean``, the B set of the search; as often) next to them.

    Generic text rarely holds the trigger, so an edit that matters only after it (a gated edit, or
    features that fire hard only there) gets almost no weight in the least squares; repeating the
    prompts weights those contexts (the Gram statistics simply add). First, because the recording
    stops at ``fit_tokens``. The clean twins teach the fit where the edit must stay silent (a gated
    edit's Δ is zero there), which keeps the LoRA's clean KL near the hook's.
    """
    if not prompts:
        return list(sequences)
    extra = [loaded.encode(p) for p in [*prompts, *(clean or ())] if str(p).strip()]
    return [s for s in extra for _ in range(repeat)] + list(sequences)


def store_sequences(store, split: str, max_tokens: int) -> list[list[int]]:
    """Token windows of an ``ActivationStore`` split, up to ``max_tokens`` tokens."""
    out, total = [], 0
    for _seq_id, token_ids, _rows in store.windows(split=split):
        out.append([int(t) for t in token_ids])
        total += len(token_ids)
        if total >= max_tokens:
            break
    return out


def factor_hooks(loaded, factors: dict[str, tuple[torch.Tensor, torch.Tensor]]):
    """Add ``B @ A @ x`` to each named module's output (plain torch: differentiable, any quant, any device)."""
    modules = dict(loaded.model.named_modules())
    return factor_hooks_on({name: modules[name] for name in factors}, factors)


# ------------------------------------------------------------------------------------ the fit


class Stats(NamedTuple):
    """Sufficient statistics of the recorded inputs and targets (float32 unless asked, on the layer's device)."""

    G: torch.Tensor
    """``XᵀX`` of ``X = [X_attn, X_mlp]``: ``[D, D]``."""
    C: torch.Tensor
    """``XᵀΔ``: ``[D, d_model]``."""
    yy: float
    """``‖Δ‖²`` over all recorded tokens."""
    n: int
    """Recorded tokens."""
    d_attn: int
    """Input width of the attention out-projection (the first ``d_attn`` columns of X)."""
    seq_energy: list[float]
    """``‖Δ‖²`` of each recorded sequence, in order (where the features fire)."""


def record_stats(loaded, edit: FeatureEdit, sequences, cfg: FitConfig, progress: bool = False,
                 dtype: torch.dtype = torch.float32) -> Stats:
    """Gram statistics of ``[X_attn, X_mlp]`` against the exact target Δ on ``sequences``.

    Accumulated in place (``addmm_``: no D×D temporary per batch) in ``dtype`` on the device of the
    layer, so at 7B width (D ≈ 18k) the Gram costs 1.4 GB, not the 2.7 GB per copy of float64.
    """
    layer = sae_layer(edit.sae)
    writers = loaded.writers(layer)
    device = loaded.layer_device(layer)
    acc: dict = {}

    def grab(key):
        def pre(module, args):
            acc[key] = args[0]
        return pre

    G = C = None
    yy, n, energy = 0.0, 0, []
    with as_progress(progress).task(f"recording layer {layer}", cfg.fit_tokens, "tok") as task, torch.no_grad():
        hooks = [(writers["attn_out"], grab("attn")), (writers["mlp_out"], grab("mlp"))]
        for ids, mask, _ in right_padded(sequences, cfg.batch_size, loaded.pad_id, loaded.device):
            h = loaded.run_to(ids, layer, pre_hooks=hooks)  # [B, T, d]
            m = mask.reshape(-1).to(device)  # [B*T]
            xa = acc["attn"].reshape(-1, acc["attn"].shape[-1])[m]  # [N, d_attn]
            xm = acc["mlp"].reshape(-1, acc["mlp"].shape[-1])[m]  # [N, d_ff]
            X = torch.cat([xa, xm], dim=-1).to(device, dtype)  # [N, D]
            delta = edit.delta(h).to(device, dtype)  # [B, T, d]
            energy += (delta.pow(2).sum(-1) * mask.to(device)).sum(-1).tolist()  # B values
            Y = delta.reshape(-1, delta.shape[-1])[m]  # [N, d]
            if G is None:
                G = torch.zeros(X.shape[1], X.shape[1], dtype=dtype, device=device)
                C = torch.zeros(X.shape[1], Y.shape[1], dtype=dtype, device=device)
            G.addmm_(X.T, X)
            C.addmm_(X.T, Y)
            yy += float((Y * Y).sum())
            n += X.shape[0]
            task.advance(X.shape[0])
            if n >= cfg.fit_tokens:
                break
    if G is None:
        raise TuiwbError("no text to fit the LoRA on: the data gave no tokens")
    return Stats(G, C, yy, n, int(xa.shape[1]), energy)


def closed_form(G: torch.Tensor, C: torch.Tensor, yy: float, rank: int, ridge: float):
    """Ridge least squares + reduced-rank truncation (:func:`tuiwb.patch.solve.solve_reduced_rank` on a
    copy of ``G``, which that overwrites) → ``(A_full [r, D], B [d, r], r2)``: the fitted map is
    ``x ↦ B @ A_full @ x`` and ``r2`` the share of ``‖Δ‖²`` it explains on the recorded inputs."""
    sol = solve_reduced_rank(G.float().clone(), C, yy, rank, ridge)
    return sol.A_full, sol.B, sol.r2


def fit_lora(loaded, edit: FeatureEdit, sequences: Sequence[list[int]], cfg: FitConfig | None = None,
             *, progress: bool = False) -> FitReport:
    """Fit the rank-r LoRA imitating ``edit`` on ``sequences``; the model must be unpatched."""
    cfg = cfg or FitConfig()
    t0 = time.perf_counter()
    layer = sae_layer(edit.sae)
    names = loaded.writer_names(layer)
    device = loaded.layer_device(layer)
    peak = _CudaPeak(device)
    G, C, yy, n, d_attn, energy = record_stats(loaded, edit, sequences, cfg, progress)
    if yy <= 0:
        raise TuiwbError(f"features {list(edit.features)} never fire at layer {layer} on the fitting text: "
                         "nothing to imitate; give text where they fire with `data`")
    t_solve = time.perf_counter()
    sol = solve_reduced_rank(G, C, yy, cfg.rank, cfg.ridge)  # overwrites G
    del G, C
    A_full, B = sol.A_full, sol.B
    solve_seconds = time.perf_counter() - t_solve
    factors = {
        names["attn_out"]: (A_full[:, :d_attn].cpu(), B.cpu()),
        names["mlp_out"]: (A_full[:, d_attn:].cpu(), B.clone().cpu()),
    }
    t_refine = time.perf_counter()
    # Block L's inputs, recorded once: every error measurement and Adam step below runs block L alone.
    block = loaded.blocks[layer]
    prefix = f"{loaded.arch.blocks}.{layer}."
    rel = {full: full[len(prefix):] for full in factors}
    ref_data = record_block_inputs(loaded, edit, layer, _refine_sequences(sequences, energy, cfg.refine_tokens),
                                   cfg.batch_size, cfg.refine_tokens)
    err_closed = block_error(block, rel, factors, ref_data)
    err_refined, refined, steps, refine_seconds = None, False, 0, 0.0
    if cfg.refine_steps > 0 and err_closed >= cfg.refine_skip_below:
        trainable = differentiable_block(block, ref_data[0] if ref_data else None)
        new, steps = refine_block(trainable, rel, factors, ref_data, cfg, progress, f"refining layer {layer}")
        del trainable
        err_refined = block_error(block, rel, new, ref_data)  # on the real (quantized) block
        if err_refined < err_closed:  # measured the same way: refinement can never make it worse
            factors, refined = new, True
        refine_seconds = time.perf_counter() - t_refine
    measured = peak.extra_bytes()
    return FitReport(factors=LoraFactors(modules=factors, rank=cfg.rank), n_tokens=n, r2_closed=sol.r2,
                     rel_err_closed=err_closed, rel_err_refined=err_refined, refined=refined,
                     refine_steps=steps, seconds=time.perf_counter() - t0, solve_seconds=solve_seconds,
                     refine_seconds=refine_seconds,
                     peak_extra_bytes=measured if measured is not None else sol.peak_extra_bytes,
                     peak_measured=measured is not None)


class _CudaPeak:
    """The CUDA allocator's peak over a stretch of work, above what was allocated at its start."""

    def __init__(self, device: torch.device):
        self.cuda = torch.device(device).type == "cuda" and torch.cuda.is_available()
        if self.cuda:
            self.device = torch.device(device)
            torch.cuda.synchronize(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)

    def extra_bytes(self) -> int | None:
        if not self.cuda:
            return None
        torch.cuda.synchronize(self.device)
        return max(0, int(torch.cuda.max_memory_allocated(self.device)) - int(self.base))


def _refine_sequences(sequences, energy: list[float], budget: int) -> list[list[int]]:
    """Sequences for the refinement: half the token budget where the edit is largest (rare features
    still get examples), the rest in order (so the many positions where nothing fires keep weight)."""
    chosen: list[int] = []
    total = 0
    for i in sorted(range(len(energy)), key=lambda i: -energy[i]):
        if energy[i] <= 0 or total >= budget // 2:
            break
        chosen.append(i)
        total += len(sequences[i])
    taken = set(chosen)
    for i in range(len(energy)):
        if total >= budget:
            break
        if i not in taken:
            chosen.append(i)
            total += len(sequences[i])
    return [sequences[i] for i in chosen]


def mean_kl(loaded, sequences: Sequence[list[int]], ref_ctx, test_ctx, batch_size: int = 16) -> float:
    """Mean over all real positions of KL(ref ‖ test) between next-token distributions.

    ``ref_ctx`` / ``test_ctx`` are zero-argument callables returning context managers that put the
    model in the reference / test state (e.g. hook patch on / LoRA patch on).
    """
    total, count = 0.0, 0
    with torch.no_grad():
        for ids, mask, _ in right_padded(sequences, batch_size, loaded.pad_id, loaded.device):
            with ref_ctx():
                p = loaded.model(input_ids=ids, use_cache=False).logits.float()  # [B, T, V]
            with test_ctx():
                q = loaded.model(input_ids=ids, use_cache=False).logits.float()  # [B, T, V]
            logp, logq = torch.log_softmax(p, -1), torch.log_softmax(q, -1)
            kl = (logp.exp() * (logp - logq)).sum(-1)  # [B, T]
            total += float((kl * mask).sum())
            count += int(mask.sum())
    if count == 0:
        raise TuiwbError("no held-out text to measure the LoRA's fidelity on")
    return max(total / count, 0.0)  # KL ≥ 0; float rounding can dip a hair below


HELDOUT_FRACTION = 0.1
"""Share of a text file's lines kept apart to measure a fit's fidelity on."""


def fit_sequences(loaded, acts, data, split: str, max_tokens: int) -> tuple[list[list[int]], str]:
    """Token sequences to fit on (``train``) or to measure fidelity on (``heldout``), and their source:
    ``data`` (a text file or a list of texts, split by line), else the activation store's windows,
    else the model directory's ``train.txt`` / ``heldout.txt``."""
    from pathlib import Path

    from tuiwb.trace.sources import read_lines

    if data is not None:
        if isinstance(data, (list, tuple)):
            lines, src = [str(t) for t in data], "<texts>"
        else:
            lines, src = read_lines(data), str(data)
        cut = max(1, int(len(lines) * (1 - HELDOUT_FRACTION))) if len(lines) > 1 else len(lines)
        part = lines[:cut] if split == "train" else (lines[cut:] or lines)
        return encode_texts(loaded, part, max_tokens=max_tokens), f"{src} ({split} part)"
    if acts is not None:
        return store_sequences(acts, split, max_tokens), f"activation store ({split})"
    f = Path(str(loaded.model_id)) / ("train.txt" if split == "train" else "heldout.txt")
    if f.is_file():
        return encode_texts(loaded, read_lines(f), max_tokens=max_tokens), str(f)
    raise TuiwbError("no text to fit the LoRA on: pass `data` (a text file, one document per line) or an "
                     "activation store")
