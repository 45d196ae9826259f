"""The HTTP API on the small demo lab: shapes, the trigger patch's effect, one-line 4xx errors."""

from __future__ import annotations


def test_state_lists_layers_patches_prompt_and_target(client, server_demo):
    r = client.get("/api/state")
    assert r.status_code == 200
    s = r.json()
    assert s["layers"] == list(server_demo.layers)
    assert s["n_layers"] >= len(s["layers"])
    assert s["prompt"] == server_demo.prompt
    assert s["target"] == {"layer": server_demo.trigger_layer, "feature": server_demo.trigger_features[0]}
    (trigger,) = s["patches"]
    assert trigger["name"] == "trigger" and trigger["kind"] == "hook" and trigger["on"] is False
    assert trigger["layer"] == server_demo.trigger_layer and trigger["features"] == list(server_demo.trigger_features)


def test_logits_move_when_the_trigger_patch_is_on(client, server_session, server_demo):
    before = client.post("/api/logits", json={}).json()
    assert before["prompt"] == server_demo.prompt and before["kl"] == 0.0
    top = before["top"][0]
    assert set(top) == {"token", "id", "p", "p_base", "dp"} and top["dp"] == 0.0
    assert before["base_top"] == before["top"]  # nothing on: the baseline's top is the patched top
    server_session.toggle("trigger", True)
    after = client.post("/api/logits", json={"prompt": server_demo.prompt}).json()
    assert after["kl"] > 0 and after["patches"][0]["on"] is True
    payload = {r["id"]: r for r in after["base_top"]}[top["id"]]  # the baseline's top keeps the payload token
    assert payload["p_base"] == top["p"] and payload["p"] < top["p"] and payload["dp"] < 0


def test_empty_prompt_gives_empty_bars_not_an_error(client):
    r = client.post("/api/logits", json={"prompt": "   "})
    assert r.status_code == 200 and r.json()["top"] == []


def test_features_page_and_query(client, server_demo):
    L = server_demo.trigger_layer
    r = client.get("/api/features", params={"layer": L, "limit": 5})
    body = r.json()
    assert r.status_code == 200 and body["layer"] == L and len(body["rows"]) == 5 and body["total"] >= 5
    # rank order: the demo's trigger features first
    assert [row["id"] for row in body["rows"]][: len(server_demo.trigger_features[:5])] == \
        list(server_demo.trigger_features[:5])
    row = body["rows"][0]
    assert {"id", "density", "mean", "max", "top_tokens"} <= set(row) and row["top_tokens"]
    one = client.get("/api/features", params={"layer": L, "q": f"#{row['id']}"}).json()
    assert one["total"] == 1 and one["rows"][0]["id"] == row["id"]
    page2 = client.get("/api/features", params={"layer": L, "offset": 5, "limit": 5, "sort": "id"}).json()
    assert [r["id"] for r in page2["rows"]] == [5, 6, 7, 8, 9]


def test_feature_card(client, server_demo):
    L, f = server_demo.trigger_layer, server_demo.trigger_features[0]
    card = client.get(f"/api/features/{L}/{f}").json()
    assert card["layer"] == L and card["id"] == f
    assert card["stats"]["density"] > 0 and card["cloud"] and card["contexts"]
    ctx = card["contexts"][0]
    assert len(ctx["tokens"]) == len(ctx["acts"]) and ctx["max"] == max(ctx["acts"])
    assert card["logit_effects"]["up"] and {"token", "value"} == set(card["logit_effects"]["up"][0])


def test_provenance_graph_json(client, server_demo):
    L, f = server_demo.trigger_layer, server_demo.trigger_features[0]
    g = client.get("/api/provenance", params={"layer": L, "feature": f, "depth": 2}).json()
    assert g["nodes"] and g["edges"] and g["meta"]["prompt"] == server_demo.prompt


def test_provenance_in_circuit_tracer_format_has_the_schema_fields(client, server_demo):
    from tuiwb.provenance.circuit_tracer import schema_problems

    L, f = server_demo.trigger_layer, server_demo.trigger_features[0]
    r = client.get("/api/provenance", params={"layer": L, "feature": f, "format": "circuit-tracer"})
    assert r.status_code == 200
    g = r.json()
    assert schema_problems(g) == [] and g["nodes"] and g["links"] and g["metadata"]["prompt"] == server_demo.prompt


def test_add_and_remove_a_patch(client, server_session, server_demo):
    L = server_demo.trigger_layer
    row = client.post("/api/patches", json={"name": "mine", "layer": L, "features": [1, 2], "mode": "scale",
                                            "alpha": 0.5}).json()
    assert row == {**row, "name": "mine", "kind": "hook", "layer": L, "features": [1, 2], "mode": "scale=0.5",
                   "on": False}
    assert "mine" in [p.name for p in server_session.patches]
    assert client.delete("/api/patches/mine").json() == {"removed": "mine"}
    assert "mine" not in [p.name for p in server_session.patches]


def test_bad_requests_get_one_line_4xx(client, server_demo):
    L = server_demo.trigger_layer
    cases = [
        client.get("/api/features", params={"layer": 99}),
        client.get("/api/features", params={"sort": "sideways"}),
        client.get(f"/api/features/{L}/999999"),
        client.get("/api/provenance", params={"layer": L, "feature": 0, "format": "svg"}),
        client.get("/api/provenance", params={"layer": "x", "feature": 0}),
        client.post("/api/patches", json={"layer": L, "features": [99999]}),
        client.post("/api/patches", json={"layer": L, "features": []}),
        client.post("/api/patches", json={"layer": L, "features": [1], "mode": "scale"}),
        client.delete("/api/patches/nosuch"),
        client.post("/api/logits", json={"prompt": 3}),
    ]
    for r in cases:
        assert 400 <= r.status_code < 500, (r.status_code, r.text)
        detail = r.json()["detail"]
        assert isinstance(detail, str) and detail and "\n" not in detail and "Traceback" not in detail


def test_openapi_lists_the_routes(client):
    paths = client.get("/openapi.json").json()["paths"]
    for p in ("/api/state", "/api/features", "/api/features/{layer}/{feature}", "/api/logits", "/api/provenance",
              "/api/patches", "/api/patches/{name}"):
        assert p in paths
