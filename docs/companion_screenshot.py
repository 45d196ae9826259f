"""Regenerate docs/images/companion.png from the real companion page on the full demo.

    .venv/bin/python docs/companion_screenshot.py [--variant full|small]

Runs ``tuiwb demo``'s pipeline (cached after the first run), serves its Session, opens the page in
headless Debian Chromium (Playwright, /usr/bin/chromium), switches the trigger patch on, selects the
strongest upstream feature of the trigger feature's graph and saves a PNG of the page.
"""

from __future__ import annotations

import argparse
from pathlib import Path

OUT = Path(__file__).parent / "images" / "companion.png"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", choices=("full", "small"), default="full")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)

    from playwright.sync_api import sync_playwright

    from tuiwb.commands.demo import TRIGGER_PATCH, prepare_session
    from tuiwb.demo.pipeline import DemoPipelineConfig, run_pipeline
    from tuiwb.server.run import start_server

    result = run_pipeline(DemoPipelineConfig(variant=args.variant), progress=False, say=lambda s: None)
    session = prepare_session(result)
    session.prompt = result.prompt
    handle = start_server(session, port=0, roots=[result.saes_dir],
                          target={"layer": result.trigger_layer, "feature": result.trigger_features[0]})
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1440, "height": 860}, device_scale_factor=1)
            page.goto(f"{handle.url}&target={result.trigger_layer}:{result.trigger_features[0]}")
            page.wait_for_selector("body[data-ready='1']", timeout=60_000)
            page.wait_for_selector("#conn.live")
            page.locator(f"#patches li[data-patch='{TRIGGER_PATCH}'] .toggle").click()
            page.wait_for_function("() => window.__tuiwbTimings.length > 0")
            # The strongest feature one layer below the root: its card and its edges.
            strongest = page.evaluate("""() => [...document.querySelectorAll('#graph g.node.feature:not(.root)')]
                .sort((a, b) => b.getBBox().width - a.getBBox().width)[0]?.dataset.id""")
            if strongest:
                page.locator(f"#graph g.node[data-id='{strongest}'] path").click()
                page.wait_for_selector("#card-panel:not([hidden]) #ablate")
                page.locator(f"#graph g.node[data-id='{strongest}'] path").hover()
            page.wait_for_timeout(300)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(args.out))
            browser.close()
    finally:
        handle.stop()
        session.close()
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
