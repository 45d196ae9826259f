"""Toggle latency of the workbench: key press → logit pane repainted, on the demo model.

Drives the real app headless with Pilot (``make_app`` on a real Session), presses ``space`` N times
on the trigger feature (patch on, off, on, ...) and waits for each repaint; the app itself measures
each toggle from the key event to the end of the screen update that showed the new logits.
The same run also measures the model-only cost of a toggle (``Session.toggle`` + ``Session.logits``)
as the baseline, so the JSON says how much the UI adds.

    .venv/bin/python benchmarks/bench_ui_latency.py [--variant full|small] [--n 100]

Each toggle also restarts the continuation pane: the same run measures key press → first patched
continuation token painted (``gen_p50_ms``/``gen_p95_ms``, issue 13).

Prints one JSON object: {"p50_ms", "p95_ms", "n", "model_p50_ms", "model_p95_ms", "ui_over_model_p50",
"gen_p50_ms", "gen_p95_ms", ...}. Goal (issue 6): p95 ≤ 50 ms on a 2-core CPU; seed KPI < 400 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time

import numpy as np


def _pct(xs, q) -> float:
    return round(float(np.percentile(np.asarray(xs, dtype=np.float64), q)), 2)


def press_and_time(app, n: int, size: tuple[int, int], key: str = "space", timeout_s: float = 60.0,
                   grows=None, settled=None) -> list[float]:
    """Drive ``app`` headless with Pilot: press ``key`` ``n`` times, each after the previous repaint;
    returns the app's own key → repaint latencies (ms). ``grows() -> tuple`` names counters that must
    each move after a press (default: the latencies); ``settled() -> bool`` is then awaited too."""
    grows = grows or (lambda: (len(app.latencies),))

    async def drive() -> None:
        async with app.run_test(size=size) as pilot:
            for _ in range(3):  # let the table, the feature panes and the first logits arrive
                await pilot.pause(0.2)
                await app.workers.wait_for_complete()
            await pilot.pause(0.2)
            for _ in range(n):
                before = grows()
                await pilot.press(key)
                deadline = time.perf_counter() + timeout_s
                while any(a == b for a, b in zip(grows(), before)) and time.perf_counter() < deadline:
                    await asyncio.sleep(0.0005)
                while settled is not None and not settled() and time.perf_counter() < deadline:
                    await asyncio.sleep(0.001)

    asyncio.run(drive())
    return list(app.latencies)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", choices=("full", "small"), default="full")
    ap.add_argument("--n", type=int, default=100, help="toggles (default 100)")
    ap.add_argument("--size", default="160x50", help="terminal size WxH (default 160x50)")
    args = ap.parse_args(argv)
    w, h = (int(x) for x in args.size.lower().split("x"))

    from tuiwb.commands.demo import TRIGGER_PATCH, app_kwargs, prepare_session
    from tuiwb.demo.pipeline import DemoPipelineConfig, run_pipeline
    from tuiwb.tui import make_app
    from tuiwb.tui.widgets.continuation import ContinuationPane

    result = run_pipeline(DemoPipelineConfig(variant=args.variant), progress=False, say=lambda s: None)
    session = prepare_session(result)
    kwargs = app_kwargs(result)

    # Baseline, same process and machine state: what a toggle costs the model alone.
    session.logits(kwargs["prompt"], top=50)  # warm the baseline cache, as the app does on open
    model_ms = []
    for _ in range(args.n):
        t = time.perf_counter()
        session.toggle(TRIGGER_PATCH)
        session.logits(kwargs["prompt"], top=50)
        model_ms.append((time.perf_counter() - t) * 1e3)
    session.toggle(TRIGGER_PATCH, on=False)

    app = make_app(session, **kwargs)

    def read() -> bool:  # a person reads the continuation before the next toggle
        return app.query_one(ContinuationPane).view.done

    # Each press waits for the logits *and* the first continuation token, then for the whole continuation.
    lat = press_and_time(app, args.n, (w, h), grows=lambda: (len(app.latencies), len(app.gen_latencies)),
                         settled=read)
    out = {
        "p50_ms": _pct(lat, 50), "p95_ms": _pct(lat, 95), "n": len(lat),
        "max_ms": round(max(lat), 2),
        "model_p50_ms": _pct(model_ms, 50), "model_p95_ms": _pct(model_ms, 95),
        "ui_over_model_p50": round(_pct(lat, 50) / max(_pct(model_ms, 50), 1e-9), 2),
        "gen_p50_ms": _pct(app.gen_latencies, 50), "gen_p95_ms": _pct(app.gen_latencies, 95),
        "variant": args.variant, "terminal": f"{w}x{h}", "cpus": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
