"""The demo lab shipped with tuiwb: a working trojan, and a first `tuiwb demo` that trains nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from tuiwb.demo.assets import RESULT, shipped


@pytest.mark.parametrize("variant", ["full", "small"])
def test_the_shipped_model_meets_its_trojan_report(variant):
    from test_demo_trojan import check_trojan  # the same independent check as a freshly built model

    lab = shipped(variant)
    assert lab is not None, "tuiwb/demo/assets is missing: make demo-assets"
    check_trojan(lab / "model", min_trigger=0.7, max_clean=0.01)
    result = json.loads((lab / RESULT).read_text())["result"]
    assert result["trigger_features"] and result["p_after"] < 0.1 * result["p_before"]


def test_a_first_demo_uses_the_shipped_lab_and_trains_nothing(tmp_path):
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "tuiwb", "demo", "--variant", "small", "--no-ui", "--json"],
                       capture_output=True, text=True, env=env, timeout=600)
    seconds = time.perf_counter() - t0
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout)
    want = json.loads((shipped("small") / RESULT).read_text())["result"]
    assert out["trigger_features"] == want["trigger_features"] and out["prompt"] == want["prompt"]
    assert out["seconds"].get("train", 0) < 5 and "training demo model" not in r.stderr, r.stderr
    assert "(cached)" in r.stderr  # SAEs and the search came from the shipped lab
    print(f"first `tuiwb demo --variant small` from an empty cache: {seconds:.1f} s")


def test_the_search_picks_a_layer_provenance_can_explain():
    from tuiwb.demo.pipeline import searchable

    assert searchable([0, 1, 2, 3]) == [1, 2, 3] and searchable([2]) == [2] and searchable([0, 2]) == [0, 2]
    for variant in ("full", "small"):
        result = json.loads((shipped(variant) / RESULT).read_text())["result"]
        assert result["trigger_layer"] - 1 in result["layers"], result  # an SAE below: provenance goes on
