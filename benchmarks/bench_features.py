"""Benchmark feature stats: the streaming pass against bare encoding, and row building for the TUI.

    python benchmarks/bench_features.py [--tokens 65536] [--d-model 256] [--d-sae 16384] [--k 32] [--threads 1]

Prints one JSON object. Every number is measured in this run on a synthetic in-memory store (random
activations; timing depends on shapes, not on values):
- ``encode_s``: reading every row in chunks and ``sae.encode`` — the baseline no stats pass can beat;
- ``stats_s``: ``compute_feature_stats`` over the same rows; ``stats_ratio`` = stats_s / encode_s
  (the overhead of density, running top-k, token sums; target ≤ 3);
- ``page_ms``: the first 50 rows of a listing sorted by density (what the TUI shows per keypress,
  target ≤ 50 ms for 16k features), ``search_ms``: a token search, ``density_filter_ms``: a range filter.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


class SyntheticStore:
    """The slice of the ``ActivationStore`` API the stats pass uses, over in-memory random rows."""

    def __init__(self, n: int, d_model: int, vocab: int, seq_len: int = 128, seed: int = 0):
        import torch

        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, d_model, generator=g)  # [n, d_model]
        self.tok = np.random.default_rng(seed).integers(4, vocab, n)
        self.layers, self.d_model, self.seq_len, self.n_rows = [0], d_model, seq_len, n
        self.manifest, self.model_id = {"synthetic": n}, None

    def row_indices(self, split="all", val_fraction=0.1, exclude_special=True):
        return np.arange(self.n_rows, dtype=np.int64)

    def read_rows(self, layer, rows):
        import torch

        return self.x[torch.as_tensor(np.asarray(rows))]

    def token_ids(self, rows=None):
        return self.tok if rows is None else self.tok[np.asarray(rows)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=65536)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--d-sae", type=int, default=16384)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()

    import torch

    from tuiwb.features.search import filter_density, search_by_token
    from tuiwb.features.stats import StatsConfig
    from tuiwb.features.compute import compute_feature_stats
    from tuiwb.sae.model import SAE, SAEConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    store = SyntheticStore(args.tokens, args.d_model, args.vocab)
    sae = SAE(SAEConfig(d_in=args.d_model, d_sae=args.d_sae, architecture="topk", k=args.k, layer=0,
                        hook_name="blocks.0.hook_resid_post")).eval()
    cfg = StatsConfig()
    rows = store.row_indices()
    step = min(cfg.batch_size, max(256, 2**25 // args.d_sae))  # what compute_feature_stats uses

    t = time.perf_counter()
    with torch.no_grad():
        for s in range(0, len(rows), step):
            sae.encode(store.read_rows(0, rows[s: s + step]))
    encode_s = time.perf_counter() - t

    t = time.perf_counter()
    stats = compute_feature_stats(sae, store, progress=False, cfg=cfg)
    stats_s = time.perf_counter() - t

    def best_ms(fn, reps=5):
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1000)
        return min(times)

    page_ms = best_ms(lambda: stats.listing("density", top=50))
    search_ms = best_ms(lambda: search_by_token(stats, "#100"))
    density_ms = best_ms(lambda: filter_density(stats, 1e-4, 1e-2).rows(stats, 50))
    print(json.dumps({
        "tokens": args.tokens, "d_model": args.d_model, "d_sae": args.d_sae, "k": args.k,
        "threads": torch.get_num_threads(), "encode_s": round(encode_s, 3), "stats_s": round(stats_s, 3),
        "stats_ratio": round(stats_s / encode_s, 2), "stats_ok": stats_s / encode_s <= 3,
        "tokens_per_s": round(args.tokens / stats_s), "page_ms": round(page_ms, 2), "page_ok": page_ms <= 50,
        "search_ms": round(search_ms, 2), "density_filter_ms": round(density_ms, 2),
    }))


if __name__ == "__main__":
    main()
