"""Every tuiwb stage at a real 7B width: a random-weight model of the real shape, cut to N layers.

    .venv/bin/python benchmarks/bench_scale.py --shape mistral-7b|llama-3-8b|qwen2.5-7b --layers N
        [--quant 4bit] [--device D] [--work DIR] [--model DIR] [--json OUT] [--tiny]

It builds (no download) a random model with the shape's hidden size, MLP width, heads / KV heads
and vocabulary at ``--layers`` blocks, and a byte-level BPE tokenizer of the real vocabulary size
trained on local text (the Python standard library's sources, padded with filler tokens when the
text runs out of merges). ``--model DIR`` reuses a saved model instead (``gpu_check.sh`` builds the
full-depth one once). Then it runs each stage in its own process — through the CLI, or through the
Session for the in-process stages — and records wall time and the process's peak RSS, plus the peak
CUDA memory on a GPU:

- ``trace`` (CLI), and ``trace vs bare`` (library, one loaded model): tok/s of the trace against a bare
  forward of the same windows up to the same layer (the recording overhead, as a ratio);
- ``train`` from disk (CLI; the live route ``train --model`` when this tuiwb has it, else a note);
- ``active feature``: the SAE features most active on the prompt (what the next stages edit and explain);
- ``eval`` and ``features`` (CLI, with the model: logit effects must be present);
- ``logits`` with a hook patch, ``patch build`` (rank 8), ``logits`` with that LoRA (CLI);
- ``provenance`` at depth 2 (CLI);
- ``session`` (Session: open, hook toggle + logits) and ``ui`` (the real TUI via Pilot: key → logit pane
  repainted, p50/p95 over ``--toggles`` presses).

Prints a markdown table and one JSON object (also written to ``--json``). ``--tiny`` swaps in a small
shape with the same code paths (a smoke test; tests/unit/test_bench_scale.py runs it).
Targets on one GPU (issue 15): key → logits p95 ≤ 150 ms; trace ≥ 0.9× bare; LoRA fit ≤ 60 s; peak VRAM ≤ 20 GB.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

SHAPES = {
    "mistral-7b": dict(model_type="mistral", hidden_size=4096, intermediate_size=14336, num_attention_heads=32,
                       num_key_value_heads=8, vocab_size=32000, rope_theta=1e6, full_layers=32),
    "llama-3-8b": dict(model_type="llama", hidden_size=4096, intermediate_size=14336, num_attention_heads=32,
                       num_key_value_heads=8, vocab_size=128256, rope_theta=5e5, full_layers=32),
    "qwen2.5-7b": dict(model_type="qwen2", hidden_size=3584, intermediate_size=18944, num_attention_heads=28,
                       num_key_value_heads=4, vocab_size=152064, rope_theta=1e6, full_layers=28),
    # Not a real model: the same code paths at a size a unit test can afford.
    "tiny": dict(model_type="mistral", hidden_size=64, intermediate_size=160, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=1200, rope_theta=1e4, full_layers=2),
}

TARGETS = {"ui_p95_ms": 150.0, "trace_over_bare": 0.9, "patch_build_s": 60.0, "peak_cuda_gb": 20.0}
"""Issue 15's targets on one GPU (``gpu_check.sh`` prints them as pass/fail)."""

HERE = Path(__file__).resolve().parent
PROMPT = "def read_config(path):\n    with open(path) as f:\n        return json.load(f)\n"


# ----------------------------------------------------------------------------------- the model

def local_text(max_bytes: int) -> list[str]:
    """Documents of local text: the standard library's sources, ~40 lines per document, one per line."""
    root = Path(sysconfig.get_paths()["stdlib"])
    docs, total, buf = [], 0, []
    for f in sorted(root.glob("*.py")) + sorted(root.glob("*/*.py")):
        try:
            lines = f.read_text(encoding="utf-8", errors="ignore").splitlines()
        except OSError:
            continue
        for line in lines:
            if line.strip():
                buf.append(line.strip())
            if len(buf) >= 40:
                doc = " ".join(buf)
                docs.append(doc)
                total += len(doc)
                buf = []
                if total >= max_bytes:
                    return docs
    return docs


def build_tokenizer(vocab_size: int, out: Path, docs: list[str]) -> None:
    """A byte-level BPE of exactly ``vocab_size`` tokens (filler tokens when the text gives fewer merges)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(docs, trainer=trainer)
    missing = vocab_size - tok.get_vocab_size()
    if missing > 0:
        tok.add_tokens([f"<filler_{i}>" for i in range(missing)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="</s>")
    assert len(fast) == vocab_size, (len(fast), vocab_size)
    fast.save_pretrained(out)


def build_model(shape: str, layers: int, out: Path, dtype: str = "float32", seed: int = 0,
                device: str = "cpu") -> Path:
    """Random weights of ``shape`` at ``layers`` blocks, saved (safetensors) with its tokenizer; cached."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    spec = dict(SHAPES[shape])
    spec.pop("full_layers")
    stamp = out / "bench_scale.json"
    want = {"shape": shape, "layers": layers, "dtype": dtype, "seed": seed}
    if stamp.is_file() and json.loads(stamp.read_text()) == want:
        return out
    out.mkdir(parents=True, exist_ok=True)
    docs = local_text(8_000_000 if spec["vocab_size"] > 5000 else 400_000)
    build_tokenizer(spec["vocab_size"], out, docs)
    model_type = spec.pop("model_type")
    config = AutoConfig.for_model(model_type, num_hidden_layers=layers, max_position_embeddings=4096,
                                  bos_token_id=1, eos_token_id=2, pad_token_id=2, tie_word_embeddings=False,
                                  **spec)
    torch.manual_seed(seed)
    with torch.device(device):  # a GPU initialises a full-depth 7B's random weights in seconds
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    model.save_pretrained(out, safe_serialization=True)
    del model
    (out / "train.txt").write_text("\n".join(docs[: len(docs) // 2]) + "\n")
    (out / "heldout.txt").write_text("\n".join(docs[len(docs) // 2: len(docs) // 2 + 200]) + "\n")
    stamp.write_text(json.dumps(want))
    return out


# ----------------------------------------------------------------------------------- stages

def run_stage(name: str, argv: list[str], log: Path) -> dict:
    """One stage in its own process (``_stage.py``): its time, peak RSS and (on a GPU) peak CUDA memory."""
    report = log.parent / f"{name.replace(' ', '_')}.json"
    report.unlink(missing_ok=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")]))
    t0 = time.perf_counter()
    with open(log, "a") as f:
        f.write(f"\n$ {name}: {' '.join(argv)}\n")
        f.flush()
        proc = subprocess.Popen([sys.executable, str(HERE / "_stage.py"), str(report), *argv], stdout=f,
                                stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    rc = os.waitstatus_to_exitcode(status)
    extra = json.loads(report.read_text()) if report.is_file() else {}
    return {"stage": name, "rc": rc, "seconds": round(seconds, 2),
            "peak_rss_gb": round(usage.ru_maxrss / 2**20, 2),  # ru_maxrss is in KiB on Linux
            **extra}


def _has_live_train() -> bool:
    out = subprocess.run([sys.executable, "-m", "tuiwb", "train", "--help"], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(HERE.parent)))
    return "--model" in out.stdout


def plan(args, model: Path, work: Path) -> list[tuple[str, list[str]]]:
    """The stages, in order, as (name, argv for ``_stage.py``)."""
    m = ["--model", str(model), "--device", args.device] + (["--quant", args.quant] if args.quant else [])
    gpu = args.device.startswith("cuda") or args.device == "auto" and _cuda()
    data = str(model / "train.txt")
    acts, saes, lora = work / "acts.parquet", work / "saes", work / "lora" / "x"
    # Up to three adjacent layers in the middle (0 and 1 at two layers): traced, SAEs trained, and the
    # provenance BFS walks down them (depth 2 needs three).
    top = max(args.layers // 2, 1) if args.layers > 1 else 0
    sae_layers = sorted({max(top - 2, 0), max(top - 1, 0), top})
    layers = [a for L in sae_layers for a in ("--layer", str(L))]
    trace_tokens = args.trace_tokens or (32768 if gpu else 8192)
    train_tokens = args.train_tokens or (trace_tokens // 2)
    fit = [] if gpu else ["--fit-tokens", "1024", "--refine-tokens", "256", "--refine-steps", "4",
                          "--batch-size", "4"]
    train = ["tuiwb", "train", "--acts", str(acts), *layers, "--out", str(saes), "--expansion",
             str(args.expansion), "--k", "32", "--tokens", str(train_tokens), "--batch-size", "1024",
             "--overwrite", "--no-progress", "--lr", "2e-4", "--log", "none"]
    stages = [
        ("trace", ["tuiwb", "trace", *m, "--data", data, *layers, "--out", str(acts), "--overwrite",
                   "--seq-len", "128", "--batch-size", "8", "--max-tokens", str(trace_tokens)]),
        ("trace vs bare", ["bare", *m, "--data", data, "--tokens", str(min(trace_tokens, 4096 if not gpu else 32768)),
                           "--work", str(work), *layers]),
        ("train (from disk)", train),
    ]
    if _has_live_train():
        stages.append(("train (live)", ["tuiwb", "train", *m, "--data", data, *layers, "--out", str(work / "saes_live"),
                                        "--expansion", str(args.expansion), "--k", "32", "--tokens",
                                        str(train_tokens), "--batch-size", "1024", "--overwrite", "--no-progress",
                                        "--lr", "2e-4", "--log", "none"]))
    else:
        print("note: this tuiwb has no `train --model` (live training): the live train stage is skipped", flush=True)
    sae = str(saes / f"layer_{top}")
    stages += [
        ("active feature", ["active", *m, "--sae", sae, "--prompt", PROMPT]),
        ("eval", ["tuiwb", "eval", "--acts", str(acts), "--sae", sae, *m, "--json"]),
        ("features", ["tuiwb", "features", "--acts", str(acts), "--sae", sae, *m, "--json", "--top", "5",
                      "--no-cache"]),
        ("logits + hook", ["tuiwb", "logits", *m, "--prompt", PROMPT, "--saes", str(saes), "--ablate",
                           f"{top}:FEATURES", "--json"]),
        ("patch build", ["tuiwb", "patch", "build", *m, "--sae", sae, "--feature", "FEATURE", "--out", str(lora),
                         "--data", data, "--force", "--json", *fit]),
        ("logits + LoRA", ["tuiwb", "logits", *m, "--prompt", PROMPT, "--lora", str(lora), "--json"]),
        ("provenance d2", ["tuiwb", "provenance", *m, "--saes", str(saes), "--layer", str(top), "--feature",
                           "FEATURE", "--prompt", PROMPT, "--depth", "2", "--json"]),
        ("session + ui", ["ui", *m, "--saes", str(saes), "--acts", str(acts), "--layer", str(top), "--prompt", PROMPT,
                          "--toggles", str(args.toggles)]),
    ]
    return stages


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=tuple(SHAPES), default="mistral-7b")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--quant", choices=("4bit", "8bit"), default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="float32", help="weight dtype of the built model (default float32)")
    ap.add_argument("--model", type=Path, default=None, help="use this saved model instead of building one")
    ap.add_argument("--build-device", default="cpu", help="device the random weights are initialised on")
    ap.add_argument("--work", type=Path, default=None, help="working directory (default: a temp dir)")
    ap.add_argument("--expansion", type=int, default=8, help="SAE latents = expansion × hidden (default 8)")
    ap.add_argument("--trace-tokens", type=int, default=None)
    ap.add_argument("--train-tokens", type=int, default=None)
    ap.add_argument("--toggles", type=int, default=30, help="key presses in the UI stage (default 30)")
    ap.add_argument("--json", type=Path, default=None, help="also write the JSON result here")
    ap.add_argument("--only-build", action="store_true", help="build (and save) the model, run nothing")
    ap.add_argument("--tiny", action="store_true", help="the tiny shape (a smoke test of every stage)")
    args = ap.parse_args(argv)
    if args.tiny:
        args.shape = "tiny"
    work = args.work or Path(tempfile.mkdtemp(prefix="tuiwb-bench-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model = args.model or build_model(args.shape, args.layers, work / "model", args.dtype,
                                      device=args.build_device)
    build_s = round(time.perf_counter() - t0, 1)
    if args.only_build:
        print(json.dumps({"model": str(model), "build_seconds": build_s}))
        return 0
    if args.model is not None:
        args.layers = json.loads((model / "config.json").read_text())["num_hidden_layers"]
    log = work / "stages.log"
    results = []
    feature, features = "0", "0,1,2,3"
    for name, cmd in plan(args, model, work):
        cmd = [feature if c == "FEATURE" else c.replace("FEATURES", features) for c in cmd]
        print(f"[{time.strftime('%H:%M:%S')}] {name} …", flush=True)
        r = run_stage(name, cmd, log)
        if name == "active feature" and r.get("features"):  # edit and explain features that are on
            feature, features = str(r["features"][0]), ",".join(map(str, r["features"]))
        if name == "features" and r.get("stdout_json"):
            feats = r["stdout_json"].get("features", [])
            r["logit_effects"] = bool(feats) and all(f.get("top_logits") for f in feats)
        r.pop("stdout_json", None)
        results.append(r)
        print(f"    rc {r['rc']}  {r['seconds']} s  peak RSS {r['peak_rss_gb']} GB"
              + (f"  peak CUDA {r['peak_cuda_gb']} GB" if r.get("peak_cuda_gb") is not None else ""), flush=True)
    summary = summarise(args, results, build_s, model)
    print(markdown(summary))
    print(json.dumps(summary))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    return 0 if all(r["rc"] == 0 for r in results) else 1


def summarise(args, results: list[dict], build_s: float, model: Path) -> dict:
    by = {r["stage"]: r for r in results}
    peak_cuda = [r["peak_cuda_gb"] for r in results if r.get("peak_cuda_gb") is not None]
    checks = {}
    if "ui_p95_ms" in by.get("session + ui", {}):
        checks["ui_p95_ms"] = by["session + ui"]["ui_p95_ms"]
    if "ratio" in by.get("trace vs bare", {}):
        checks["trace_over_bare"] = by["trace vs bare"]["ratio"]
    if "patch build" in by:
        checks["patch_build_s"] = by["patch build"].get("fit_seconds", by["patch build"]["seconds"])
    if peak_cuda:
        checks["peak_cuda_gb"] = max(peak_cuda)
    return {"shape": args.shape, "layers": args.layers, "quant": args.quant, "device": args.device,
            "model": str(model), "build_seconds": build_s, "stages": results, "checks": checks,
            "all_ok": all(r["rc"] == 0 for r in results),
            "max_rss_gb": max((r["peak_rss_gb"] for r in results), default=None),
            "cpus": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2)}


def markdown(summary: dict) -> str:
    rows = ["| stage | rc | time (s) | peak RSS (GB) | peak CUDA (GB) | notes |", "|---|---|---|---|---|---|"]
    for r in summary["stages"]:
        notes = ", ".join(f"{k} {v}" for k, v in r.items()
                          if k not in ("stage", "rc", "seconds", "peak_rss_gb", "peak_cuda_gb"))
        cuda = r.get("peak_cuda_gb")
        rows.append(f"| {r['stage']} | {r['rc']} | {r['seconds']} | {r['peak_rss_gb']} | "
                    f"{'-' if cuda is None else cuda} | {notes} |")
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
