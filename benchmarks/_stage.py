"""One stage of ``bench_scale.py``, run in its own process so its peak RSS is its own.

    python benchmarks/_stage.py REPORT.json tuiwb ARGS...   # the CLI, in-process (its stdout JSON kept)
    python benchmarks/_stage.py REPORT.json bare ARGS...    # trace vs a bare forward, one loaded model
    python benchmarks/_stage.py REPORT.json ui ARGS...      # Session + the real TUI via Pilot

Writes REPORT.json: the stage's own numbers, plus ``peak_cuda_gb`` when a GPU was used.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import time
from pathlib import Path


def _model_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--model", required=True)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--quant", default=None)


def _load(args):
    from tuiwb.model.loading import load_model

    return load_model(args.model, quant=args.quant, device=args.device)


def cli_stage(argv: list[str]) -> dict:
    """``tuiwb ARGS`` in-process; stdout passes through, and a JSON stdout is kept for the report."""
    from tuiwb.cli import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(argv)
    text = buf.getvalue()
    sys.stdout.write(text)
    out: dict = {"rc_cli": rc}
    try:
        out["stdout_json"] = json.loads(text.strip().splitlines()[-1]) if text.strip() else None
    except ValueError:
        pass
    js = out.get("stdout_json") or {}
    if argv[:2] == ["patch", "build"] and isinstance(js, dict) and "fit" in js:
        fit = js["fit"]
        out.update(fit_seconds=fit.get("seconds"), solve_s=fit.get("solve_seconds"),
                   refine_s=fit.get("refine_seconds"), fit_peak_mb=fit.get("peak_extra_mb"),
                   refined=fit.get("refined"), fidelity=js.get("fidelity"))
        out.pop("stdout_json")
    elif argv[:1] == ["logits"] and isinstance(js, dict):
        out.update(kl=js.get("kl"), top=[t.get("token") for t in js.get("top", [])[:3]])
        out.pop("stdout_json")
    elif argv[:1] == ["provenance"] and isinstance(js, dict):
        out.update(nodes=len(js.get("nodes", [])), edges=len(js.get("edges", [])))
        out.pop("stdout_json")
    elif argv[:1] == ["eval"] and isinstance(js, dict):
        out.update({k: js[k] for k in ("fvu", "l0", "ce_loss_score") if k in js})
        out.pop("stdout_json")
    elif argv[:1] not in (["features"],):
        out.pop("stdout_json", None)
    if rc:
        raise SystemExit(rc)
    return out


def bare_stage(argv: list[str]) -> dict:
    """Trace tok/s against a bare forward of the same windows up to the same layer (one loaded model)."""
    import torch

    from tuiwb.trace.config import TraceConfig
    from tuiwb.trace.tracer import trace

    ap = argparse.ArgumentParser()
    _model_args(ap)
    ap.add_argument("--data", required=True)
    ap.add_argument("--tokens", type=int, required=True)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--layer", type=int, action="append", required=True)
    args = ap.parse_args(argv)
    loaded = _load(args)
    out = args.work / "acts_bare.parquet"
    top = max(args.layer)
    cfg = TraceConfig(data=[args.data], out=str(out), layers=list(args.layer), model=args.model, seq_len=128, batch_size=8,
                      max_tokens=args.tokens, overwrite=True, quant=args.quant, device=args.device)
    ids = torch.tensor([list(map(int, t)) for _, t, _ in _windows(cfg, loaded)])  # [W, 128]

    def bare() -> float:
        t = time.perf_counter()
        with torch.no_grad():
            for i in range(0, len(ids), 8):
                loaded.run_to(ids[i:i + 8].to(loaded.device), top)
        _sync()
        return time.perf_counter() - t

    bare()  # warm-up (kernels, allocator) so neither side pays it
    t = time.perf_counter()
    trace(cfg, progress=False, loaded=loaded)
    _sync()
    t_trace = time.perf_counter() - t
    t_bare = bare()
    n = int(ids.numel())
    return {"tokens": n, "trace_tok_s": round(n / t_trace, 1),
            "bare_tok_s": round(n / t_bare, 1), "ratio": round(t_bare / t_trace, 3)}


def _windows(cfg, loaded):
    """The windows the trace will record: traced once into a scratch store, read back."""
    from dataclasses import replace

    from tuiwb.trace.store import ActivationStore
    from tuiwb.trace.tracer import trace

    scratch = replace(cfg, out=cfg.out + ".windows", layers=[0])
    trace(scratch, progress=False, loaded=loaded)
    return list(ActivationStore(scratch.out).windows())


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def ui_stage(argv: list[str]) -> dict:
    """Session open + a hook toggle with logits (the model's cost), then the TUI's key → logit pane p50/p95."""
    import numpy as np

    from tuiwb.session.session import Session
    from tuiwb.tui import make_app

    ap = argparse.ArgumentParser()
    _model_args(ap)
    ap.add_argument("--saes", required=True)
    ap.add_argument("--acts", required=True)
    ap.add_argument("--layer", type=int, required=True)
    ap.add_argument("--prompt", required=True)
    ap.add_argument("--toggles", type=int, default=30)
    args = ap.parse_args(argv)
    t = time.perf_counter()
    session = Session.open(args.model, saes_dir=args.saes, acts=args.acts, quant=args.quant, device=args.device)
    open_s = time.perf_counter() - t
    t = time.perf_counter()
    session.stats(args.layer)
    stats_s = time.perf_counter() - t
    session.add_patch(name="bench", layer=args.layer, features=[0, 1, 2], method="hook", enabled=False)
    session.logits(args.prompt, top=50)
    model_ms = []
    for _ in range(args.toggles):
        t = time.perf_counter()
        session.toggle("bench")
        session.logits(args.prompt, top=50)
        model_ms.append((time.perf_counter() - t) * 1e3)
    session.toggle("bench", on=False)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_ui_latency import press_and_time

    lat = press_and_time(make_app(session, prompt=args.prompt, layer=args.layer), args.toggles, (160, 50))

    def pct(xs, q):
        return round(float(np.percentile(np.asarray(xs, dtype=np.float64), q)), 1) if xs else None

    return {"session_open_s": round(open_s, 2), "feature_stats_s": round(stats_s, 2),
            "model_p50_ms": pct(model_ms, 50), "model_p95_ms": pct(model_ms, 95),
            "ui_p50_ms": pct(lat, 50), "ui_p95_ms": pct(lat, 95), "ui_n": len(lat)}


def active_stage(argv: list[str]) -> dict:
    """The feature of ``--sae`` most active on ``--prompt``'s last token (so the hook, the LoRA and the
    provenance stages edit and explain a feature that is really on)."""
    import torch

    from tuiwb.sae.io import load_sae

    ap = argparse.ArgumentParser()
    _model_args(ap)
    ap.add_argument("--sae", required=True)
    ap.add_argument("--prompt", required=True)
    args = ap.parse_args(argv)
    loaded = _load(args)
    sae = load_sae(args.sae)
    layer = int(sae.cfg.layer)
    sae.to(loaded.layer_device(layer))
    with torch.no_grad():
        h = loaded.run_to(torch.tensor([loaded.encode(args.prompt)], device=loaded.device), layer)  # [1, T, d]
        acts = sae.encode(h[0, -1:].to(sae.W_enc.device, sae.W_enc.dtype))[0]  # [d_sae]
    top = torch.topk(acts, 4)
    return {"features": [int(i) for i in top.indices], "acts": [round(float(v), 3) for v in top.values]}


def main() -> int:
    report, kind, rest = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
    out = {"tuiwb": cli_stage, "bare": bare_stage, "ui": ui_stage, "active": active_stage}[kind](rest)
    if "torch" in sys.modules:
        import torch

        if torch.cuda.is_available() and torch.cuda.is_initialized():  # summed over the GPUs a device map used
            peak = sum(torch.cuda.max_memory_allocated(i) for i in range(torch.cuda.device_count()))
            out["peak_cuda_gb"] = round(peak / 2**30, 2)
    report.write_text(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
