"""``tuiwb demo --companion`` and ``tuiwb ui --companion``: the server runs on the workbench's own
Session while the workbench is open (the workbench itself is replaced by a probe here)."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest


@pytest.fixture
def probe(monkeypatch):
    """Stands in for the workbench: reads the companion's state while it "runs"."""
    import tuiwb.commands.ui as ui

    seen = {}

    def open_workbench(session, **kw):
        base, token = kw["companion_url"].split("/?token=")
        req = urllib.request.Request(f"{base}/api/state", headers={"X-Tuiwb-Token": token})
        seen.update(state=json.loads(urllib.request.urlopen(req, timeout=30).read()), session=session, kw=kw)
        return 0

    monkeypatch.setattr(ui, "open_workbench", open_workbench)
    monkeypatch.setattr(ui, "require_terminal", lambda: None)
    return seen


def test_demo_companion_serves_the_demo_session(cli, probe, ui_demo):
    code, out, err = cli("demo", "--variant", "small", "--companion", "--port", "0", "--quiet",
                         "--work-dir", Path(ui_demo.acts_dir).parent)
    assert code == 0, err
    state = probe["state"]
    assert state["prompt"] == ui_demo.prompt == probe["kw"]["prompt"]
    assert state["target"] == {"layer": ui_demo.trigger_layer, "feature": ui_demo.trigger_features[0]}
    assert [p["name"] for p in state["patches"]] == ["trigger"]
    assert "companion: http://127.0.0.1:" in out and "?token=" in out and "ssh -L " in out
    assert "companion stopped" in out


def test_ui_companion_shares_the_prompt(cli, probe, ui_demo):
    code, out, err = cli("ui", "--model", ui_demo.model_dir, "--saes", ui_demo.saes_dir, "--prompt", "the cup",
                         "--companion", "--port", "0")
    assert code == 0, err
    assert probe["state"]["prompt"] == "the cup" and probe["state"]["layers"] == list(ui_demo.layers)
