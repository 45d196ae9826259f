"""circuit-tracer's graph JSON: ours carries every field its schema requires, round-trips, and a file
written the way circuit-tracer writes one (by hand, from its schema) draws with ``--show``."""

from __future__ import annotations

import json

import pytest
from factories import make_sae, save_saes
from tiny_models import make_tiny_checkpoint

from tuiwb.model.loading import load_model
from tuiwb.provenance.circuit_tracer import (REQUIRED, from_circuit_tracer, load_graph, schema_problems,
                                             to_circuit_tracer)
from tuiwb.provenance.graph import ProvenanceGraph, build_graph, static_graph
from tuiwb.provenance.render import tree_lines

PROMPT = "the cat sees the red ball"
D, D_SAE, N_LAYERS = 32, 96, 3


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    path = make_tiny_checkpoint(tmp_path_factory.mktemp("llama"), "llama", n_layers=N_LAYERS, d_model=D)
    loaded = load_model(str(path))
    saes = {L: make_sae(L, D, D_SAE, "relu", seed=L) for L in range(N_LAYERS)}
    return loaded, saes


@pytest.fixture(scope="module")
def graph(lab):
    loaded, saes = lab
    # Depth 3 from layer 2 reaches the embeddings: all three node kinds are in play.
    return build_graph(loaded, saes, 2, 5, PROMPT, depth=3, top=3)


# A graph the way circuit-tracer writes one: a target logit, two transcoder features, an error node and
# an embedding; feature numbers are its global (Cantor-paired) ids, layers are strings, "E" is the embedding.
HAND_WRITTEN = {
    "metadata": {"slug": "hand", "scan": "gemma-2-2b", "transcoder_list": [], "prompt": "the cat",
                 "prompt_tokens": ["<bos>", "the", " cat"], "schema_version": 1, "node_threshold": 0.8},
    "qParams": {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""},
    "nodes": [
        {"node_id": "27_1234_2", "feature": 1234, "layer": "27", "ctx_idx": 2, "feature_type": "logit",
         "jsNodeId": "L_1234-2", "clerp": 'Output " sat" (p=0.412)', "token_prob": 0.412, "is_target_logit": True},
        {"node_id": "3_77_2", "feature": 3277, "layer": "3", "ctx_idx": 2, "feature_type": "cross layer transcoder",
         "jsNodeId": "3_77-0", "clerp": "animal nouns", "influence": 0.5, "activation": 4.5},
        {"node_id": "1_9_1", "feature": 99, "layer": "1", "ctx_idx": 1, "feature_type": "cross layer transcoder",
         "jsNodeId": "1_9-0", "clerp": "", "influence": 0.2, "activation": 1.25},
        {"node_id": "3_-1_2", "feature": -1, "layer": "3", "ctx_idx": 2, "feature_type": "mlp reconstruction error",
         "jsNodeId": "3_-1-2", "influence": 0.1},
        {"node_id": "E_651_2", "feature": 2, "layer": "E", "ctx_idx": 2, "feature_type": "embedding",
         "jsNodeId": "E_651-2"},
    ],
    "links": [
        {"source": "3_77_2", "target": "27_1234_2", "weight": 2.5},
        {"source": "3_-1_2", "target": "27_1234_2", "weight": -0.5},
        {"source": "1_9_1", "target": "3_77_2", "weight": 1.5},
        {"source": "E_651_2", "target": "3_77_2", "weight": 0.75},
    ],
}


def test_ours_has_every_field_the_schema_requires(graph):
    data = to_circuit_tracer(graph, model="tiny-llama")
    assert schema_problems(data) == []
    for obj, fields in (("metadata", REQUIRED["metadata"]), ("qParams", REQUIRED["qParams"])):
        assert set(fields) <= data[obj].keys()
    assert {"info", "pruning_settings", "schema_version"} <= data["metadata"].keys()
    assert data["metadata"]["prompt_tokens"] == list(graph.tokens)
    ids = [n["node_id"] for n in data["nodes"]]
    assert len(ids) == len(set(ids)) == len(graph.nodes)
    assert all(link["source"] in ids and link["target"] in ids for link in data["links"])
    assert len(data["links"]) == len(graph.edges)
    types = {n["tuiwb"]["kind"]: n["feature_type"] for n in data["nodes"]}
    assert types == {"feature": "cross layer transcoder", "error": "mlp reconstruction error",
                     "embedding": "embedding"}
    for n in data["nodes"]:
        assert isinstance(n["feature"], int) and isinstance(n["layer"], str) and isinstance(n["ctx_idx"], int)
        assert n["layer"] == ("E" if n["tuiwb"]["kind"] == "embedding" else str(n["tuiwb"]["layer"]))
    root = next(n for n in data["nodes"] if n["tuiwb"]["id"] == graph.root)
    assert data["qParams"]["clickedId"] == root["node_id"] and root["influence"] == 1.0
    assert all(0.0 <= n["influence"] <= 1.0 for n in data["nodes"])


def test_round_trip_keeps_nodes_and_edges(graph, lab):
    for g in (graph, static_graph(lab[1], 2, 5, depth=2, top=3)):
        back = from_circuit_tracer(json.loads(json.dumps(to_circuit_tracer(g))))
        assert back.to_json() == g.to_json()
        assert ProvenanceGraph.from_json(g.to_json()).to_json() == g.to_json()


def test_schema_problems_name_what_is_missing():
    broken = json.loads(json.dumps(HAND_WRITTEN))
    del broken["metadata"]["scan"]
    del broken["nodes"][1]["jsNodeId"]
    problems = schema_problems(broken)
    assert "metadata.scan is missing" in problems
    assert "nodes[1] lacks jsNodeId" in problems
    assert schema_problems([]) == ["the top level is not a JSON object"]


def test_a_circuit_tracer_file_reads_as_a_graph():
    g = from_circuit_tracer(HAND_WRITTEN)
    assert g.root == "27_1234_2"  # no clicked node: the target logit
    assert g.node("3_77_2").feature == 77 and g.node("3_77_2").layer == 3 and g.node("3_77_2").label == "animal nouns"
    assert g.node("3_-1_2").kind == "error" and g.node("3_-1_2").feature is None
    emb = g.node("E_651_2")
    assert (emb.kind, emb.layer, emb.position, emb.token) == ("embedding", -1, 2, " cat")
    assert [(e.source, e.weight) for e, _ in g.children("27_1234_2")] == [("3_77_2", 2.5), ("3_-1_2", -0.5)]


def test_show_draws_either_format(graph, tmp_path, cli, cli_error):
    hand = tmp_path / "hand.json"
    hand.write_text(json.dumps(HAND_WRITTEN))
    code, out, err = cli("provenance", "--show", hand)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("27_1234_2")
    assert any("+2.5" in ln and "3_77_2" in ln and "animal nouns" in ln for ln in lines)
    assert any("+1.5" in ln and "1_9_1" in ln for ln in lines)  # two levels deep
    assert any("-0.5" in ln and "3_-1_2" in ln for ln in lines)

    ours = tmp_path / "ours.json"
    ours.write_text(json.dumps(to_circuit_tracer(graph)))
    native = tmp_path / "native.json"
    native.write_text(graph.dumps())
    for path in (ours, native):
        assert tree_lines(load_graph(path)) == tree_lines(graph)
        code, out, _ = cli("provenance", "--show", path)
        assert code == 0 and out.split()[0] == graph.root
        assert all(n.id in out for n in graph.nodes)
    code, out, _ = cli("provenance", "--show", hand, "--json", "--format", "circuit-tracer")
    assert code == 0 and schema_problems(json.loads(out)) == []

    bad = tmp_path / "bad.json"
    bad.write_text('{"nodes": []}')
    assert "neither a tuiwb" in cli_error("provenance", "--show", bad)
    bad.write_text("not json")
    assert "is not JSON" in cli_error("provenance", "--show", bad)
    assert "does not exist" in cli_error("provenance", "--show", tmp_path / "nope.json")
    assert "missing --model, --saes, --layer, --feature" in cli_error("provenance")


def test_cli_json_format_circuit_tracer(lab, tmp_path, cli):
    loaded, saes = lab
    root = save_saes(tmp_path / "saes", saes)
    code, out, err = cli("provenance", "--model", loaded.model_id, "--saes", root, "--layer", 2, "--feature", 5,
                         "--prompt", PROMPT, "--depth", 2, "--top", 3, "--json", "--format", "circuit-tracer")
    assert code == 0, err
    data = json.loads(out)
    assert schema_problems(data) == []
    assert data["metadata"]["scan"] == loaded.model_id and data["metadata"]["prompt"] == PROMPT
