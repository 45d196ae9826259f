"""Logit effects of SAE features: what each decoder direction writes into the output distribution."""

from __future__ import annotations

import numpy as np

from tuiwb.features.stats import FeatureStats, with_vocab

def with_logit_effects(stats: FeatureStats, sae, loaded, n: int = 10) -> FeatureStats:
    """``stats`` plus the top promoted/suppressed output tokens of every decoder direction."""
    from dataclasses import replace

    pos_ids, pos_vals, neg_ids, neg_vals = logit_effects(sae, loaded, n)
    return with_vocab(replace(stats, logit_ids=pos_ids, logit_vals=pos_vals, neg_logit_ids=neg_ids,
                               neg_logit_vals=neg_vals), loaded.tokenizer)


def decoder_logits(sae, loaded, features=None):
    """Direct logit effect ``[n, vocab]`` of unit activation of each feature (all when None).

    The residual direction goes through the final norm's gain (and a LayerNorm's centring) and the
    unembedding; the norm's data-dependent 1/rms scale is left out — it is the same for every token,
    so the ranking of output tokens is exact for the direct path.
    """
    import torch

    w = sae.W_dec if features is None else sae.W_dec[torch.as_tensor(features, device=sae.W_dec.device)]
    norm = loaded.final_norm
    unembed = loaded.unembed
    with torch.no_grad():
        d = w.detach().float()  # [n, d_model]
        if isinstance(norm, torch.nn.LayerNorm):
            d = d - d.mean(-1, keepdim=True)
        gain = getattr(norm, "weight", None)
        if isinstance(gain, torch.Tensor) and gain.shape == d.shape[-1:]:
            # Gemma-style norms scale by (1 + weight); they say so in their class name.
            g = gain.float() + 1.0 if "gemma" in type(norm).__name__.lower() else gain.float()
            d = d * g.to(d.device)
        p = next(unembed.parameters())
        d = d.to(device=p.device, dtype=p.dtype if p.is_floating_point() else torch.float32)
        out = unembed(d).float()  # [n, vocab]
        bias = getattr(unembed, "bias", None)
        if isinstance(bias, torch.Tensor):
            out = out - bias.float()
    return out


def logit_effects(sae, loaded, n: int = 10, chunk: int | None = None):
    """``(top_ids, top_vals, bottom_ids, bottom_vals)``, each ``[d_sae, n]``, by chunks of features.

    A chunk's ``[chunk, vocab]`` logits stay ≤ 256 MB (fp32) by default: 2k features at a 32k
    vocabulary, 400 at Qwen's 152k, so 131k latents stream through in a few hundred chunks.
    """
    d_sae = int(sae.W_dec.shape[0])
    n = min(n, loaded.vocab_size)
    chunk = chunk or max(16, 2**26 // max(loaded.vocab_size, 1))
    pos_i, pos_v, neg_i, neg_v = [], [], [], []
    for s in range(0, d_sae, chunk):
        lg = decoder_logits(sae, loaded, list(range(s, min(d_sae, s + chunk))))  # [c, vocab]
        v, i = lg.topk(n, dim=-1)
        pos_i.append(i.cpu().numpy())
        pos_v.append(v.cpu().numpy())
        v, i = (-lg).topk(n, dim=-1)
        neg_i.append(i.cpu().numpy())
        neg_v.append((-v).cpu().numpy())
    return (np.concatenate(pos_i).astype(np.int64), np.concatenate(pos_v).astype(np.float32),
            np.concatenate(neg_i).astype(np.int64), np.concatenate(neg_v).astype(np.float32))
