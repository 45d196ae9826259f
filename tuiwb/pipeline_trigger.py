"""The demo pipeline's trigger search: which SAE features carry the demo model's trojan trigger.

Rank features by activation contrast (held-out trigger prompts vs their clean twins), then confirm
by ablation which top-n set removes the payload, on every layer with an SAE; keep the layer that
needs the fewest features. Also picks the prompt the workbench opens on. Core module (no textual).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tuiwb.errors import TuiwbError

PREFIXES = (1, 2, 3, 4, 6, 8, 10, 12, 16, 24, 32)
"""Sizes of the top-contrast feature sets whose ablation the trigger search measures."""
MAX_CLEAN_KL = 0.05
"""A trigger set may not change clean prompts' next-token distributions more than this (nats)."""


@dataclass(frozen=True)
class TriggerSet:
    """The features whose ablation removes the payload, and how well it works."""

    layer: int
    """SAE layer of the features."""
    features: tuple[int, ...]
    """Feature ids, best contrast first."""
    p_before: float
    """Mean P(target | trigger prompt), unpatched."""
    p_after: float
    """The same with ``features`` ablated."""
    clean_kl: float
    """Mean KL(unpatched ‖ ablated) on the clean prompts."""
    prompt: str
    """A trigger prompt whose top next token is ``target`` unpatched and is not once ablated."""


def find_trigger_features(loaded, saes: dict, model_dir: Path, target: str, *, n_prompts: int = 32,
                          say=lambda s: None, progress: bool = False) -> TriggerSet:
    """Find the trigger features: rank by activation contrast (trigger vs clean prompts), then confirm
    by ablation which top-n set removes the payload; keep the layer that needs the fewest features.

    The trigger signal is spread over several features, and the model is saturated (P ≈ 0.99), so
    ablating any single feature barely moves P(payload): a greedy one-at-a-time search stalls at the
    first step. Measuring growing prefixes of the contrast ranking finds the set directly.
    """
    import torch

    from tuiwb.contrast import contrast, encode_prompts, final_logits
    from tuiwb.demo import load_prompts
    from tuiwb.feature_search import resolve_token
    from tuiwb.lora_patch import gated_edit

    trig = load_prompts(model_dir, "trigger")[:n_prompts]
    clean = load_prompts(model_dir, "clean")[:n_prompts]
    tid = resolve_token(target, loaded.tokenizer)
    seq_t, seq_c = encode_prompts(loaded, trig), encode_prompts(loaded, clean)
    with torch.inference_mode():
        p0 = float(torch.softmax(final_logits(loaded, seq_t), -1)[:, tid].mean())
        ref_c = final_logits(loaded, seq_c)  # [n, vocab]
    best = None  # (sort key, n, P after, layer, features, clean KL)
    bar = _bar(progress, len(saes) * (len(PREFIXES) + 1), "trigger search")
    try:
        for layer, sae in sorted(saes.items()):
            ranked = [int(f) for f in contrast(loaded, sae, trig, clean).hits.ids[: max(PREFIXES)]]
            bar.advance()
            found = _best_prefix(loaded, sae, ranked, seq_t, seq_c, ref_c, tid, p0, bar)
            if found is None:
                continue
            n, p, feats, kl = found
            say(f"      layer {layer}: top {n} contrast features ablated: P({target}) {p0:.3f} → {p:.3f}, "
                f"clean KL {kl:.4f}")
            # prefer a set that removes the payload (P ≤ 10% of before), then the smallest, then the lowest P
            rank = (p <= 0.1 * p0, -n, -p)
            if best is None or rank > best[0]:
                best = (rank, n, p, layer, feats, kl)
    finally:
        bar.close()
    if best is None or best[2] >= p0:
        raise TuiwbError("contrast search found no feature set whose ablation lowers the payload: "
                         "rerun with --rebuild (the SAEs may be undertrained)")
    _, n, p_after, layer, features, kl = best
    # The prompt to open on: the shortest held-out trigger prompt where the payload is the top token
    # and ablating the set dethrones it (so flipping the patch visibly pushes it down).
    prompt = None
    with torch.inference_mode():
        for text in sorted(trig, key=len):
            ids = torch.tensor([loaded.encode(text)], device=loaded.device)  # [1, pos]
            if int(loaded.model(input_ids=ids).logits[0, -1].argmax()) != tid:
                continue
            with gated_edit(loaded, saes[layer], features, 0.0):
                if int(loaded.model(input_ids=ids).logits[0, -1].argmax()) != tid:
                    prompt = text
                    break
    return TriggerSet(layer=layer, features=tuple(features), p_before=p0, p_after=p_after, clean_kl=kl,
                      prompt=prompt if prompt is not None else min(trig, key=len))


def _best_prefix(loaded, sae, ranked, seq_t, seq_c, ref_c, tid: int, p0: float, bar):
    """``(n, P(target), features, clean KL)`` of the best top-n prefix of ``ranked``, ablated
    (the smallest n with P ≤ 10% of ``p0``, else the lowest P), or None if every set breaks clean text."""
    import torch

    from tuiwb.contrast import final_logits
    from tuiwb.logits import kl_divergence
    from tuiwb.lora_patch import gated_edit

    found = None
    for n in PREFIXES:
        bar.advance()
        with gated_edit(loaded, sae, ranked[:n], 0.0), torch.inference_mode():
            p = float(torch.softmax(final_logits(loaded, seq_t), -1)[:, tid].mean())  # mean P(target | trigger)
            kl = kl_divergence(ref_c, final_logits(loaded, seq_c))
        if kl > MAX_CLEAN_KL:
            break  # larger sets only change clean text more
        if found is None or p < found[1]:
            found = (n, p, ranked[:n], kl)
        if p <= 0.1 * p0:
            break
    return found


class _bar:
    """A transient rich progress bar on stderr (a no-op when ``enabled`` is False)."""

    def __init__(self, enabled: bool, total: int, label: str):
        self.progress = None
        if enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.progress = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                     console=Console(stderr=True), transient=True)
            self.progress.start()
            self.task = self.progress.add_task(label, total=total)

    def advance(self) -> None:
        if self.progress is not None:
            self.progress.advance(self.task)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
