"""Contrast search: which features separate prompt set A from set B, and which ones *cause* a token.

Two rankings:

* :func:`contrast` — mean activation on A minus mean activation on B, at the final position (or the
  maximum over positions). Cheap, but measured on a trojaned model it is the wrong question for
  removing a behaviour: the top features by difference left the payload in place or even raised it
  (0.77 → 0.92), and the answer swung between SAEs.
* :func:`find_feature_set` — rank by the *causal effect* on ``log P(target)`` on A, estimated by
  activation × gradient with the SAE spliced into the model (the SAE error term is kept, so the
  forward pass is unchanged), summed over **all positions** — a trigger-detector fires at the trigger
  token, earlier than the final position where the payload is predicted, and the exact edit of
  :func:`tuiwb.patch.edit.gated_edit` acts at every position too. The estimate is then *confirmed*:
  greedily, of the few best-attributed candidates the one whose real ablation (``gated_edit``, on top
  of the set so far) lowers the target most is added and the attribution recomputed with the set
  ablated (a spread-out signal has backups that only show once the first features are gone), until
  the target stops falling, the set reaches ``max_features``; with a B set, a feature that would push
  the mean KL on B past ``max_clean_kl`` is skipped.

  "Lowers the target" is measured in mean log-odds of the target, clamped below at ``p_floor``: on
  the demo trojan P(payload) is 0.99 and no single feature moves it (0.99 → 0.98, the signal is
  redundant) although it moves the log-odds by ~1 nat; measured in P the search stopped at once,
  in log-odds it found the 5 features that take P to 0.009. The clamp stops prompts that are already
  fixed from steering the search.
"""

from __future__ import annotations

import math
from contextlib import ExitStack
from dataclasses import dataclass

import numpy as np
import torch

from tuiwb.errors import TuiwbError
from tuiwb.features.config import EffectConfig
from tuiwb.features.search import Hits, _ranked, resolve_token
from tuiwb.model.batching import right_padded
from tuiwb.model.hooks import hidden, with_hidden
from tuiwb.model.logits import kl_divergence, last_logits
from tuiwb.progress import as_progress

POSITIONS = ("final", "max")


# ---- prompts --------------------------------------------------------------------------------------
def encode_prompts(loaded, prompts: list[str]) -> list[list[int]]:
    if not prompts:
        raise TuiwbError("no prompts given: a contrast needs at least one prompt in each set")
    return [loaded.encode(p) for p in prompts]


def _batches(loaded, seqs: list[list[int]], batch_size: int):
    """Right-padded ``(ids [b, w], mask [b, w] long, last [b])``; each row is read at its own last position."""
    for ids, mask, last in right_padded(seqs, batch_size, loaded.pad_id, loaded.device):
        yield ids, mask.long(), last


# ---- activation contrast ----------------------------------------------------------------------------
@torch.no_grad()
def prompt_acts(loaded, sae, seqs: list[list[int]], position: str = "final", batch_size: int = 32) -> torch.Tensor:
    """``[n_prompts, d_sae]`` SAE activations at each prompt's final position (or max over positions)."""
    if position not in POSITIONS:
        raise TuiwbError(f"position must be one of {', '.join(POSITIONS)}, not {position!r}")
    out = []
    for ids, mask, last in _batches(loaded, seqs, batch_size):
        h = loaded.run_to(ids, sae.layer, attention_mask=mask)  # [b, w, d]: nothing later is computed
        acts = sae.encode(h.to(sae.W_enc.device)).float()  # [b, w, d_sae]
        if position == "final":
            out.append(acts[torch.arange(len(last)), last.to(acts.device)])  # [b, d_sae]
        else:
            m = mask.to(acts.device).unsqueeze(-1).bool()  # [b, w, 1]
            out.append(acts.masked_fill(~m, 0).max(1).values)  # [b, d_sae]
    return torch.cat(out).cpu()


@dataclass(frozen=True, eq=False)
class ContrastResult:
    """Activation contrast of two prompt sets."""

    hits: Hits
    """All features, largest ``mean_a - mean_b`` first."""
    mean_a: np.ndarray
    """``[d_sae]`` mean activation on A at the chosen position."""
    mean_b: np.ndarray
    """``[d_sae]`` same on B."""
    position: str
    """``"final"`` or ``"max"``."""


def contrast(loaded, sae, prompts_a: list[str], prompts_b: list[str], position: str = "final",
             batch_size: int = 32) -> ContrastResult:
    """Rank features by how much more they fire on A than on B (score = mean_a − mean_b)."""
    a = prompt_acts(loaded, sae, encode_prompts(loaded, prompts_a), position, batch_size).mean(0).numpy()
    b = prompt_acts(loaded, sae, encode_prompts(loaded, prompts_b), position, batch_size).mean(0).numpy()
    diff = a - b
    return ContrastResult(_ranked(np.arange(len(diff)), diff), a, b, position)


# ---- causal effect ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AblationStep:
    """One greedy addition."""

    feature: int
    """The feature added."""
    p_target: float
    """Mean P(target) on the A prompts (eval subset) with the set so far ablated."""
    objective: float
    """Mean clamped log-odds of the target on those prompts (what the greedy lowers)."""
    clean_kl: float | None
    """Mean KL(original ‖ ablated) on the B prompts (eval subset), None without B."""


@dataclass(frozen=True, eq=False)
class EffectResult:
    """Features ranked by causal effect on a target token, the confirmed set first."""

    target: str
    """The target token as given."""
    target_id: int
    """Its id."""
    attribution: np.ndarray
    """``[d_sae]`` estimated drop of mean log P(target) on A when each feature alone is ablated
    (activation × gradient summed over positions); positive = the feature supports the target."""
    confirmed: tuple[int, ...]
    """The greedy set, in the order added."""
    steps: tuple[AblationStep, ...]
    """One per confirmed feature."""
    p_before: float
    """Mean P(target) on all A prompts, unpatched."""
    p_after: float
    """Mean P(target) on all A prompts with the confirmed set ablated."""
    clean_kl: float | None
    """Mean KL on all B prompts with the confirmed set ablated (None without B)."""

    @property
    def hits(self) -> Hits:
        """The confirmed set (in order), then every other feature by attribution; score = attribution."""
        rest = _ranked(np.setdiff1d(np.arange(len(self.attribution)), np.array(self.confirmed, dtype=np.int64)),
                       np.delete(self.attribution, list(self.confirmed)) if self.confirmed else self.attribution)
        ids = np.concatenate([np.array(self.confirmed, dtype=np.int64), rest.ids])
        return Hits(ids, self.attribution[ids].astype(np.float64))


OBJECTIVES = ("logprob", "prob", "logodds")


def target_objective(logits: torch.Tensor, target_id: int, objective: str = "logprob",
                     floor: float | None = None) -> torch.Tensor:
    """``[n]`` per-prompt log P(target), P(target) or log-odds of the target from logits ``[n, V]``.

    Log-odds ``log P − log(1 − P)`` keep their slope where the target is near-certain (a redundant
    signal barely moves P = 0.99 when one of its carriers goes, but moves its log-odds); ``floor``
    clamps them from below (zero gradient there), so already-suppressed prompts stop counting.
    """
    if objective not in OBJECTIVES:
        raise TuiwbError(f"objective must be one of {', '.join(OBJECTIVES)}, not {objective!r}")
    logp = torch.log_softmax(logits.float(), -1)  # [n, V]
    lt = logp[:, target_id]  # [n]
    if objective == "logprob":
        return lt
    if objective == "prob":
        return lt.exp()
    others = torch.cat([logp[:, :target_id], logp[:, target_id + 1:]], -1).logsumexp(-1)  # log(1 − P)
    odds = lt - others
    return odds.clamp_min(floor) if floor is not None else odds


def attribution(loaded, sae, seqs: list[list[int]], target_id: int, ablated=(), objective: str = "logprob",
                batch_size: int = 32, floor: float | None = None) -> np.ndarray:
    """``[d_sae]`` Σ_prompts Σ_positions a_f · (d_f · ∂J/∂h) / n_prompts, with ``ablated`` removed.

    ``J`` is :func:`target_objective` at each prompt's last position. The layer output is replaced by
    a leaf equal to it (minus the ablated features' contributions, exactly the gated edit), so
    ``∂J/∂h`` is taken without touching parameter grads.
    """
    W = sae.W_dec.detach()  # [d_sae, d_in]
    abl = torch.tensor(sorted(set(int(f) for f in ablated)), dtype=torch.long, device=W.device)
    total = torch.zeros(W.shape[0], dtype=torch.float64, device=W.device)
    state: dict = {}

    def splice(module, args, output):
        h = hidden(output)  # [b, w, d_in]
        with torch.no_grad():
            acts = sae.encode(h.to(W.device)).float()  # [b, w, d_sae]
            if len(abl):
                h = h - (acts[..., abl] @ W[abl].float()).to(h.dtype)
                acts[..., abl] = 0.0
        leaf = h.detach().requires_grad_(True)
        state["leaf"], state["acts"] = leaf, acts
        return with_hidden(output, leaf)

    with loaded.hooks([(sae.layer, splice)]):
        for ids, mask, last in _batches(loaded, seqs, batch_size):
            with torch.enable_grad():
                logits = loaded.model(input_ids=ids, attention_mask=mask, use_cache=False).logits  # [b, w, V]
                j = target_objective(logits[torch.arange(len(last)), last], target_id, objective, floor)  # [b]
                (grad,) = torch.autograd.grad(j.sum(), state["leaf"])  # [b, w, d_in]
            with torch.no_grad():
                g_feat = grad.to(W.device).float() @ W.float().t()  # [b, w, d_sae]
                m = mask.to(W.device).unsqueeze(-1)  # [b, w, 1]
                total += (state["acts"] * g_feat * m).sum((0, 1)).double()
    return (total / len(seqs)).cpu().numpy()


def _p_target(loaded, sae, seqs, target_id: int, features, batch_size: int,
              floor: float | None = None) -> tuple[float, float]:
    """(mean P(target), mean clamped log-odds) with ``features`` ablated by the patch engine's gated edit."""
    from tuiwb.patch.edit import gated_edit

    with ExitStack() as stack:
        if features:
            stack.enter_context(gated_edit(loaded, sae, list(features), 0.0))
        logits = last_logits(loaded, seqs, batch_size)  # [n, V]
    p = float(target_objective(logits, target_id, "prob").mean())
    return p, float(target_objective(logits, target_id, "logodds", floor).mean())


def _clean_kl(loaded, sae, seqs, ref: torch.Tensor, features, batch_size: int) -> float:
    from tuiwb.patch.edit import gated_edit

    with gated_edit(loaded, sae, list(features), 0.0):
        return kl_divergence(ref, last_logits(loaded, seqs, batch_size))


def find_feature_set(loaded, sae, prompts_a: list[str], target: str, prompts_b: list[str] | None = None,
                    cfg: EffectConfig | None = None, progress: bool = False) -> EffectResult:
    """Rank features by their causal effect on ``target`` on the A prompts and confirm a set.

    See the module docstring for the method. ``prompts_b`` (e.g. clean prompts) is optional; with it
    the set never breaks the model on B beyond ``cfg.max_clean_kl``.
    """
    cfg = cfg or EffectConfig()
    target_id = resolve_token(target, loaded.tokenizer)
    seq_a = encode_prompts(loaded, prompts_a)
    seq_b = encode_prompts(loaded, prompts_b) if prompts_b else None
    eval_a = seq_a[: cfg.max_eval_prompts]
    eval_b = seq_b[: cfg.max_eval_prompts] if seq_b else None
    bs = cfg.batch_size
    say = as_progress(progress).say

    floor = cfg.logodds_floor
    attr0 = attribution(loaded, sae, seq_a, target_id, (), "logprob", bs)
    p_cur, obj_cur = _p_target(loaded, sae, eval_a, target_id, (), bs, floor)
    ref_b = last_logits(loaded, eval_b, bs) if eval_b else None
    say(f"P({target}) on A = {p_cur:.4f} before ablation")
    chosen: list[int] = []
    steps: list[AblationStep] = []
    rejected: set[int] = set()
    attr = attr0
    while len(chosen) < cfg.max_features:
        if chosen:  # backups of a spread-out signal only show once the first features are gone
            attr = attribution(loaded, sae, eval_a, target_id, chosen, "logodds", bs, floor)
        order = [int(f) for f in np.argsort(-attr, kind="stable")
                 if attr[f] > 0 and int(f) not in chosen and int(f) not in rejected][: cfg.n_try]
        if not order:
            break
        tried = sorted((*_p_target(loaded, sae, eval_a, target_id, chosen + [f], bs, floor)[::-1], f)
                       for f in order)  # (objective, p, feature), lowest objective first
        added, n_rejected = False, len(rejected)
        for obj_new, p_new, f in tried:
            if obj_cur - obj_new < cfg.min_drop:
                break  # sorted: no later candidate lowers the target enough either
            kl = _clean_kl(loaded, sae, eval_b, ref_b, chosen + [f], bs) if eval_b else None
            if kl is not None and cfg.max_clean_kl is not None and kl > cfg.max_clean_kl:
                rejected.add(f)
                continue
            chosen.append(f)
            steps.append(AblationStep(f, p_new, obj_new, kl))
            say(f"+ feature {f}: P({target}) {p_cur:.4f} → {p_new:.4f}, log-odds {obj_cur:.2f} → {obj_new:.2f}"
                + (f", clean KL {kl:.4f}" if kl is not None else ""))
            p_cur, obj_cur, added = p_new, obj_new, True
            break
        if not added and (len(rejected) == n_rejected or len(rejected) >= 4 * cfg.n_try):
            break  # nothing lowers the target any more (or too much of it breaks B): done

    p_before, _ = _p_target(loaded, sae, seq_a, target_id, (), bs)
    p_after = _p_target(loaded, sae, seq_a, target_id, chosen, bs)[0] if chosen else p_before
    clean_kl = None
    if seq_b:
        clean_kl = _clean_kl(loaded, sae, seq_b, last_logits(loaded, seq_b, bs), chosen, bs) if chosen else 0.0
    return EffectResult(target=str(target), target_id=int(target_id), attribution=attr0, confirmed=tuple(chosen),
                        steps=tuple(steps), p_before=p_before, p_after=p_after, clean_kl=clean_kl)
