"""How good is an SAE on recorded activations, and inside the model (``tuiwb eval``).

Reconstruction metrics, over the evaluated tokens (non-special rows of the split):

* ``fvu`` = Σ‖x − x̂‖² / Σ‖x − mean(x)‖² (mean over the evaluated tokens);
* ``mse`` = Σ‖x − x̂‖² / (n · d_in) (per element, native activation units);
* ``l0`` = mean number of active latents per token; ``dead_fraction`` = latents never active.

With a model (``loaded``): the SAE is spliced into the model at its layer on the windows that hold
the split's tokens — at every non-special position the layer output h becomes x̂(h); BOS/pad
positions, which the SAE never trained on, keep h. ``ce_clean``/``ce_sae``/``ce_zero`` are
next-token cross-entropies (nats) over the positions whose target is one of the split's tokens (input
and target non-special); ``ce_zero`` ablates the same positions instead, to zero (``ablation="zero"``, SAELens' convention, the default) or to the mean
activation over the evaluated tokens (``"mean"``, a stricter baseline). ``ce_loss_score`` =
(ce_zero − ce_sae)/(ce_zero − ce_clean); ``kl`` = mean KL(clean ‖ spliced) per position.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import numpy as np
import torch

from tuiwb.errors import TuiwbError
from tuiwb.model.hooks import hidden, with_hidden
from tuiwb.sae.compat import check_sae_fits
from tuiwb.sae.metrics import ReconstructionSums
from tuiwb.sae.model import SAE

ABLATIONS = ("zero", "mean")


@dataclass(frozen=True)
class EvalResult:
    """Metrics of one SAE on one split of an activation store."""

    fvu: float
    """Fraction of variance unexplained, Σ‖x − x̂‖² / Σ‖x − mean(x)‖²."""
    mse: float
    """Mean squared error per element (native activation units²)."""
    l0: float
    """Mean active latents per token."""
    dead_fraction: float
    """Fraction of latents never active on the evaluated tokens."""
    n_tokens: int
    """Tokens (activation rows) evaluated."""
    layer: int
    """The SAE's layer."""
    split: str
    """``heldout``, ``train`` or ``all``."""
    ce_clean: float | None = None
    """Cross-entropy of the unmodified model (nats/token); None without a model."""
    ce_sae: float | None = None
    """Cross-entropy with the SAE spliced in."""
    ce_zero: float | None = None
    """Cross-entropy with the layer output ablated (see ``ablation``)."""
    ce_loss_score: float | None = None
    """(ce_zero − ce_sae) / (ce_zero − ce_clean): 1 = lossless, 0 = as bad as ablating."""
    kl: float | None = None
    """Mean KL(clean ‖ spliced) per position (nats)."""
    ablation: str | None = None
    """How ``ce_zero`` ablated the layer: ``zero`` or ``mean``."""
    n_ce_tokens: int | None = None
    """Positions the cross-entropies average over."""

    def to_json(self) -> dict:
        return asdict(self)

    def dumps(self) -> str:
        return json.dumps(self.to_json())


def default_val_fraction(sae: SAE) -> float:
    """The held-out fraction the SAE was trained with (so ``heldout`` means the same documents)."""
    training = sae.cfg.training or {}
    vf = training.get("val_fraction")
    return float(vf) if isinstance(vf, (int, float)) else 0.1


def _rows(store, split: str, val_fraction: float, max_tokens: int | None, seed: int = 0) -> np.ndarray:
    if split not in ("heldout", "train", "all"):
        raise TuiwbError(f"`split` must be heldout, train or all, not {split!r}")
    rows = np.asarray(store.row_indices(split, val_fraction=val_fraction), dtype=np.int64)
    if max_tokens is not None and len(rows) > max_tokens:
        rows = np.sort(np.random.default_rng(seed).choice(rows, size=max_tokens, replace=False))
    if len(rows) == 0:
        raise TuiwbError(f"the {split!r} split has no tokens (val_fraction={val_fraction}): "
                         "use `split=all`, or trace more documents")
    return rows


@torch.no_grad()
def reconstruction_stats(store, sae: SAE, rows: np.ndarray, layer: int, batch_size: int = 4096
                         ) -> ReconstructionSums:
    """The reconstruction sums of ``sae`` over ``rows`` of ``store``."""
    dev = sae.W_enc.device
    sums = ReconstructionSums(sae.d_in, sae.d_sae, dev)
    for start in range(0, len(rows), batch_size):
        x = torch.as_tensor(store.read_rows(layer, rows[start:start + batch_size]), dtype=torch.float32)
        if not torch.isfinite(x).all():
            raise TuiwbError(f"the activations of layer {layer} contain NaN or inf: re-trace them")
        sums.update(sae, x.to(dev))  # [b, d_in]
    return sums


def evaluate(store, sae: SAE, split: str = "heldout", loaded=None, *, val_fraction: float | None = None,
             max_tokens: int | None = None, ablation: str = "zero", window_batch: int = 16) -> EvalResult:
    """Evaluate ``sae`` on ``split`` of ``store``; with ``loaded`` (a ``LoadedModel``) also CE/KL."""
    if ablation not in ABLATIONS:
        raise TuiwbError(f"`ablation` must be zero or mean, not {ablation!r}")
    layer = check_sae_fits(sae, store=store)
    vf = default_val_fraction(sae) if val_fraction is None else float(val_fraction)
    rows = _rows(store, split, vf, max_tokens)
    was_training = sae.training
    sae.eval()
    try:
        s = reconstruction_stats(store, sae, rows, layer)
        mean = (s.sum / s.n).cpu()  # [d_in]
        result = dict(s.result(), layer=layer, split=split)
        if loaded is not None:
            result.update(spliced_ce(store, sae, loaded, layer, split, vf, max_tokens=max_tokens,
                                     ablation=ablation, mean=mean.float(), window_batch=window_batch))
    finally:
        sae.train(was_training)
    return EvalResult(**result)


@torch.no_grad()
def spliced_ce(store, sae: SAE, loaded, layer: int, split: str, val_fraction: float, *,
               max_tokens: int | None = None, ablation: str = "zero", mean: torch.Tensor | None = None,
               window_batch: int = 16) -> dict:
    """CE clean / SAE-spliced / ablated and KL(clean ‖ spliced) on the windows holding ``split``'s tokens.

    Windows pack several documents, so a held-out document shares windows with training ones: the
    SAE (or the ablation) replaces every non-special position of a window, and the scores average
    over the positions whose *target* token belongs to ``split`` (input and target non-special).
    """
    check_sae_fits(sae, loaded=loaded, store=store, splice=True)
    dev = loaded.device
    sae.to(dev)
    real = np.zeros(int(store.n_rows), dtype=bool)  # non-special rows: spliced / ablated
    real[np.asarray(store.row_indices("all", val_fraction=val_fraction), dtype=np.int64)] = True
    scored = np.zeros(int(store.n_rows), dtype=bool)  # targets that count: non-special rows of the split
    scored[np.asarray(store.row_indices(split, val_fraction=val_fraction), dtype=np.int64)] = True
    fill = (mean if ablation == "mean" and mean is not None else torch.zeros(sae.d_in)).to(dev)  # [d_in]
    state: dict = {"mode": None, "mask": None}

    def hook(module, inputs, output):
        if state["mode"] is None:
            return None
        h = hidden(output)  # [b, pos, d_model]
        new = sae(h.float()) if state["mode"] == "sae" else fill.expand_as(h)  # [b, pos, d_model]
        return with_hidden(output, torch.where(state["mask"][..., None], new.to(h.dtype), h))

    sums = {"clean": 0.0, "sae": 0.0, "zero": 0.0, "kl": 0.0}
    count = 0
    with loaded.hooks([(layer, hook)]):
        for ids, rows in _window_batches(store, real, scored, window_batch, max_tokens):
            ids_t = torch.as_tensor(ids, dtype=torch.long, device=dev)  # [b, S]
            state["mask"] = torch.as_tensor(real[rows], device=dev)  # [b, S]: positions to replace
            pred = state["mask"][:, :-1] & torch.as_tensor(scored[rows[:, 1:]], device=dev)  # [b, S-1]
            n = int(pred.sum())
            if n == 0:
                continue
            targets = ids_t[:, 1:][pred]  # [n]
            logp = {}
            for mode in ("clean", "sae", "zero"):
                state["mode"] = None if mode == "clean" else mode
                logits = loaded.model(input_ids=ids_t, use_cache=False).logits[:, :-1][pred]  # [n, vocab]
                logp[mode] = torch.log_softmax(logits.float(), dim=-1)
                sums[mode] += float(-logp[mode].gather(-1, targets[:, None]).sum())
            state["mode"] = None
            sums["kl"] += float((logp["clean"].exp() * (logp["clean"] - logp["sae"])).sum())
            count += n
    if count == 0:
        raise TuiwbError(f"the {split!r} split has no windows to run the model on")
    ce = {k: v / count for k, v in sums.items()}
    denom = ce["zero"] - ce["clean"]
    score = (ce["zero"] - ce["sae"]) / denom if abs(denom) > 1e-12 else float("nan")
    return {"ce_clean": ce["clean"], "ce_sae": ce["sae"], "ce_zero": ce["zero"], "ce_loss_score": score,
            "kl": ce["kl"], "ablation": ablation, "n_ce_tokens": count}


def _window_batches(store, real: np.ndarray, scored: np.ndarray, window_batch: int, max_tokens: int | None):
    """``(ids [b, S], rows [b, S])`` of the windows with scored positions, densest first, until
    ``max_tokens`` scored positions are reached (the window that reaches it is the last).

    Held-out documents are spread thinly over windows packed with training ones; taking the densest
    windows first needs several times fewer forward passes for the same number of scored tokens.
    Windows are the consecutive ``seq_len``-row blocks of the store (its documented layout).
    """
    L = int(store.seq_len)
    n_win = int(store.n_rows) // L
    pair = np.zeros(len(real), dtype=bool)  # row r is a scored prediction: input r real, target r+1 scored
    pair[:-1] = real[:-1] & scored[1:]
    hits = pair[: n_win * L].reshape(n_win, L)[:, : L - 1].sum(1)  # [n_windows]; last position has no target
    order = np.argsort(-hits, kind="stable")
    order = order[hits[order] > 0]
    if max_tokens is not None:
        stop = int(np.searchsorted(np.cumsum(hits[order]), max_tokens)) + 1
        order = order[:stop]
    tokens = store.token_ids()
    for start in range(0, len(order), window_batch):
        wins = np.sort(order[start:start + window_batch])
        rows = wins[:, None] * L + np.arange(L)[None, :]  # [b, S]
        yield tokens[rows].astype(np.int64), rows
