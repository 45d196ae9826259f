"""Continuations: token-by-token decoding with the KV cache, under whatever hooks are installed.

Our own loop instead of ``model.generate``: it yields each token as soon as it exists (the TUI paints
it, and stops the loop at the next token when the request is stale) and it runs every step inside a
caller-given context (``step``), which the Session uses to hold its lock and put the model in the
patch state this generation asked for, one forward at a time.

Exactness with the cache: a hook patch edits a block's output at every position the forward
computes. With the cache, step t computes position t only, and the keys/values of earlier positions
come from earlier steps, each computed under the same patch, so the result is the token-by-token
recomputation without a cache (``use_cache=False``), up to float rounding. LoRA adapters live in the
weights and need nothing. ``tests/unit/test_generate.py`` checks both against each other.
"""

from __future__ import annotations

import contextlib
import inspect
from typing import Callable, ContextManager, Iterator, Sequence

import torch

from tuiwb.model.config import GenerateConfig
from tuiwb.model.loaded import LoadedModel


def next_token(logits: torch.Tensor, cfg: GenerateConfig, rng: torch.Generator | None) -> int:
    """The next token from last-position ``logits [vocab]``: argmax, or a draw at ``cfg.temperature``."""
    if not cfg.sample:
        return int(logits.argmax())
    probs = torch.softmax(logits.float().cpu() / float(cfg.temperature), dim=-1)  # [vocab]
    return int(torch.multinomial(probs, 1, generator=rng))


def sampler(cfg: GenerateConfig) -> torch.Generator | None:
    """The random stream of one sampled generation (seeded: baseline and patched draw alike)."""
    if not cfg.sample or cfg.seed is None:
        return None
    return torch.Generator().manual_seed(int(cfg.seed))


def _cache_arg(model) -> str:
    """The forward's KV-cache keyword: ``cache`` in newer transformers 5.x, ``past_key_values`` before."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def stream_tokens(loaded: LoadedModel, ids: Sequence[int], cfg: GenerateConfig, *, use_cache: bool = True,
                  step: Callable[[], ContextManager] = contextlib.nullcontext) -> Iterator[int]:
    """Yield up to ``cfg.max_new_tokens`` new token ids after ``ids``; stops after EOS (unless
    ``cfg.ignore_eos``) or at the model's context length.

    Each forward runs inside ``step()``. Closing the generator ends the generation at once.
    """
    eos = loaded.tokenizer.eos_token_id
    limit = loaded.max_positions
    rng = sampler(cfg)
    seq = [int(t) for t in ids]
    past = None
    cache_arg = _cache_arg(loaded.model)
    for _ in range(int(cfg.max_new_tokens)):
        if limit is not None and len(seq) >= limit:
            return
        with step(), torch.inference_mode():
            if use_cache:
                new = seq if past is None else seq[-1:]  # the whole prompt once, then one token per step
                out = loaded.model(input_ids=torch.tensor([new], device=loaded.device), use_cache=True,
                                   **{cache_arg: past})
                # read the deprecated key only when the new one is absent (reading it warns)
                past = out["cache"] if "cache" in out else out.get("past_key_values")
            else:
                out = loaded.model(input_ids=torch.tensor([seq], device=loaded.device), use_cache=False)
            logits = out.logits[0, -1]  # [vocab]
            tid = next_token(logits, cfg, rng)
        seq.append(tid)
        yield tid
        if tid == eos and not cfg.ignore_eos:
            return
