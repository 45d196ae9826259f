"""The companion page in a real browser: Debian's Chromium driven by Playwright on the shipped small
demo lab, served by ``tuiwb.server.run.start_server`` on one Session (never ``playwright install``:
``.ci/run`` apt-installs chromium, ``make install`` runs ``npm ci`` for d3)."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlparse

import pytest

CHROMIUM = Path("/usr/bin/chromium")
D3 = Path(__file__).resolve().parents[2] / "web_export" / "node_modules" / "d3" / "dist" / "d3.min.js"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run"]
LOOPBACK = {"127.0.0.1", "localhost", "[::1]", "::1"}

if not CHROMIUM.exists():
    pytest.skip("/usr/bin/chromium is missing: `apt-get install chromium` (.ci/run does it)", allow_module_level=True)
if not D3.exists():
    pytest.skip("web_export/node_modules is missing: run `make install` (it runs npm ci)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is missing: pip install -e '.[dev]'")


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def demo(demo_small_saes):
    """The demo's Session (trigger patch off, the demo prompt) behind a live server: ``(session, handle, result)``."""
    from tuiwb.commands.demo import prepare_session
    from tuiwb.server.run import start_server

    result = demo_small_saes.result
    session = prepare_session(result)
    session.prompt = result.prompt
    target = {"layer": result.trigger_layer, "feature": result.trigger_features[0]}
    handle = start_server(session, port=0, roots=[result.saes_dir], target=target)
    yield session, handle, result
    handle.stop()
    session.close()


class PageLog:
    """A page with its console errors, uncaught exceptions and every URL it requested."""

    def __init__(self, page):
        self.page, self.errors, self.urls = page, [], []
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        page.on("request", lambda r: self.urls.append(r.url))


@pytest.fixture
def page(browser, demo):
    """A fresh tab on the page (graph of the server's target, the demo trigger feature), patches all off;
    waits for the first paint of every panel."""
    session, handle, _ = demo
    session.set_enabled([])
    context = browser.new_context(viewport={"width": 1400, "height": 860})
    log = PageLog(context.new_page())
    log.page.goto(handle.url)
    log.page.wait_for_selector("body[data-ready='1']", timeout=30_000)
    log.page.wait_for_selector("#conn.live")
    yield log
    context.close()


def bars(page) -> list[dict]:
    """The bar chart as drawn: [{token, p, p_base}] top to bottom."""
    return page.eval_on_selector_all("#bars g.bar", """gs => gs.map(g => ({token: g.dataset.token,
        p: Number(g.dataset.p), p_base: Number(g.dataset.pBase), rank: Number(g.dataset.rank)}))
        .sort((a, b) => a.rank - b.rank)""")


def p_of(page, token: str) -> float:
    """Patched probability of ``token`` in the chart (0 when it fell out of the top rows)."""
    return next((b["p"] for b in bars(page) if b["token"] == token), 0.0)


def wait_p(page, token: str, below: float | None = None, near: float | None = None) -> None:
    """Wait until the chart's p of ``token`` (0 if absent) is below ``below`` or within 1e-6 of ``near``
    (no eval in the page: the server's CSP forbids it)."""
    page.wait_for_function("""([token, below, near]) => {
        const g = [...document.querySelectorAll('#bars g.bar')].find(g => g.dataset.token === token);
        const p = g ? Number(g.dataset.p) : 0;
        return below !== null ? p < below : Math.abs(p - near) < 1e-6;
    }""", arg=[token, below, near], timeout=15_000)


def test_page_loads_clean_and_only_talks_to_loopback(page):
    page.page.wait_for_timeout(200)  # late requests (fonts, icons) would show up here
    assert page.errors == []
    hosts = {urlparse(u).hostname for u in page.urls if not u.startswith(("data:", "blob:"))}
    assert hosts and hosts <= LOOPBACK, hosts
    assert any(u.endswith("/static/vendor/d3.js") for u in page.urls)
    assert page.page.locator("#patches li[data-patch='trigger']").count() == 1


def test_trigger_feature_graph_has_two_upstream_layers(page, demo):
    _, _, result = demo
    layers = page.page.eval_on_selector_all("#graph g.node", "gs => gs.map(g => g.dataset.layer)")
    upstream = {float(x) for x in layers if float(x) < result.trigger_layer}
    assert len(upstream) >= 2, layers  # layer 0 features/error and the token embeddings (-1)
    root = page.page.locator("#graph g.node.root")
    assert root.count() == 1 and root.get_attribute("data-id").startswith(f"{result.trigger_layer}_")
    assert page.page.locator("#graph g.node.error").count() >= 1
    label = page.page.text_content("#prune-label")
    assert label == f"{len(layers)} of {len(layers)} nodes shown"
    # The view in the URL comes back on a reload: selection, pin, threshold.
    ids = page.page.eval_on_selector_all("#graph g.node.feature:not(.root)", "gs => gs.map(g => g.dataset.id)")
    page.page.goto(f"{page.page.url}&sel={ids[0]}&pin={ids[-1]}&thr=0.99")
    page.page.wait_for_selector("body[data-ready='1']")
    assert page.page.get_attribute("#graph g.node.selected", "data-id") == ids[0]
    assert page.page.get_attribute("#graph g.node.pinned", "data-id") == ids[-1]
    shown = int(page.page.get_attribute("#prune-label", "data-shown"))
    assert shown < len(layers) and page.page.text_content("#prune-label") == f"{shown} of {len(layers)} nodes shown"
    page.page.wait_for_selector("#card-panel:not([hidden])")  # the selected feature's card


def test_trigger_toggle_pushes_the_payload_down_and_back(page):
    p = page.page
    top = bars(p)[0]
    assert top["p"] > 0.5 and top["p"] == pytest.approx(top["p_base"])  # the payload leads while the trigger is in
    toggle = p.locator("#patches li[data-patch='trigger'] .toggle")
    toggle.click()
    wait_p(p, top["token"], below=top["p"] / 10)
    ranks = {b["token"]: b["rank"] for b in bars(p)}
    assert ranks.get(top["token"], 0) > 0  # still drawn (the baseline's top rows are kept), further down
    toggle.click()
    wait_p(p, top["token"], near=top["p"])
    assert bars(p)[0]["token"] == top["token"]
    timings = p.evaluate("window.__tuiwbTimings")
    assert len(timings) == 2 and all(t["click_to_paint_ms"] > 0 for t in timings)
    assert page.errors == []


def test_a_burst_of_clicks_ends_on_the_last_state(page, demo):
    session, _, _ = demo
    p = page.page
    top = bars(p)[0]
    toggle = p.locator("#patches li[data-patch='trigger'] .toggle")
    for _ in range(5):  # on, off, on, off, on: answers to older clicks may still be in flight
        toggle.click(delay=0, no_wait_after=True)
    p.wait_for_function("() => window.__tuiwbTimings.length > 0")  # an answer to our newest request (at that time) was painted
    wait_p(p, top["token"], below=top["p"] / 10)
    p.wait_for_timeout(300)  # a stale answer painted late would show up here
    assert session.patch("trigger").enabled and p.is_checked("#patches li[data-patch='trigger'] .toggle")
    assert p_of(p, top["token"]) < top["p"] / 10
    assert page.errors == []


def test_a_toggle_made_through_the_session_appears_in_the_page(page, demo):
    session, _, _ = demo
    top = bars(page.page)[0]
    session.toggle("trigger", True)  # what the TUI does
    page.page.wait_for_selector("#patches li[data-patch='trigger'][data-on='true']", timeout=15_000)
    wait_p(page.page, top["token"], below=top["p"] / 10)
    assert page.page.is_checked("#patches li[data-patch='trigger'] .toggle")
    session.toggle("trigger", False)
    page.page.wait_for_selector("#patches li[data-patch='trigger'][data-on='false']", timeout=15_000)


def circuit_tracer_graph() -> dict:
    """A small graph written by hand from circuit-tracer's schema (frontend/graph_models.py)."""
    node = dict(token_prob=0.0, is_target_logit=False, run_idx=0, reverse_ctx_idx=0, influence=None)
    nodes = [
        {**node, "node_id": "E_262_0", "jsNodeId": "E_262-0", "feature": 262, "layer": "E", "ctx_idx": 0,
         "feature_type": "embedding", "clerp": "", "activation": None, "influence": 0.02},
        {**node, "node_id": "E_1010_1", "jsNodeId": "E_1010-1", "feature": 1010, "layer": "E", "ctx_idx": 1,
         "feature_type": "embedding", "clerp": "", "activation": None, "influence": 0.5},
        {**node, "node_id": "0_41_1", "jsNodeId": "0_41-1", "feature": 41, "layer": "0", "ctx_idx": 1,
         "feature_type": "cross layer transcoder", "clerp": "colour words", "activation": 3.2, "influence": 0.6},
        {**node, "node_id": "0_7_0", "jsNodeId": "0_7-0", "feature": 7, "layer": "0", "ctx_idx": 0,
         "feature_type": "cross layer transcoder", "clerp": "start", "activation": 0.4, "influence": 0.05},
        {**node, "node_id": "0_1_1", "jsNodeId": "0_1-1", "feature": 1, "layer": "0", "ctx_idx": 1,
         "feature_type": "mlp reconstruction error", "clerp": "", "activation": None, "influence": 0.2},
        {**node, "node_id": "27_9_1", "jsNodeId": "L_9-1", "feature": 9, "layer": "2", "ctx_idx": 1,
         "feature_type": "logit", "clerp": "output \"blue\"", "token_prob": 0.7, "is_target_logit": True,
         "activation": None, "influence": 1.0},
    ]
    links = [{"source": "E_1010_1", "target": "0_41_1", "weight": 2.0},
             {"source": "E_262_0", "target": "0_7_0", "weight": 0.3},
             {"source": "0_41_1", "target": "27_9_1", "weight": 1.5},
             {"source": "0_7_0", "target": "27_9_1", "weight": -0.2},
             {"source": "0_1_1", "target": "27_9_1", "weight": 0.4}]
    return {"metadata": {"slug": "blue-demo", "scan": "hand-written", "transcoder_list": [], "prompt": "<bos> blue",
                         "prompt_tokens": ["<bos>", " blue"], "schema_version": 1, "info": {},
                         "pruning_settings": {"node_threshold": 0.8, "edge_threshold": 0.98}},
            "qParams": {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""},
            "nodes": nodes, "links": links}


def download(p, button: str, tmp_path: Path):
    """Click an export button; the downloaded file's JSON (or text)."""
    with p.expect_download() as d:
        p.click(button)
    path = tmp_path / d.value.suggested_filename
    d.value.save_as(path)
    text = path.read_text()
    return json.loads(text) if path.suffix == ".json" else text


def test_a_circuit_tracer_file_loads_and_the_view_goes_in_the_url(page, tmp_path):
    path = tmp_path / "graph.json"
    path.write_text(json.dumps(circuit_tracer_graph()))
    p = page.page
    p.set_input_files("#graph-file", str(path))
    p.wait_for_function("() => document.querySelector('#graph-title').textContent.includes('graph.json')")
    assert p.text_content("#prune-label") == "6 of 6 nodes shown"
    kinds = p.eval_on_selector_all("#graph g.node", "gs => gs.map(g => g.dataset.kind).sort()")
    assert kinds == ["embedding", "embedding", "error", "feature", "feature", "logit"]
    assert p.locator("#graph g.node.root").get_attribute("data-id") == "27_9_1"  # the target logit on top
    ys = {n: p.locator(f"#graph g.node[data-id='{n}']").bounding_box()["y"] for n in ("E_1010_1", "0_41_1", "27_9_1")}
    assert ys["E_1010_1"] > ys["0_41_1"] > ys["27_9_1"]  # embeddings at the bottom, layers upwards
    p.locator("#graph g.node[data-id='0_41_1'] path").click()
    assert p.locator("#graph path.link.in").count() == 1 and p.locator("#graph path.link.out").count() == 1
    p.locator("#graph g.node[data-id='0_7_0'] path").click(modifiers=["Control"])
    p.fill("#prune", "0.5")
    p.dispatch_event("#prune", "input")
    assert p.text_content("#prune-label") == "4 of 6 nodes shown"  # root, 0_41 (0.6), E_1010 (0.5) and the pinned 0_7
    assert p.locator("#graph g.node[data-id='0_7_0'].pinned").count() == 1
    url = p.evaluate("location.search")
    assert "sel=0_41_1" in url and "pin=0_7_0" in url and "thr=0.5" in url
    exported = download(p, "#export-json", tmp_path)
    assert exported["qParams"]["pinnedIds"] == ["0_7_0"] and exported["qParams"]["clickedId"] == "0_41_1"
    assert [n["node_id"] for n in exported["nodes"]] == [n["node_id"] for n in circuit_tracer_graph()["nodes"]]
    svg = download(p, "#export-svg", tmp_path)
    assert svg.startswith("<svg") and svg.count('class="node ') == 4 and "stroke-width" in svg
    p.keyboard.press("Escape")
    assert p.locator("#graph g.node.selected, #graph g.node.pinned").count() == 0
    assert page.errors == []


def test_the_feature_card_adds_an_ablate_patch_and_opens_its_graph(page, demo):
    session, _, result = demo
    p = page.page
    p.fill("#search-q", "#5")
    p.wait_for_selector("#search-results li[data-id='5']")
    p.click("#search-results li[data-id='5']")
    p.wait_for_selector(f"#card-panel:not([hidden]) h3:text('L{result.trigger_layer} · F5')")
    assert p.locator("#card .ctx").count() >= 1 and p.locator("#card .ctx span[style]").count() >= 1
    p.click("#ablate")
    p.wait_for_function("() => document.querySelectorAll('#patches li[data-patch]').length === 2")
    added = [x for x in session.patches if x.name != "trigger"]
    assert len(added) == 1 and added[0].features == [5] and added[0].layer == result.trigger_layer
    assert added[0].mode == "ablate"
    p.click(f"#patches li[data-patch='{added[0].name}'] .del")
    p.wait_for_function("() => document.querySelectorAll('#patches li[data-patch]').length === 1")
    assert [x.name for x in session.patches] == ["trigger"]
    p.click("#graph-this")
    p.wait_for_function("() => document.querySelector('#graph-title').textContent.includes(' F5 ')")
    assert f"target={result.trigger_layer}:5" in p.evaluate("location.search")
    assert page.errors == []
