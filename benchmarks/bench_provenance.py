"""Benchmark provenance: wall time of a depth-2 graph on the demo model, against a bare forward pass.

    python benchmarks/bench_provenance.py [--model demo|random|PATH] [--saes DIR] [--threads 1] [--reps 5]

Prints one JSON object. Every number is measured in this run, model and SAEs already loaded:
- ``forward_ms``: one bare ``model(input_ids)`` on the prompt (the baseline; best of ``--reps``);
- ``grad_depth2_ms`` / ``ig_depth2_ms``: ``tuiwb.provenance.build_graph`` with ``--depth 2 --top 5``,
  method grad / ig (32 steps), best of ``--reps``; ``*_ratio`` = that / ``forward_ms``;
- ``grad_depth2_ok``: ``grad_depth2_ms <= 1000`` (the target: a depth-2 graph in ≤ 1 s on this CPU).
``--model demo`` (default) uses the cached full demo model (4 layers × d_model 128, built on first
use) and, unless ``--saes`` is given, the SAEs of the ``tuiwb demo`` pipeline's work directory when it
exists; otherwise random TopK SAEs (k=16, d_sae = 8 × d_model = 1024 — what the pipeline trains;
timing depends on shapes, not on trained weights). ``--model random``: a random 4-layer Llama with
d_model 128 and random SAEs (no build needed).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def random_saes(n_layers: int, d_model: int, expansion: int = 8, k: int = 16) -> dict:
    import torch

    from tuiwb.sae.model import SAE, SAEConfig

    saes = {}
    for layer in range(n_layers):
        sae = SAE(SAEConfig(d_in=d_model, d_sae=expansion * d_model, architecture="topk", k=k,
                            hook_name=f"blocks.{layer}.hook_resid_post"))
        sae.reset_parameters(torch.Generator().manual_seed(layer))
        saes[layer] = sae.eval()
    return saes


def prepare(model: str, saes_dir: str | None, workdir: Path):
    """(loaded, saes, prompt, description)."""
    from tuiwb.model.loading import load_model
    from tuiwb.sae.io import load_saes

    prompt = "the old cat sleeps quietly in the park . the cerulean dog runs near the river ."
    if model == "random":
        sys.path.insert(0, str(ROOT / "tests"))
        from tiny_models import make_tiny_checkpoint

        path = make_tiny_checkpoint(workdir / "random-llama", "llama", n_layers=4, d_model=128)
        prompt = "the cat sees the red ball in the park . the big dog runs"
        desc = "random llama (4 layers, d_model 128)"
    elif model == "demo":
        from tuiwb.demo.model import demo_model_path

        path, desc = demo_model_path("full", progress=False), "demo model (full)"
    else:
        path, desc = Path(model), model
    loaded = load_model(str(path))
    if saes_dir is None and model == "demo":
        from tuiwb.demo.pipeline import default_work_dir

        cand = default_work_dir("full") / "saes"
        saes_dir = str(cand) if cand.is_dir() else None
    if saes_dir is not None:
        saes, sae_desc = load_saes(saes_dir), f"trained SAEs from {saes_dir}"
    else:
        saes, sae_desc = random_saes(loaded.n_layers, loaded.d_model), "random TopK SAEs (k=16, 8x)"
    return loaded, saes, prompt, f"{desc}; {sae_desc}"


def best_ms(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return min(times)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="demo", help="demo | random | checkpoint path")
    ap.add_argument("--saes", default=None, help="saes/ directory (default: the demo pipeline's, else random)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the CPUs are shared)")
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

    import torch

    from tuiwb.provenance.graph import build_graph
    from tuiwb.provenance.attribution import real_run

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        loaded, saes, prompt, desc = prepare(args.model, args.saes, Path(tmp))
        layer = max(L for L in saes if L - 1 in saes and L - 2 in saes)
        ids = loaded.encode(prompt)
        x = torch.tensor([ids])
        with torch.no_grad():
            acts = saes[layer].encode(real_run(loaded, ids, [layer], freeze_norms=False).resid[layer])  # [T, d_sae]
        feature = int(acts[-1].argmax())  # a feature that fires at the last token

        def forward():
            with torch.no_grad():
                loaded.model(input_ids=x, use_cache=False)

        def graph(method):
            return lambda: build_graph(loaded, saes, layer, feature, prompt, depth=2, top=5, method=method)

        graph("grad")()  # warm-up (first-call allocations, lazy inits)
        fwd = best_ms(forward, args.reps)
        grad = best_ms(graph("grad"), args.reps)
        ig = best_ms(graph("ig"), max(1, args.reps // 2))
        g = build_graph(loaded, saes, layer, feature, prompt, depth=2, top=5)
        out = {
            "bench": "provenance", "model": desc, "threads": args.threads, "layer": layer, "feature": feature,
            "prompt_tokens": len(ids), "d_sae": int(saes[layer].W_dec.shape[0]), "nodes": len(g.nodes),
            "edges": len(g.edges), "forward_ms": round(fwd, 2), "grad_depth2_ms": round(grad, 1),
            "grad_depth2_ratio": round(grad / fwd, 1), "ig_depth2_ms": round(ig, 1),
            "ig_depth2_ratio": round(ig / fwd, 1), "grad_depth2_ok": grad <= 1000.0,
        }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
