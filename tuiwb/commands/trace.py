"""``tuiwb trace``: record residual-stream activations of text into a Parquet shard directory."""

from __future__ import annotations

import argparse
import json

from tuiwb.choices import DTYPE_NAMES, QUANT_CHOICES


def add_parser(sub, parents) -> None:
    p = sub.add_parser(
        "trace", parents=parents, help="record activations of text files into Parquet shards",
        description="Record the residual stream (blocks.L.hook_resid_post) of a model over text files "
                    "into OUT/ (Parquet shards + manifest.json). One row per token; every position of "
                    "every window, BOS included.")
    p.add_argument("--model", required=True, help="local checkpoint directory or Hugging Face hub id")
    p.add_argument("--layer", action="append", required=True, metavar="L",
                   help="block whose output to record (repeatable, or comma-separated; 'all' = every block)")
    p.add_argument("--data", action="append", required=True, metavar="FILE",
                   help="input: .txt (one document per line), .jsonl, .parquet, or hf:NAME[:SPLIT] (repeatable)")
    p.add_argument("--out", required=True, help="output directory, e.g. acts.parquet")
    p.add_argument("--seq-len", type=int, default=128, help="tokens per window, BOS included (default 128)")
    p.add_argument("--batch-size", type=int, default=16, metavar="B", help="windows per forward pass (default 16)")
    p.add_argument("--max-tokens", type=int, default=None, metavar="N", help="stop after N tokens (whole windows)")
    p.add_argument("--text-field", default="text", help="JSON field / Parquet column holding the text (default text)")
    p.add_argument("--quant", choices=QUANT_CHOICES, default=None, help="load weights in 8-bit or 4-bit (bitsandbytes)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1 (default: cpu)")
    p.add_argument("--dtype", choices=["float16", "float32"], default="float16",
                   help="storage dtype of the recorded activations (default float16)")
    p.add_argument("--model-dtype", choices=list(DTYPE_NAMES), default=None,
                   help="weight dtype to load the model in (default: the checkpoint's)")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow the checkpoint's own Python code to run (off by default)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="continue an interrupted trace in OUT")
    mode.add_argument("--overwrite", action="store_true", help="replace an existing OUT (with --shard: that slice)")
    p.add_argument("--shard", default="0/1", metavar="I/N",
                   help="record the I-th of N disjoint slices (run N processes into the same OUT)")
    p.add_argument("--windows-per-shard", type=int, default=None, metavar="W",
                   help="windows per shard file (default: about 256 MB of activations)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON at the end")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import signal
    import threading

    from tuiwb.trace import TraceConfig, trace

    cfg = TraceConfig(
        model=args.model, layers=[x for v in args.layer for x in v.split(",") if x.strip()], data=args.data,
        out=args.out, seq_len=args.seq_len, batch_size=args.batch_size, max_tokens=args.max_tokens,
        text_field=args.text_field, quant=args.quant, device=args.device, dtype=args.dtype,
        model_dtype=args.model_dtype, trust_remote_code=args.trust_remote_code, resume=args.resume,
        overwrite=args.overwrite, shard=args.shard, windows_per_shard=args.windows_per_shard)
    # `kill` (SIGTERM) gets the same clean stop as Ctrl-C: whole shards kept, the partial one removed.
    old = None
    if threading.current_thread() is threading.main_thread():
        old = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        man = trace(cfg, progress=not args.no_progress)
    finally:
        if old is not None:
            signal.signal(signal.SIGTERM, old)
    if args.json:
        print(json.dumps(man, indent=1))
    else:
        mb = sum(s.get("bytes", 0) for s in man["shards"]) / 1e6
        state = "complete" if man["complete"] else f"{man['n_windows']}/{man['total_windows']} windows so far"
        print(f"traced {man['n_tokens']:,} tokens × layers {man['layers']} (d_model {man['d_model']}, "
              f"{man['dtype']}) into {args.out}: {len(man['shards'])} shards, {mb:,.1f} MB, {state}")
    return 0


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt
