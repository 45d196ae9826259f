"""Toggle latency of the browser companion: click in the page → logit bars repainted, on the demo model.

Serves the demo's Session (``tuiwb.server.run.start_server``), opens the real page in headless
Debian Chromium (Playwright, ``/usr/bin/chromium``), clicks the trigger patch's toggle N times (on,
off, on, ...) and waits for each repaint. The page measures every click itself with
``performance.now()``: from the checkbox's change event to the animation frame after the new bars
were drawn (``window.__tuiwbTimings``). The message's server timestamps (``t.recv_ms``, ``t.send_ms``,
wall clock, same machine) split that into browser → server, server (recv → send: queue, forward,
encode) and server → painted. The same run measures the model alone (``Session.toggle`` +
``Session.logits``) as the baseline, so the JSON says what the server and the browser add.

    .venv/bin/python benchmarks/bench_companion.py [--variant full|small] [--n 100]

Prints one JSON object: {"p50_ms", "p95_ms", "n", "server_p50_ms", "server_p95_ms", ...}.
Goal (issue 11): p95 ≤ 50 ms on a 2-core CPU with the demo model; the brief's KPI is < 400 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run"]


def _pct(xs, q) -> float:
    return round(float(np.percentile(np.asarray(xs, dtype=np.float64), q)), 2)


def model_only(session, prompt: str, patch: str, n: int) -> list[float]:
    """Milliseconds of one toggle + logits on the Session alone (the floor under any client)."""
    session.logits(prompt, top=10)  # the baseline cache, as the server's first answer warms it
    out = []
    for _ in range(n):
        t = time.perf_counter()
        session.toggle(patch)
        session.logits(prompt, top=10)
        out.append((time.perf_counter() - t) * 1e3)
    session.toggle(patch, on=False)
    return out


def drive_page(url: str, patch: str, n: int, warmup: int = 5) -> list[dict]:
    """Click the patch toggle ``warmup + n`` times, each after the previous repaint; the page's timings."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 860})
        page.goto(url)
        page.wait_for_selector("body[data-ready='1']", timeout=60_000)
        page.wait_for_selector("#conn.live")
        toggle = page.locator(f"#patches li[data-patch='{patch}'] .toggle")
        for i in range(warmup + n):
            toggle.click()
            page.wait_for_function("k => window.__tuiwbTimings.length > k", arg=i, timeout=30_000)
        timings = page.evaluate("window.__tuiwbTimings")
        browser.close()
    return timings[warmup:]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", choices=("full", "small"), default="full")
    ap.add_argument("--n", type=int, default=100, help="toggle clicks measured (default 100)")
    args = ap.parse_args(argv)
    if not os.path.exists(CHROMIUM):
        print(f"{CHROMIUM} is missing: apt-get install chromium", file=sys.stderr)
        return 2

    import torch

    from tuiwb.commands.demo import TRIGGER_PATCH, prepare_session
    from tuiwb.demo.pipeline import DemoPipelineConfig, run_pipeline
    from tuiwb.server.run import start_server

    torch.set_num_threads(1)  # as the tests and the other latency benchmarks: shared 2-core box
    result = run_pipeline(DemoPipelineConfig(variant=args.variant), progress=False, say=lambda s: None)
    session = prepare_session(result)
    session.prompt = result.prompt
    model_ms = model_only(session, result.prompt, TRIGGER_PATCH, args.n)
    handle = start_server(session, port=0, roots=[result.saes_dir],
                          target={"layer": result.trigger_layer, "feature": result.trigger_features[0]})
    try:
        target = f"{result.trigger_layer}:{result.trigger_features[0]}"
        timings = drive_page(f"{handle.url}&target={target}", TRIGGER_PATCH, args.n)
    finally:
        handle.stop()
        session.close()

    paint = [t["click_to_paint_ms"] for t in timings]
    dom = [t["click_to_dom_ms"] for t in timings]
    server = [t["server"]["send_ms"] - t["server"]["recv_ms"] for t in timings]
    to_server = [t["server"]["recv_ms"] - t["sent_wall"] for t in timings]
    to_paint = [p - s - c for p, s, c in zip(paint, server, to_server)]
    out = {
        "p50_ms": _pct(paint, 50), "p95_ms": _pct(paint, 95), "n": len(paint), "max_ms": round(max(paint), 2),
        "dom_p50_ms": _pct(dom, 50), "dom_p95_ms": _pct(dom, 95),
        "server_p50_ms": _pct(server, 50), "server_p95_ms": _pct(server, 95),
        "browser_to_server_p50_ms": _pct(to_server, 50), "server_to_paint_p50_ms": _pct(to_paint, 50),
        "model_p50_ms": _pct(model_ms, 50), "model_p95_ms": _pct(model_ms, 95),
        "page_over_model_p50": round(_pct(paint, 50) / max(_pct(model_ms, 50), 1e-9), 2),
        "variant": args.variant, "cpus": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
