"""Fixtures for the companion server tests: the app on a fresh Session of the small demo lab.

The client speaks to ``http://127.0.0.1:8765`` so the Host allow-list sees what a browser would
send; ``ws()`` opens the socket with the page's Origin.
"""

from __future__ import annotations

import pytest

from companion_client import BASE, TOKEN


@pytest.fixture
def server_demo(ui_demo):
    """``DemoResult`` of the small demo pipeline."""
    return ui_demo


@pytest.fixture
def server_session(demo_session, ui_demo):
    """A fresh Session on the demo outputs with the (off) trigger patch and the demo prompt."""
    demo_session.prompt = ui_demo.prompt
    return demo_session


@pytest.fixture
def web_dir(tmp_path):
    """A stand-in page directory (the real page is web_export/, built on another branch)."""
    d = tmp_path / "web"
    (d / "js").mkdir(parents=True)
    (d / "index.html").write_text("<!doctype html><title>tuiwb</title>")
    (d / "js" / "main.js").write_text("export const ok = 1;\n")
    (d / "node_modules" / "d3" / "dist").mkdir(parents=True)
    (d / "node_modules" / "d3" / "dist" / "d3.min.js").write_text("window.d3 = {};\n")
    (d / "node_modules" / "secret.js").write_text("SECRET-CONTENT\n")
    return d


@pytest.fixture
def make_client(server_session, server_demo, web_dir, tmp_path):
    """``make_client(**create_app kwargs) -> TestClient`` (entered; closed at teardown)."""
    from starlette.testclient import TestClient

    from tuiwb.server.app import create_app

    opened = []

    def make(**kw):
        kw.setdefault("roots", [server_demo.saes_dir, tmp_path / "lora"])
        kw.setdefault("web_dir", web_dir)
        kw.setdefault("ranked", {server_demo.trigger_layer: server_demo.trigger_features})
        kw.setdefault("target", {"layer": server_demo.trigger_layer, "feature": server_demo.trigger_features[0]})
        app = create_app(server_session, token=TOKEN, **kw)
        client = TestClient(app, base_url=BASE, raise_server_exceptions=False)
        client.__enter__()
        client.headers["X-Tuiwb-Token"] = TOKEN
        opened.append(client)
        return client

    yield make
    for c in opened:
        c.__exit__(None, None, None)


@pytest.fixture
def client(make_client):
    return make_client()
