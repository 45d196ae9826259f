"""Fit a rank-r LoRA on one layer's residual writers that imitates the exact SAE-gated edit.

DESIGN.md ("The patch math") records what was measured: projecting feature directions out of the
weights is *not* the gated edit (it broke the model), while a reduced-rank least-squares fit matched
the hook closely. The recipe, for the edit at layer L's output h with target Δ = (α−1)·Σ a_f(h)·d_f:

1. record, on real text, the inputs of L's attention out-projection ``X_attn`` and MLP
   down-projection ``X_mlp`` together with Δ — only as sufficient statistics (Gram matrix ``XᵀX`` and
   ``XᵀΔ``), so memory does not grow with the number of tokens;
2. solve the ridge least squares ``[X_attn, X_mlp] W ≈ Δ`` jointly (on standardised columns, so one
   relative ridge works for every model);
3. reduced-rank regression: keep the top-r eigenvectors V_r of the fitted values' covariance
   ``WᵀXᵀXW`` and use ``W V_r V_rᵀ`` — both modules share B = V_r, each gets A = (W_module V_r)ᵀ;
4. refine A and B with a few hundred Adam steps on the *real* layer output (the closed form ignores
   that editing the attention output changes the MLP's input); keep the refinement only if it lowers
   the error, measured on the same real output.

Factors are "effective": a module's output gains ``B @ A @ x``; ``tuiwb.patch_io`` folds PEFT's
``lora_alpha / r`` scaling in when it writes an adapter.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple, Sequence

import torch
from torch import nn

from tuiwb.errors import TuiwbError
from tuiwb.lora_patch import FeatureEdit, sae_layer

RANK_MIN, RANK_MAX = 4, 16


def check_rank(rank: int) -> int:
    if not isinstance(rank, int) or isinstance(rank, bool) or not RANK_MIN <= rank <= RANK_MAX:
        raise TuiwbError(f"LoRA rank {rank!r} is out of range: use {RANK_MIN}..{RANK_MAX} (default 8)")
    return rank


@dataclass
class FitConfig:
    """How a LoRA patch is fitted to its exact edit."""

    rank: int = 8
    """LoRA rank r (4..16): the rank of the reduced-rank regression."""
    ridge: float = 1e-4
    """Ridge penalty relative to the (unit) diagonal of the standardised Gram matrix."""
    fit_tokens: int = 16384
    """Tokens of text recorded for the closed-form fit (DESIGN.md: 8k gave the quality of 128k)."""
    refine_steps: int = 300
    """Adam steps on the real layer output after the closed form; 0 turns refinement off."""
    refine_lr: float = 2e-3
    """Adam learning rate, relative to the RMS of each factor's closed-form entries."""
    refine_skip_below: float = 0.01
    """Skip refinement when the closed form's layer-output error (‖h_lora − h_hook‖²/‖Δ‖²) is
    already below this: nothing left worth the time."""
    refine_min_gain: float = 0.01
    """Stop refining early when a 50-step window lowers the mean loss by less than this fraction."""
    refine_tokens: int = 4096
    """Tokens held in memory (inputs and targets) for the refinement."""
    batch_size: int = 16
    """Sequences per forward pass."""

    def __post_init__(self) -> None:
        check_rank(self.rank)
        if not self.ridge > 0:
            raise TuiwbError(f"ridge must be positive, not {self.ridge}")
        if self.fit_tokens < 64 or self.refine_tokens < 16 or self.batch_size < 1:
            raise TuiwbError("fit_tokens must be ≥ 64, refine_tokens ≥ 16 and batch_size ≥ 1")
        if self.refine_steps < 0 or not self.refine_lr > 0:
            raise TuiwbError("refine_steps must be ≥ 0 and refine_lr positive")
        if self.refine_skip_below < 0 or not 0 <= self.refine_min_gain < 1:
            raise TuiwbError("refine_skip_below must be ≥ 0 and refine_min_gain in [0, 1)")


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


def read_text_file(path: str | Path) -> list[str]:
    """Non-empty lines of a UTF-8 text file (one document per line)."""
    p = Path(path)
    if not p.is_file():
        raise TuiwbError(f"text file {p} does not exist: pass --data with a UTF-8 text file")
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise TuiwbError(f"{p} is not UTF-8 text: {e.reason}") from e
    lines = [ln for ln in lines if ln.strip()]
    if not lines:
        raise TuiwbError(f"{p} has no text")
    return lines


def store_sequences(store, split: str, max_tokens: int) -> list[list[int]]:
    """Token windows of an ``ActivationStore`` split, up to ``max_tokens`` tokens."""
    out, total = [], 0
    for _seq_id, token_ids, _rows in store.windows(split=split):
        out.append([int(t) for t in token_ids])
        total += len(token_ids)
        if total >= max_tokens:
            break
    return out


def batches(sequences: Sequence[list[int]], batch_size: int, pad_id: int, device,
            ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Right-padded ``(ids [B, T], mask [B, T] bool)`` batches.

    Right padding needs no attention mask in a causal LM: real positions never attend to later pads.
    """
    for i in range(0, len(sequences), batch_size):
        chunk = sequences[i:i + batch_size]
        T = max(len(s) for s in chunk)
        ids = torch.full((len(chunk), T), pad_id, dtype=torch.long)  # [B, T]
        mask = torch.zeros((len(chunk), T), dtype=torch.bool)  # [B, T]
        for j, s in enumerate(chunk):
            ids[j, :len(s)] = torch.tensor(s, dtype=torch.long)
            mask[j, :len(s)] = True
        yield ids.to(device), mask.to(device)


def pad_id(loaded) -> int:
    tok = loaded.tokenizer
    for pid in (tok.pad_token_id, tok.eos_token_id, 0):
        if pid is not None:
            return int(pid)
    return 0


# ------------------------------------------------------------------------------- forward helpers


class _Stop(Exception):
    """Raised by a hook to end a forward pass once the layer we need has run."""


def _hidden(output) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


@contextlib.contextmanager
def _hooks(pairs):
    handles = []
    try:
        for kind, module, fn in pairs:
            reg = module.register_forward_pre_hook if kind == "pre" else module.register_forward_hook
            handles.append(reg(fn))
        yield
    finally:
        for h in handles:
            h.remove()


def run_to_layer(loaded, ids: torch.Tensor, layer: int, extra_hooks=()) -> torch.Tensor:
    """Run the model until block ``layer`` has produced its output, and return it ``[B, T, d]``."""
    box = {}

    def stop(module, args, output):
        box["h"] = _hidden(output)
        raise _Stop

    with _hooks([*extra_hooks, ("post", loaded.block(layer), stop)]):
        try:
            loaded.model(input_ids=ids, use_cache=False)
        except _Stop:
            pass
    if "h" not in box:
        raise RuntimeError(f"block {layer} did not run")
    return box["h"]


@contextlib.contextmanager
def factor_hooks(loaded, factors: dict[str, tuple[torch.Tensor, torch.Tensor]]):
    """Add ``B @ A @ x`` to each named module's output (plain torch: differentiable, any quant)."""
    pairs = []
    modules = dict(loaded.model.named_modules())
    for name, (A, B) in factors.items():
        module = modules[name]

        def hook(mod, args, output, A=A, B=B):
            x = args[0]
            upd = (x.to(A.dtype) @ A.T) @ B.T  # [..., d_out]
            return output + upd.to(output.dtype)

        pairs.append(("post", module, hook))
    with _hooks(pairs):
        yield


# ------------------------------------------------------------------------------------ the fit


def _progress(enabled: bool):
    """A rich progress bar showing tokens/s (``disable`` keeps tests and pipes quiet)."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[rate]}"),
                    TimeElapsedColumn(), disable=not enabled, transient=True, console=Console(stderr=True))


class Stats(NamedTuple):
    """Sufficient statistics of the recorded inputs and targets (float64, on the model's device)."""

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


def record_stats(loaded, edit: FeatureEdit, sequences, cfg: FitConfig, progress: bool = False) -> Stats:
    """Gram statistics of ``[X_attn, X_mlp]`` against the exact target Δ on ``sequences``."""
    layer = sae_layer(edit.sae)
    writers = loaded.writers(layer)
    device = loaded.device
    acc: dict = {}

    def grab(key):
        def pre(module, args):
            acc[key] = args[0]
        return pre

    G = C = None
    yy, n, energy = 0.0, 0, []
    prog = _progress(progress)
    t0 = time.perf_counter()
    with prog, torch.no_grad():
        task = prog.add_task(f"recording layer {layer}", total=cfg.fit_tokens, rate="")
        hooks = [("pre", writers["attn_out"], grab("attn")), ("pre", writers["mlp_out"], grab("mlp"))]
        for ids, mask in batches(sequences, cfg.batch_size, pad_id(loaded), device):
            h = run_to_layer(loaded, ids, layer, hooks)  # [B, T, d]
            m = mask.reshape(-1)  # [B*T]
            xa = acc["attn"].reshape(-1, acc["attn"].shape[-1])[m]  # [N, d_attn]
            xm = acc["mlp"].reshape(-1, acc["mlp"].shape[-1])[m]  # [N, d_ff]
            X = torch.cat([xa, xm], dim=-1).double()  # [N, D]
            delta = edit.delta(h).to(device).double()  # [B, T, d]
            energy += (delta.pow(2).sum(-1) * mask).sum(-1).tolist()  # B values
            Y = delta.reshape(-1, delta.shape[-1])[m]  # [N, d]
            if G is None:
                G = torch.zeros(X.shape[1], X.shape[1], dtype=torch.float64, device=device)
                C = torch.zeros(X.shape[1], Y.shape[1], dtype=torch.float64, device=device)
            G += X.T @ X
            C += X.T @ Y
            yy += float((Y * Y).sum())
            n += X.shape[0]
            prog.update(task, advance=X.shape[0],
                        rate=f"{n / max(time.perf_counter() - t0, 1e-9):,.0f} tok/s")
            if n >= cfg.fit_tokens:
                break
    if G is None:
        raise TuiwbError("no text to fit the LoRA on: the data gave no tokens")
    return Stats(G, C, yy, n, int(xa.shape[1]), energy)


def closed_form(G: torch.Tensor, C: torch.Tensor, yy: float, rank: int, ridge: float):
    """Ridge least squares + reduced-rank truncation → (W_attn_part, W_mlp_part are rows of) W_r.

    Returns ``(A_full [r, D], B [d, r], r2)``: the fitted map is ``x ↦ B @ A_full @ x`` and
    ``r2`` the share of ``‖Δ‖²`` it explains on the recorded inputs.
    """
    diag = G.diagonal().clamp_min(0)
    scale = torch.where(diag > 0, diag.rsqrt(), torch.zeros_like(diag))  # [D]
    Gs = G * scale[:, None] * scale[None, :]  # [D, D], unit diagonal
    Cs = C * scale[:, None]  # [D, d]
    eye = torch.eye(G.shape[0], dtype=G.dtype, device=G.device)
    Ws = torch.linalg.solve(Gs + ridge * eye, Cs)  # [D, d]
    W = Ws * scale[:, None]  # [D, d]: back to raw inputs
    M = W.T @ G @ W  # [d, d]: covariance of the fitted values
    evals, evecs = torch.linalg.eigh(M)  # ascending
    V = evecs[:, -rank:].flip(-1)  # [d, r]
    Wr = W @ V  # [D, r]
    fitted = Wr @ V.T  # [D, d]
    resid = yy - 2 * float((fitted * C).sum()) + float((fitted * (G @ fitted)).sum())
    r2 = 1.0 - resid / yy if yy > 0 else 0.0
    return Wr.T.float(), V.float(), r2


def fit_lora(loaded, edit: FeatureEdit, sequences: Sequence[list[int]], cfg: FitConfig | None = None,
             *, progress: bool = False) -> FitReport:
    """Fit the rank-r LoRA imitating ``edit`` on ``sequences``; the model must be unpatched."""
    cfg = cfg or FitConfig()
    t0 = time.perf_counter()
    layer = sae_layer(edit.sae)
    names = loaded.writer_names(layer)
    G, C, yy, n, d_attn, energy = record_stats(loaded, edit, sequences, cfg, progress)
    if yy <= 0:
        raise TuiwbError(f"features {list(edit.features)} never fire at layer {layer} on the fitting text: "
                         "nothing to imitate; give text where they fire with --data")
    A_full, B, r2 = closed_form(G, C, yy, cfg.rank, cfg.ridge)
    factors = {
        names["attn_out"]: (A_full[:, :d_attn].cpu(), B.cpu()),
        names["mlp_out"]: (A_full[:, d_attn:].cpu(), B.clone().cpu()),
    }
    err_refined, refined, steps = None, False, 0
    ref_data = _refine_data(loaded, edit, _refine_sequences(sequences, energy, cfg.refine_tokens), cfg)
    err_closed = _layer_error(loaded, layer, factors, ref_data)
    if cfg.refine_steps > 0 and err_closed >= cfg.refine_skip_below:
        new, steps = _refine(loaded, layer, factors, ref_data, cfg, progress)
        err_refined = _layer_error(loaded, layer, new, ref_data)
        if err_refined < err_closed:  # measured the same way: refinement can never make it worse
            factors, refined = new, True
    return FitReport(factors=LoraFactors(modules=factors, rank=cfg.rank), n_tokens=n, r2_closed=r2,
                     rel_err_closed=err_closed, rel_err_refined=err_refined, refined=refined,
                     refine_steps=steps, seconds=time.perf_counter() - t0)


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


def _refine_data(loaded, edit, sequences, cfg):
    """Batches (ids, mask, target h + Δ, ‖Δ‖²) for the refinement, targets from the exact edit."""
    out, total = [], 0
    layer = sae_layer(edit.sae)
    with torch.no_grad():
        for ids, mask in batches(sequences, cfg.batch_size, pad_id(loaded), loaded.device):
            h = run_to_layer(loaded, ids, layer)  # [B, T, d]
            delta = edit.delta(h).to(h.device, torch.float32)  # [B, T, d]
            target = h.float() + delta  # [B, T, d]
            out.append((ids, mask, target, float((delta.pow(2).sum(-1) * mask).sum())))
            total += int(mask.sum())
            if total >= cfg.refine_tokens:
                break
    return out


def _layer_error(loaded, layer, factors, data) -> float:
    """‖h_lora − h_hook‖² / ‖Δ‖² summed over the refinement tokens (real forward, interaction included)."""
    num = den = 0.0
    with torch.no_grad(), factor_hooks(loaded, factors):
        for ids, mask, target, dd in data:
            h = run_to_layer(loaded, ids, layer).float()  # [B, T, d]
            num += float(((h - target).pow(2).sum(-1) * mask).sum())
            den += dd
    return num / den if den > 0 else math.inf


_WINDOW = 50


def _refine(loaded, layer, factors, data, cfg: FitConfig, progress: bool):
    """Adam on the LoRA factors against the exact edit's layer output → (new factors, steps run)."""
    device = loaded.device
    params: dict[str, tuple[nn.Parameter, nn.Parameter]] = {}
    groups = []
    for name, (A, B) in factors.items():
        pa = nn.Parameter(A.clone().to(device))
        pb = nn.Parameter(B.clone().to(device))
        params[name] = (pa, pb)
        for p in (pa, pb):
            rms = float(p.detach().pow(2).mean().sqrt()) or 1e-3
            groups.append({"params": [p], "lr": cfg.refine_lr * rms})
    opt = torch.optim.Adam(groups)
    norm = max(sum(dd for *_, dd in data) / len(data), 1e-12)
    prog = _progress(progress)
    t0 = time.perf_counter()
    ntok, losses, steps = 0, [], 0
    with prog, factor_hooks(loaded, params):
        task = prog.add_task(f"refining layer {layer}", total=cfg.refine_steps, rate="")
        for step in range(cfg.refine_steps):
            if step >= 2 * _WINDOW and step % _WINDOW == 0:
                last, prev = losses[-_WINDOW:], losses[-2 * _WINDOW:-_WINDOW]
                if sum(last) > (1 - cfg.refine_min_gain) * sum(prev):
                    break  # plateau: more steps would cost time for nothing
            ids, mask, target, dd = data[step % len(data)]
            with torch.enable_grad():
                h = run_to_layer(loaded, ids, layer).float()  # [B, T, d]
                # One normaliser for all batches: an epoch's mean loss is then exactly the global
                # ‖h_lora − h_hook‖²/‖Δ‖² that decides whether the refinement is kept.
                loss = ((h - target).pow(2).sum(-1) * mask).sum() / norm
                flat = [p for pair in params.values() for p in pair]
                grads = torch.autograd.grad(loss, flat)
            for p, g in zip(flat, grads):
                p.grad = g
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
            steps += 1
            ntok += int(mask.sum())
            prog.update(task, advance=1, rate=f"{ntok / max(time.perf_counter() - t0, 1e-9):,.0f} tok/s")
    new = {name: (pa.detach().float().cpu(), pb.detach().float().cpu()) for name, (pa, pb) in params.items()}
    return new, steps


def mean_kl(loaded, sequences: Sequence[list[int]], ref_ctx, test_ctx, batch_size: int = 16) -> float:
    """Mean over all real positions of KL(ref ‖ test) between next-token distributions.

    ``ref_ctx`` / ``test_ctx`` are zero-argument callables returning context managers that put the
    model in the reference / test state (e.g. hook patch on / LoRA patch on).
    """
    total, count = 0.0, 0
    with torch.no_grad():
        for ids, mask in batches(sequences, batch_size, pad_id(loaded), loaded.device):
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
