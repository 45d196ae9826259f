"""Benchmark patches: toggle cost, and patched vs unpatched forward passes, hook vs LoRA.

    python benchmarks/bench_patch.py [--model demo|random|PATH] [--saes DIR] [--quant 4bit|8bit]
                                     [--threads 1] [--reps 30]

Prints one JSON object. Every number is measured in this run, on the same loaded model:
- ``forward_ms`` / ``forward_batch_ms``: the unpatched model on one prompt / on a [8, 128] batch
  (best of ``--reps``: load on a shared machine only adds time), the baseline of every ratio;
- ``hook_*`` / ``lora_*``: the same forward passes with one 10-feature ablation patch on, as the exact
  hook or as its fitted rank-8 LoRA; ``*_ratio`` = patched / unpatched;
- ``idle_wrappers_ratio``: unpatched forward with LoRA adapters injected but none active, against a
  second, never-patched copy of the model (what merely having LoRA patches costs);
- forward passes of all states are interleaved within each repetition (paired), so load on the
  machine affects them alike;
- ``toggle_hook_ms`` / ``toggle_lora_ms``: best wall time of one ``Session.toggle`` (on or off);
  ``toggle_ok``: both ≤ 5 ms (the target);
- ``toggle_then_logits_ms``: switching the LoRA patch on + ``Session.logits`` with the baseline
  cached (what a key press costs the TUI: one patched forward, top-k, KL), against ``forward_ms``;
- ``fit_seconds`` / ``fidelity_kl``: the LoRA fit (closed form + refinement) and its fidelity.
``--model demo`` uses the cached full demo model (4 layers × 128) and the ``tuiwb demo`` pipeline's
SAEs when they exist, else random TopK SAEs (k=16, 8×; timing depends on shapes, not trained weights).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "the old cat sleeps quietly in the park . the cerulean dog runs near the river ."


def random_sae(layer: int, d_model: int, expansion: int = 8, k: int = 16):
    import torch

    from tuiwb.sae.model import SAE, SAEConfig

    sae = SAE(SAEConfig(d_in=d_model, d_sae=expansion * d_model, architecture="topk", k=k,
                        hook_name=f"blocks.{layer}.hook_resid_post"))
    sae.reset_parameters(torch.Generator().manual_seed(layer))
    return sae.eval()


def prepare(model: str, saes_dir: str | None, workdir: Path, quant: str | None = None):
    """(loaded, sae, features, data file, description)."""
    from tuiwb.model.loading import load_model

    data = None
    if model == "random":
        sys.path.insert(0, str(ROOT / "tests"))
        from patch_fixtures import write_texts
        from tiny_models import make_tiny_checkpoint

        path = make_tiny_checkpoint(workdir / "random-llama", "llama", n_layers=4, d_model=128)
        data = write_texts(workdir / "data.txt", n=600)
        desc = "random llama (4 layers, d_model 128)"
    elif model == "demo":
        from tuiwb.demo.model import demo_model_path

        path, desc = demo_model_path("full", progress=False), "demo model (full)"
    else:
        path, desc = Path(model), model
    loaded = load_model(str(path), quant=quant)
    layer = min(2, loaded.n_layers - 1)
    sae, feats, src = None, None, "random TopK SAE"
    if saes_dir is None and model == "demo":
        res = _demo_result()
        if res is not None:
            saes_dir, layer, feats = res["saes_dir"], int(res["trigger_layer"]), list(res["trigger_features"])
    if saes_dir is not None:
        from tuiwb.sae.io import load_saes

        saes = load_saes(saes_dir)
        layer = layer if layer in saes else sorted(saes)[-1]
        sae, src = saes[layer], f"trained SAE ({saes_dir})"
    if sae is None:
        sae = random_sae(layer, loaded.d_model)
    if not feats:
        feats = _busy_features(loaded, sae, 10)
    return loaded, sae, feats[:10], data, f"{desc}; {src} at layer {layer}"


def _demo_result():
    try:
        from tuiwb.demo.pipeline import RESULT_FILE, default_work_dir

        f = default_work_dir("full") / RESULT_FILE
        return json.loads(f.read_text())["result"] if f.exists() else None
    except Exception:  # noqa: BLE001 — no pipeline result: fall back to random SAEs
        return None


def _busy_features(loaded, sae, n: int) -> list[int]:
    """The ``n`` features firing most on the prompt (a realistic, non-empty edit)."""
    import torch

    with torch.no_grad():
        h = loaded.run_to(torch.tensor([loaded.encode(PROMPT)]), sae.layer)  # [1, pos, d]
        acts = sae.encode(h[0])  # [pos, d_sae]
    return acts.sum(0).topk(n).indices.tolist()


def _pristine_copy(loaded, model: str, workdir: Path):
    """A second, never-patched instance of the same model (for the idle-wrapper overhead)."""
    from tuiwb.model.loading import load_model

    return load_model(str(loaded.model_id), quant=loaded.quant).model


def _time_ms(fn) -> float:
    t = time.perf_counter()
    fn()
    return (time.perf_counter() - t) * 1e3


def best_ms(fn, reps: int) -> float:
    """Best of ``reps`` timed calls after a warm-up (load on a shared machine only adds time)."""
    fn()
    return min(_time_ms(fn) for _ in range(reps))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="demo")
    ap.add_argument("--saes", default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--quant", choices=("8bit", "4bit"), default=None, help="load the model through bitsandbytes")
    args = ap.parse_args(argv)

    import torch

    from tuiwb.session.session import Session

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        loaded, sae, feats, data, desc = prepare(args.model, args.saes, Path(tmp), args.quant)
        desc += f"; {args.quant}" if args.quant else ""
        layer = sae.layer
        session = Session(loaded, {layer: sae}, data=data)
        one = torch.tensor([loaded.encode(PROMPT)])  # [1, pos]
        g = torch.Generator().manual_seed(0)
        batch = torch.randint(4, loaded.vocab_size, (8, 128), generator=g)  # [8, 128]

        def fwd(model, ids):
            with torch.inference_mode():
                model(input_ids=ids, use_cache=False)

        r: dict = {"bench": "patch", "model": desc, "threads": args.threads, "features": feats,
                   "prompt_tokens": one.shape[1]}
        pristine = _pristine_copy(loaded, args.model, Path(tmp))  # same weights, never patched
        session.add_patch(name="hook", layer=layer, features=feats, method="hook", enabled=False)
        session.add_patch(name="lora", layer=layer, features=feats, enabled=False)
        t = time.perf_counter()
        r["fidelity_kl"] = session.build_lora("lora")
        r["fit_seconds"] = time.perf_counter() - t

        # Paired timing: the states alternate inside each repetition, so machine load hits all alike.
        states = {"off": [], "hook": ["hook"], "lora": ["lora"]}
        for ids, tag, reps in ((one, "", args.reps), (batch, "_batch", max(5, args.reps // 5))):
            times: dict[str, list[float]] = {k: [] for k in (*states, "pristine")}
            for _ in range(reps + 1):
                for k, on in states.items():
                    session.set_enabled(on)
                    times[k].append(_time_ms(lambda: fwd(loaded.model, ids)))
                times["pristine"].append(_time_ms(lambda: fwd(pristine, ids)))
            med = {k: min(v[1:]) for k, v in times.items()}  # best of reps (load only adds); round 0 = warm-up
            r[f"forward{tag}_ms"] = med["off"]
            r[f"hook_forward{tag}_ms"] = med["hook"]
            r[f"lora_forward{tag}_ms"] = med["lora"]
            r[f"pristine_forward{tag}_ms"] = med["pristine"]
        session.set_enabled([])
        r["toggle_hook_ms"] = best_ms(lambda: session.toggle("hook"), args.reps * 4)
        session.set_enabled([])
        r["toggle_lora_ms"] = best_ms(lambda: session.toggle("lora"), args.reps * 4)
        session.set_enabled([])
        session.logits(PROMPT)  # caches the baseline

        def press_on():  # the key press that switches the LoRA patch on and re-reads the logits
            session.toggle("lora", True)
            session.logits(PROMPT)

        times = []
        for _ in range(args.reps + 1):
            session.toggle("lora", False)
            times.append(_time_ms(press_on))
        r["toggle_then_logits_ms"] = min(times[1:])
        session.set_enabled([])

    for kind in ("hook", "lora"):
        r[f"{kind}_forward_ratio"] = r[f"{kind}_forward_ms"] / r["forward_ms"]
        r[f"{kind}_forward_batch_ratio"] = r[f"{kind}_forward_batch_ms"] / r["forward_batch_ms"]
    r["idle_wrappers_ratio"] = r["forward_ms"] / r["pristine_forward_ms"]
    r["toggle_then_logits_ratio"] = r["toggle_then_logits_ms"] / r["forward_ms"]
    r["toggle_ok"] = r["toggle_hook_ms"] <= 5 and r["toggle_lora_ms"] <= 5
    print(json.dumps({k: float(f"{v:.4g}") if isinstance(v, float) else v for k, v in r.items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
