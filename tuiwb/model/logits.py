"""Next-token distributions: the numbers behind the logit pane and ``tuiwb logits``."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from tuiwb.model.batching import right_padded
from tuiwb.model.loaded import LoadedModel


@dataclass(frozen=True)
class TokenProb:
    """One row of a next-token distribution."""

    token: str
    """Decoded token text."""
    id: int
    """Token id."""
    prob: float
    """Softmax probability at the last position."""
    logit: float
    """Raw logit at the last position."""

    def to_json(self) -> dict:
        return asdict(self)

@dataclass(frozen=True)
class LogitsResult:
    """Next-token distribution of a prompt, unpatched and with the enabled patches."""

    prompt: str
    """The prompt text."""
    baseline: list[TokenProb]
    """Top tokens with every patch off."""
    patched: list[TokenProb]
    """Top tokens with the enabled patches (equal to ``baseline`` when none is on)."""
    kl: float
    """KL(baseline ‖ patched) in nats over the whole vocabulary."""
    latency_ms: float
    """Wall time of the call (a cached baseline makes it one forward pass)."""
    active: tuple[str, ...] = ()
    """Names of the patches that were on."""

    def to_json(self) -> dict:
        return {"prompt": self.prompt, "top": [t.to_json() for t in self.patched],
                "baseline": [t.to_json() for t in self.baseline], "kl": self.kl,
                "latency_ms": self.latency_ms, "active": list(self.active)}


@torch.inference_mode()
def next_token_logits(loaded: LoadedModel, ids: list[int]) -> torch.Tensor:
    """Logits at the last position of ``ids``: ``[vocab]`` float32 on CPU, under the installed hooks."""
    input_ids = torch.tensor([ids], device=loaded.device)  # [1, pos]
    out = loaded.model(input_ids=input_ids, use_cache=False)
    return out.logits[0, -1].float().cpu()  # [vocab]


def last_logits(loaded: LoadedModel, seqs: list[list[int]], batch_size: int = 32) -> torch.Tensor:
    """``[n, vocab]`` logits at each sequence's last position (float32, CPU), under the installed hooks."""
    out = []
    with torch.no_grad():
        for b in right_padded(seqs, batch_size, loaded.pad_id, loaded.device):
            logits = loaded.model(input_ids=b.ids, attention_mask=b.mask.long(), use_cache=False).logits  # [B, T, V]
            out.append(logits[torch.arange(len(b.last)), b.last].float().cpu())  # [B, V]
    return torch.cat(out)


def top_k(loaded: LoadedModel, logits: torch.Tensor, k: int = 10) -> list[TokenProb]:
    """The ``k`` most likely next tokens, most likely first."""
    probs = torch.softmax(logits.float(), dim=-1)  # [vocab]
    k = min(k, probs.numel())
    values, idx = probs.topk(k)
    return [TokenProb(token=loaded.token_str(i), id=int(i), prob=float(p), logit=float(logits[i]))
            for p, i in zip(values.tolist(), idx.tolist())]


def kl_divergence(p_logits: torch.Tensor, q_logits: torch.Tensor) -> float:
    """KL(p ‖ q) in nats between two next-token distributions given as logits ``[..., vocab]``."""
    logp = torch.log_softmax(p_logits.float(), dim=-1)
    logq = torch.log_softmax(q_logits.float(), dim=-1)
    return float((logp.exp() * (logp - logq)).sum(-1).mean())
