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
  greedily, the few best-attributed candidates (and the few best by attribution from positions
  *before* the prediction: the cause, e.g. the trigger token) are each measured for real, on top of
  the set so far — ablated, halved, and ablated only after a trigger detector fired (a gated edit,
  see :func:`trigger_detectors`) — and the edit with the largest target drop per unit of clean KL it
  adds on B is kept (a trigger-side candidate's score counts double); the attribution is recomputed
  with the set applied (a spread-out signal has backups that only show once the first features are
  gone). It stops when P(target) reaches ``target_p``, when no edit fits the ``max_clean_kl`` budget
  or lowers the target by ``min_drop``, or at ``max_features``. Every set measured goes into the
  Pareto front of P(target) against clean KL. docs/patches.md ("The trigger hunt on subword models")
  has the figures: the greedy by target drop alone took generic sentence-end features and cost 4×
  the budget in clean KL on a BPE GPT-2.

  "Lowers the target" is measured in mean log-odds of the target, clamped below at ``p_floor``: on
  the demo trojan P(payload) is 0.99 and no single feature moves it (0.99 → 0.98, the signal is
  redundant) although it moves the log-odds by ~1 nat; measured in P the search stopped at once,
  in log-odds it found the 5 features that take P to 0.009. The clamp stops prompts that are already
  fixed from steering the search.
"""

from __future__ import annotations

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
TRIGGER_SIDE, PREDICTION_SIDE = "trigger-side", "prediction-side"


@dataclass(frozen=True)
class AblationStep:
    """One greedy addition: a feature and how it is edited."""

    feature: int
    """The feature added."""
    p_target: float
    """Mean P(target) on the A prompts (eval subset) with the set so far edited."""
    objective: float
    """Mean clamped log-odds of the target on those prompts (what the greedy lowers)."""
    clean_kl: float | None
    """Mean KL(original ‖ edited) on the B prompts (eval subset), None without B."""
    alpha: float = 0.0
    """The factor the feature is scaled by: 0 ablates it, 0.5 halves it (a partial edit)."""
    gated: bool = False
    """True when the edit acts only after a trigger detector (``EffectResult.gate``) fired."""
    side: str = PREDICTION_SIDE
    """``"trigger-side"``: most of its effect comes from positions before the prediction (it fires on
    the trigger); ``"prediction-side"``: from the position where the target is predicted."""


@dataclass(frozen=True)
class ParetoPoint:
    """One edit set the search measured, on the front of P(target) against clean KL."""

    p_target: float
    """Mean P(target) on the A prompts (eval subset)."""
    clean_kl: float
    """Mean KL on the B prompts (eval subset); 0.0 without B."""
    edits: tuple[tuple[int, float, bool], ...]
    """``(feature, alpha, gated)`` of every edit in the set."""

    def to_json(self) -> dict:
        return {"p_target": self.p_target, "clean_kl": self.clean_kl,
                "edits": [{"feature": f, "alpha": a, "gated": g} for f, a, g in self.edits]}


def pareto_front(points) -> tuple[ParetoPoint, ...]:
    """The points no other point beats on both P(target) and clean KL, lowest KL first."""
    front: list[ParetoPoint] = []
    for pt in sorted(points, key=lambda q: (q.clean_kl, q.p_target)):
        if not front or pt.p_target < front[-1].p_target:
            front.append(pt)
    return tuple(front)


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
    """One per confirmed feature (how it is edited, its side)."""
    p_before: float
    """Mean P(target) on all A prompts, unpatched."""
    p_after: float
    """Mean P(target) on all A prompts with the confirmed set edited as found."""
    clean_kl: float | None
    """Mean KL on all B prompts with the confirmed set edited (None without B)."""
    gate: tuple[int, ...] = ()
    """Trigger detectors the gated edits wait for (fire on A, not on B); empty when none is gated."""
    gate_min: tuple[float, ...] = ()
    """The activation each gate feature must exceed."""
    pareto: tuple[ParetoPoint, ...] = ()
    """The Pareto front of P(target) against clean KL over every set the search measured."""
    stopped: str = ""
    """Why the search stopped: ``target reached``, ``clean-KL budget``, ``no candidate``, ``max features``."""

    @property
    def hits(self) -> Hits:
        """The confirmed set (in order), then every other feature by attribution; score = attribution."""
        rest = _ranked(np.setdiff1d(np.arange(len(self.attribution)), np.array(self.confirmed, dtype=np.int64)),
                       np.delete(self.attribution, list(self.confirmed)) if self.confirmed else self.attribution)
        ids = np.concatenate([np.array(self.confirmed, dtype=np.int64), rest.ids])
        return Hits(ids, self.attribution[ids].astype(np.float64))

    @property
    def sides(self) -> dict[int, str]:
        """Confirmed feature → ``"trigger-side"`` or ``"prediction-side"``."""
        return {s.feature: s.side for s in self.steps}

    def edits(self, sae):
        """The confirmed set as ``FeatureEdit``s (one per alpha and gating), ready for ``edits_applied``."""
        return _edits(sae, [(s.feature, s.alpha, s.gated) for s in self.steps], (self.gate, self.gate_min))

    def to_json(self) -> dict:
        """What ``tuiwb features --target --json`` reports next to the feature rows."""
        return {"target": self.target, "target_id": self.target_id, "confirmed": list(self.confirmed),
                "p_target_before": self.p_before, "p_target_after": self.p_after, "clean_kl": self.clean_kl,
                "edits": [{"feature": s.feature, "alpha": s.alpha, "gated": s.gated, "side": s.side,
                           "p_target": s.p_target, "clean_kl": s.clean_kl} for s in self.steps],
                "gate": list(self.gate), "gate_min": list(self.gate_min), "pareto": [p.to_json() for p in self.pareto], "stopped": self.stopped}


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
                batch_size: int = 32, floor: float | None = None, edits=(), split: bool = False):
    """``[d_sae]`` Σ_prompts Σ_positions a_f · (d_f · ∂J/∂h) / n_prompts, with ``ablated`` removed.

    ``J`` is :func:`target_objective` at each prompt's last position. The layer output is replaced by
    a leaf equal to it (minus the ablated features' contributions, exactly the gated edit; plus the
    deltas of ``edits``, ``FeatureEdit``s such as partial or gated ones), so ``∂J/∂h`` is taken without
    touching parameter grads. With ``split`` it returns ``(total, final)``: ``final`` is the part
    from each prompt's last position (where the target is predicted), ``total − final`` the part from
    earlier positions (e.g. the trigger token).
    """
    from tuiwb.patch.edit import layer_delta

    W = sae.W_dec.detach()  # [d_sae, d_in]
    abl = torch.tensor(sorted(set(int(f) for f in ablated)), dtype=torch.long, device=W.device)
    edits = tuple(edits)
    total = torch.zeros(W.shape[0], dtype=torch.float64, device=W.device)
    final = torch.zeros_like(total)
    state: dict = {}

    def splice(module, args, output):
        h = hidden(output)  # [b, w, d_in]
        with torch.no_grad():
            acts = sae.encode(h.to(W.device)).float()  # [b, w, d_sae]
            if edits:
                h = h + layer_delta(edits, h).to(device=h.device, dtype=h.dtype)
                for e in edits:  # what is left of an edited feature (a gated one: an estimate)
                    if not e.gate:
                        acts[..., list(e.features)] *= e.alpha
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
                contrib = state["acts"] * g_feat * m  # [b, w, d_sae]
                total += contrib.sum((0, 1)).double()
                final += contrib[torch.arange(len(last)), last.to(W.device)].sum(0).double()
    total, final = (total / len(seqs)).cpu().numpy(), (final / len(seqs)).cpu().numpy()
    return (total, final) if split else total


# ---- the greedy search over edits ------------------------------------------------------------------------
def _edits(sae, items, gate):
    """``(feature, alpha, gated)`` items → one ``FeatureEdit`` per (alpha, gated) group."""
    from tuiwb.patch.edit import make_edit

    groups: dict[tuple[float, bool], list[int]] = {}
    for f, alpha, gated in items:
        groups.setdefault((float(alpha), bool(gated)), []).append(int(f))
    gate, gate_min = gate or ((), ())
    return [make_edit(sae, fs, alpha, gate if gated else (), gate_min if gated else ())
            for (alpha, gated), fs in groups.items()]


class _Bench:
    """Measures an edit set on the eval prompts: (mean P(target) on A, clamped log-odds, mean KL on B)."""

    def __init__(self, loaded, sae, seq_a, seq_b, target_id: int, floor: float, batch_size: int):
        self.loaded, self.sae, self.seq_a, self.seq_b = loaded, sae, seq_a, seq_b
        self.target_id, self.floor, self.bs = target_id, floor, batch_size
        self.ref_b = last_logits(loaded, seq_b, batch_size) if seq_b else None  # [n_b, V]
        self.seen: list[ParetoPoint] = []

    def __call__(self, items, gate=(), seq_a=None, seq_b=None, ref_b=None, record: bool = True):
        from tuiwb.patch.edit import edits_applied

        seq_a = seq_a or self.seq_a
        seq_b, ref_b = (seq_b, ref_b) if seq_b is not None else (self.seq_b, self.ref_b)
        with edits_applied(self.loaded, _edits(self.sae, items, gate)):
            logits = last_logits(self.loaded, seq_a, self.bs)  # [n_a, V]
            kl = kl_divergence(ref_b, last_logits(self.loaded, seq_b, self.bs)) if seq_b and items else (
                0.0 if seq_b else None)
        p = float(target_objective(logits, self.target_id, "prob").mean())
        obj = float(target_objective(logits, self.target_id, "logodds", self.floor).mean())
        if record and items:
            self.seen.append(ParetoPoint(p, kl or 0.0, tuple((int(f), float(a), bool(g)) for f, a, g in items)))
        return p, obj, kl


def trigger_detectors(loaded, sae, seq_a, seq_b, batch_size: int, max_rate_b: float = 0.1, n: int = 4
                      ) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """``(gate features, their thresholds)``: features whose peak activation in a prompt exceeds a
    threshold on most A prompts and almost no B prompt — the gate of gated edits.

    A small SAE rarely has a feature that fires on the trigger alone (measured on the BPE GPT-2 trojan
    at layer 1: the best fired on every A prompt and 21% of B), but its *strong* firings are specific;
    each feature's threshold is the 95th percentile of its peaks on B. Features are added while they
    widen the A prompts covered and the B prompts gated stay within ``max_rate_b``.
    """
    if not seq_b:
        return (), ()
    peak_a = prompt_acts(loaded, sae, seq_a, "max", batch_size)  # [n_a, d_sae]
    peak_b = prompt_acts(loaded, sae, seq_b, "max", batch_size)  # [n_b, d_sae]
    low = torch.quantile(peak_b, 0.95, dim=0)  # [d_sae]
    on_a, on_b = peak_a > low, peak_b > low  # [n, d_sae]
    gate: list[int] = []
    cov_a = torch.zeros(len(seq_a), dtype=torch.bool)
    cov_b = torch.zeros(len(seq_b), dtype=torch.bool)
    for f in torch.argsort(on_a.float().mean(0), descending=True)[: 8 * n].tolist():
        new_a, new_b = cov_a | on_a[:, f], cov_b | on_b[:, f]
        if new_a.float().mean() - cov_a.float().mean() < 0.05 or new_b.float().mean() > max_rate_b:
            continue
        gate.append(int(f))
        cov_a, cov_b = new_a, new_b
        if len(gate) >= n or bool(cov_a.all()):
            break
    if cov_a.float().mean() < 0.5:  # a gate that misses most trigger prompts is no trigger detector
        return (), ()
    return tuple(gate), tuple(float(low[f]) for f in gate)


def _options(f: int, gate, partial: bool):
    """The edits tried for candidate ``f``: ablate; halve (a generic feature only as far as needed);
    ablate only after a trigger detector fired."""
    out = [(f, 0.0, False)]
    if partial:
        out.append((f, 0.5, False))
    if gate[0] and f not in gate[0]:
        out.append((f, 0.0, True))
    return out


def find_feature_set(loaded, sae, prompts_a: list[str], target: str, prompts_b: list[str] | None = None,
                     cfg: EffectConfig | None = None, progress: bool = False) -> EffectResult:
    """Rank features by their causal effect on ``target`` on the A prompts and confirm a set.

    See the module docstring for the method. ``prompts_b`` (e.g. clean prompts) is optional; with it
    the search trades the target's drop against the KL it costs on B and stays within
    ``cfg.max_clean_kl``.
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
    bench = _Bench(loaded, sae, eval_a, eval_b, target_id, floor, bs)
    budget = cfg.max_clean_kl if eval_b else None
    gate = trigger_detectors(loaded, sae, eval_a, eval_b, bs) if eval_b and cfg.gated else ((), ())
    # A clean-KL floor for the ratio (a tenth of the budget): below it every edit counts as free, so
    # a feature that moves the target a lot for nearly nothing beats one that moves it a hair for nothing.
    kl_eps = (budget or 0.01) * 0.1

    attr0 = attribution(loaded, sae, seq_a, target_id, (), "logprob", bs)
    p_cur, obj_cur, kl_cur = bench([])
    say(f"P({target}) on A = {p_cur:.4f} before the edit" + (f"; gate: features {list(gate[0])}" if gate[0] else ""))
    items: list[tuple[int, float, bool]] = []
    steps: list[AblationStep] = []
    kl_cur = kl_cur or 0.0
    stopped = "max features"
    while len(items) < cfg.max_features:
        if p_cur <= cfg.target_p:
            stopped = "target reached"
            break
        total, final = attribution(loaded, sae, eval_a, target_id, (), "logodds", bs, floor,
                                   edits=_edits(sae, items, gate), split=True)
        early = total - final
        done = {f for f, _, _ in items}
        by_total = [int(f) for f in np.argsort(-total, kind="stable") if total[f] > 0 and int(f) not in done]
        by_early = [int(f) for f in np.argsort(-early, kind="stable") if early[f] > 0 and int(f) not in done]
        cands = list(dict.fromkeys(by_total[: cfg.n_try] + by_early[: cfg.n_try]))  # the cause gets a look too
        if not cands:
            stopped = "no candidate"
            break
        best = None
        over_budget = False
        for f in cands:
            side = TRIGGER_SIDE if early[f] > final[f] else PREDICTION_SIDE
            for opt in _options(f, gate, cfg.partial):
                p_new, obj_new, kl_new = bench(items + [opt], gate)
                drop = obj_cur - obj_new
                if drop < cfg.min_drop:
                    continue
                if budget is not None and kl_new > budget:
                    over_budget = True
                    continue
                cost = max((kl_new or 0.0) - kl_cur, 0.0) + kl_eps
                # the cause before the symptom: a trigger-side feature's drop counts double
                score = drop / cost * (2.0 if side == TRIGGER_SIDE else 1.0)
                if best is None or score > best[0]:
                    best = (score, opt, side, p_new, obj_new, kl_new)
        if best is None:
            stopped = "clean-KL budget" if over_budget else "no candidate"
            break
        _, opt, side, p_new, obj_new, kl_new = best
        items.append(opt)
        steps.append(AblationStep(opt[0], p_new, obj_new, kl_new, alpha=opt[1], gated=opt[2], side=side))
        how = ("ablated" if opt[1] == 0 else f"scaled ×{opt[1]:g}") + (" after the trigger" if opt[2] else "")
        say(f"+ feature {opt[0]} ({side}, {how}): P({target}) {p_cur:.4f} → {p_new:.4f}, "
            f"log-odds {obj_cur:.2f} → {obj_new:.2f}" + (f", clean KL {kl_new:.4f}" if kl_new is not None else ""))
        p_cur, obj_cur, kl_cur = p_new, obj_new, kl_new or 0.0

    used_gate = gate if any(g for _, _, g in items) else ((), ())
    p_before = bench([], seq_a=seq_a, record=False)[0]
    p_after, clean_kl = p_before, (0.0 if seq_b else None)
    if items:
        ref = last_logits(loaded, seq_b, bs) if seq_b else None
        p_after, _, clean_kl = bench(items, gate, seq_a=seq_a, seq_b=seq_b, ref_b=ref, record=False)
    return EffectResult(target=str(target), target_id=int(target_id), attribution=attr0,
                        confirmed=tuple(f for f, _, _ in items), steps=tuple(steps), p_before=p_before,
                        p_after=p_after, clean_kl=clean_kl, gate=used_gate[0], gate_min=used_gate[1], pareto=pareto_front(bench.seen),
                        stopped=stopped)
