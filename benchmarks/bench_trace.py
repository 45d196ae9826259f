"""Benchmark `tuiwb trace`: overhead over a bare forward pass, MB/s written, peak RSS at 1x and 10x tokens.

    python benchmarks/bench_trace.py [--model demo|random|PATH] [--tokens 100000] [--threads 1]

Prints one JSON object. Every number is measured in this run:
- ``ratio_last_layer``: wall time of ``trace()`` recording the last block (tokenize + pack + forward +
  write, model already loaded) / wall time of bare ``model(input_ids)`` batches over the same windows
  (pre-packed, no hooks). Target <= 1.15. Median over ``--reps`` of the ratio of each recording to
  the bare pass run just before it; ``cpu_ratio_*`` is the same with process CPU time (all threads),
  which a shared machine's load disturbs less. ``*_s`` are medians.
- ``ratio_all_layers``: the same, recording every block (``--layer all``: n_layers x the bytes).
- ``mb_per_s``: shard bytes written / trace wall time (last-layer run).
- ``peak_rss_mb_1x`` / ``peak_rss_mb_10x``: ``ru_maxrss`` of a fresh process tracing 1x / 10x tokens
  (target: flat, ratio ~1).
``--model demo`` (default) uses the cached full demo model (``tuiwb.demo.demo_model_path("full")``,
built on first use) and its ``train.txt``; ``--model random`` a random 4-layer Llama with d_model 128
and a word-level tokenizer over a generated corpus (no build needed).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def prepare(model: str, workdir: Path, tokens: int) -> tuple[str, list[str], str]:
    """Model path, data files holding >= 10x ``tokens``, and a description."""
    if model == "random":
        sys.path.insert(0, str(ROOT / "tests"))
        from tiny_models import WORDS, make_tiny_checkpoint

        path = make_tiny_checkpoint(workdir / "random-llama", "llama", n_layers=4, d_model=128)
        rng = random.Random(0)
        data = workdir / "corpus.txt"
        n_words = 0
        with open(data, "w") as f:
            while n_words < 11 * tokens:
                n = rng.randint(5, 60)
                f.write(" ".join(rng.choice(WORDS) for _ in range(n)) + "\n")
                n_words += n
        return str(path), [str(data)], "random llama (4 layers, d_model 128, word-level vocab)"
    if model == "demo":
        from tuiwb.demo.model import demo_model_path

        path = demo_model_path("full", progress=False)
        desc = "demo model (full)"
    else:
        path, desc = Path(model), model
    data = path / "train.txt"
    if not data.is_file():
        raise SystemExit(f"{path} has no train.txt to trace")
    return str(path), [str(data)], desc


def count_tokens(model: str, data: list[str]) -> int:
    """Tokens (BOS included) in the data, to know how many copies hold 10x."""
    from transformers import AutoTokenizer

    from tuiwb.trace.sources import iter_documents, open_sources

    tok = AutoTokenizer.from_pretrained(model)
    return max(1, sum(len(ids) + 1 for batch in iter_documents(open_sources(data))
                      for ids in tok([t for _, t in batch], add_special_tokens=False, verbose=False)["input_ids"]))


def child(spec: dict) -> dict:
    """Run in a fresh process: either the timing comparison or one RSS measurement."""
    import torch

    torch.set_num_threads(spec["threads"])
    from tuiwb.trace.sources import iter_documents, open_sources
    from tuiwb.trace.windows import pack_windows
    from tuiwb.model.loading import load_model
    from tuiwb.trace.config import TraceConfig
    from tuiwb.trace.tracer import trace

    lm = load_model(spec["model"])
    data = spec["data"] * spec["repeat"]
    last = lm.n_layers - 1
    out = Path(spec["workdir"]) / f"acts-{os.getpid()}.parquet"

    def run_trace(layers, max_tokens):
        cfg = TraceConfig(data=data, out=str(out), layers=layers, seq_len=spec["seq_len"],
                          batch_size=spec["batch_size"], max_tokens=max_tokens, overwrite=True)
        t0, c0 = time.perf_counter(), time.process_time()
        man = trace(cfg, progress=False, loaded=lm)
        return (time.perf_counter() - t0, time.process_time() - c0), man

    if spec["mode"] == "rss":
        dt, man = run_trace([last], spec["tokens"])
        return {"tokens": man["n_tokens"], "seconds": dt[0],
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}

    tok = lm.tokenizer
    bos = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    encode = lambda texts: tok(texts, add_special_tokens=False, verbose=False)["input_ids"]  # noqa: E731
    windows = [w.tokens for w in pack_windows(iter_documents(open_sources(data)), encode, spec["seq_len"], bos,
                                              spec["tokens"] // spec["seq_len"])]
    ids = torch.from_numpy(__import__("numpy").stack(windows)).long()  # [n_windows, seq_len]
    B = spec["batch_size"]

    def bare():
        t0, c0 = time.perf_counter(), time.process_time()
        with torch.inference_mode():
            for i in range(0, len(ids), B):
                lm.model(input_ids=ids[i:i + B], use_cache=False)
        return time.perf_counter() - t0, time.process_time() - c0

    bare()  # warm-up (allocator, kernels)
    # On a shared box the load drifts between runs: compare each recording with the bare pass run
    # right before it, and report the median of those per-rep ratios (wall and CPU time).
    t_bare, t_last, t_all, mb = [], [], [], 0.0
    for _ in range(spec["reps"]):
        t_bare.append(bare())
        dt, man = run_trace([last], spec["tokens"])
        t_last.append(dt)
        mb = sum(s["bytes"] for s in man["shards"]) / 1e6
        t_all.append(run_trace(["all"], spec["tokens"])[0])
    # The storage path alone (no model): rewrite the last shard written with the same options.
    import pyarrow.parquet as pq

    from tuiwb.trace.shards import WRITE_OPTIONS

    table = pq.read_table(out / man["shards"][-1]["file"])
    t0 = time.perf_counter()
    with pq.ParquetWriter(Path(spec["workdir"]) / "rewrite.parquet", table.schema, **WRITE_OPTIONS) as w:
        w.write_table(table, row_group_size=65536)
    write_only = table.nbytes / 1e6 / (time.perf_counter() - t0)
    med = lambda xs: float(statistics.median(xs))  # noqa: E731
    return {"tokens": int(ids.numel()), "write_only_mb_per_s": write_only,
            "bare_forward_s": med([b[0] for b in t_bare]), "record_last_s": med([t[0] for t in t_last]),
            "record_all_s": med([t[0] for t in t_all]),
            "ratio_last": med([t[0] / b[0] for t, b in zip(t_last, t_bare)]),
            "ratio_all": med([t[0] / b[0] for t, b in zip(t_all, t_bare)]),
            "cpu_ratio_last": med([t[1] / b[1] for t, b in zip(t_last, t_bare)]),
            "cpu_ratio_all": med([t[1] / b[1] for t, b in zip(t_all, t_bare)]),
            "mb_written_last": mb, "n_layers": lm.n_layers, "d_model": lm.d_model}


def spawn(spec: dict) -> dict:
    res = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"child failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="demo", help="demo | random | a checkpoint dir with train.txt")
    ap.add_argument("--tokens", type=int, default=100_000, help="tokens at 1x (default 100000)")
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: a shared CPU box)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    with tempfile.TemporaryDirectory(prefix="bench-trace-") as tmp:
        model, data, desc = prepare(args.model, Path(tmp), args.tokens)
        base = {"model": model, "data": data, "workdir": tmp, "threads": args.threads, "seq_len": args.seq_len,
                "batch_size": args.batch_size, "reps": args.reps, "repeat": 1}
        # Enough copies of the data for 10x tokens (doc ids keep counting across copies).
        repeat = -(-10 * args.tokens // count_tokens(model, data)) + 1
        base["repeat"] = repeat
        timing = spawn({**base, "mode": "time", "tokens": args.tokens})
        rss1 = spawn({**base, "mode": "rss", "tokens": args.tokens})
        rss10 = spawn({**base, "mode": "rss", "tokens": 10 * args.tokens})
    print(json.dumps({
        "model": desc, "n_layers": timing["n_layers"], "d_model": timing["d_model"], "threads": args.threads,
        "seq_len": args.seq_len, "batch_size": args.batch_size, "tokens_1x": timing["tokens"],
        "bare_forward_s": round(timing["bare_forward_s"], 3),
        "record_last_layer_s": round(timing["record_last_s"], 3),
        "ratio_last_layer": round(timing["ratio_last"], 3),
        "cpu_ratio_last_layer": round(timing["cpu_ratio_last"], 3),
        "record_all_layers_s": round(timing["record_all_s"], 3),
        "ratio_all_layers": round(timing["ratio_all"], 3),
        "cpu_ratio_all_layers": round(timing["cpu_ratio_all"], 3),
        "mb_written_1x": round(timing["mb_written_last"], 1),
        "mb_per_s": round(timing["mb_written_last"] / timing["record_last_s"], 1),
        "write_only_mb_per_s": round(timing["write_only_mb_per_s"], 1),
        "tokens_10x": rss10["tokens"], "peak_rss_mb_1x": round(rss1["peak_rss_mb"], 1),
        "peak_rss_mb_10x": round(rss10["peak_rss_mb"], 1),
        "rss_ratio_10x_over_1x": round(rss10["peak_rss_mb"] / rss1["peak_rss_mb"], 3),
        "target": {"ratio_last_layer": "<= 1.15", "rss_ratio_10x_over_1x": "~1 (flat)"},
    }, indent=1))


if __name__ == "__main__":
    main()
