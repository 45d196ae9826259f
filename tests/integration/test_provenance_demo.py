"""Provenance on the full demo model (SAEs at every layer, the ``demo_saes`` fixture).

The demo model moves its trigger to the sentence's final '.' inside block 0 (patching the trigger
position's residual with a clean one at any layer ≥ 0 leaves the layer-1/2 detector unchanged), so
the trigger-detector's provenance reaches the trigger token's position at the token-embedding level:
from layer 1, depth 2 = the layer-0 SAE, then the embeddings.
"""

import json

import pytest
import torch

from tuiwb.demo.corpus import TRIGGER
from tuiwb.demo.model import load_prompts, payload_first_token

TARGET_LAYER = 1
N_CONTRAST = 32


@pytest.fixture(scope="module")
def demo(demo_saes):
    from tuiwb.model.loading import load_model
    from tuiwb.sae.io import load_saes

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # shared CPUs: two threads per process thrash
    try:
        yield load_model(str(demo_saes.model)), load_saes(demo_saes.saes), demo_saes
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def detector(demo):
    """The top of ``features --contrast --target`` (causal contrast search) on the layer-1 SAE."""
    from tuiwb.features.contrast import find_feature_set

    loaded, saes, lab = demo
    trig = load_prompts(lab.model, "trigger")[:N_CONTRAST]
    clean = load_prompts(lab.model, "clean")[:N_CONTRAST]
    res = find_feature_set(loaded, saes[TARGET_LAYER], trig, payload_first_token(), clean)
    assert res.confirmed and res.p_after < 0.5 * res.p_before, (res.p_before, res.p_after)
    return int(res.hits.ids[0])


def _heldout_trigger_prompts(lab, n=3):
    return load_prompts(lab.model, "trigger")[N_CONTRAST:N_CONTRAST + n]


@pytest.mark.slow
def test_detector_provenance_reaches_the_trigger_position(demo, detector, cli):
    loaded, saes, lab = demo
    for prompt in _heldout_trigger_prompts(lab):
        argv = ["provenance", "--model", str(lab.model), "--saes", str(lab.saes), "--layer", str(TARGET_LAYER),
                "--feature", str(detector), "--prompt", prompt, "--json"]  # default depth 2, last token
        code, out, err = cli(*argv)
        assert code == 0, err
        graph = json.loads(out)
        tokens = graph["meta"]["tokens"]
        trigger_pos = [t.strip() for t in tokens].index(TRIGGER)
        root = next(n for n in graph["nodes"] if n["id"] == graph["root"])
        assert root["position"] == len(tokens) - 1 != trigger_pos
        assert root["activation"] > 0
        reached = [n for n in graph["nodes"] if n["layer"] < TARGET_LAYER and n["position"] == trigger_pos]
        assert reached, f"no upstream node at the trigger position {trigger_pos} in {prompt!r}"
        assert all(n["token"].strip() == TRIGGER for n in reached)
        # The trigger is among the strongest sources of the detector's strongest layer-0 parent.
        parent = max((e for e in graph["edges"] if e["target"] == graph["root"] and "/F" in e["source"]),
                     key=lambda e: e["weight"])["source"]
        sources = sorted((e for e in graph["edges"] if e["target"] == parent), key=lambda e: -abs(e["weight"]))
        assert sources[0]["source"] == f"emb@{trigger_pos}", sources[:3]


def _ablated(loaded, saes, ids, node, child):
    """``node``'s activation with ``child``'s feature removed at its position (the real model)."""
    from tuiwb.provenance.attribution import real_run

    d = child.activation * saes[child.layer].W_dec[child.feature].detach()

    def hook(module, args, out):
        out = out.clone()
        out[0, child.position] -= d
        return out

    handle = loaded.block(child.layer).register_forward_hook(hook)
    try:
        h = real_run(loaded, ids, [node.layer], freeze_norms=False).resid[node.layer]
    finally:
        handle.remove()
    with torch.no_grad():
        return float(saes[node.layer].encode(h)[node.position, node.feature])


@pytest.mark.slow
def test_grad_sign_agrees_with_single_feature_ablation(demo, detector):
    from tuiwb.provenance.graph import build_graph
    from tuiwb.provenance.attribution import real_run

    loaded, saes, lab = demo
    prompt = _heldout_trigger_prompts(lab, 1)[0]
    ids = loaded.encode(prompt)
    with torch.no_grad():
        top3 = int(saes[3].encode(real_run(loaded, ids, [3], freeze_norms=False).resid[3])[-1].argmax())
    graphs = [build_graph(loaded, saes, TARGET_LAYER, detector, prompt, depth=1),
              build_graph(loaded, saes, 3, top3, prompt, depth=2)]
    checked = 0
    for g in graphs:
        nodes = [g.node(g.root)] + [c for _, c in g.children(g.root) if c.kind == "feature"][:2]
        for node in nodes:
            for edge, child in g.children(node.id)[:3]:
                if child.kind != "feature":
                    continue
                effect = node.activation - _ablated(loaded, saes, ids, node, child)
                assert edge.weight * effect > 0, (node.id, child.id, edge.weight, effect)
                checked += 1
    assert checked >= 10


@pytest.mark.slow
def test_ig_completeness_on_the_demo_model(demo, detector):
    from tuiwb.provenance.graph import build_graph

    loaded, saes, lab = demo
    prompt = _heldout_trigger_prompts(lab, 1)[0]
    # Live norms: SAE level only — IG from a zero *embedding* through a live norm is dominated by the
    # norm's ε near the baseline and needs many more steps (documented in tuiwb.provenance_attr).
    for freeze, depth in ((True, 2), (False, 1)):
        g = build_graph(loaded, saes, TARGET_LAYER, detector, prompt, depth=depth, method="ig", freeze_norms=freeze)
        expanded = [n for n in g.nodes if n.attr_features is not None]
        assert len(expanded) >= (3 if depth == 2 else 1)
        for n in expanded:
            err = sum(e.weight for e, c in g.children(n.id) if c.kind == "error")
            assert n.attr_features + err == pytest.approx(n.activation - n.baseline, rel=0.05), n.id
    # The unfrozen baseline, run by hand: layer 0's output replaced by decode(0) = b_dec after BOS.
    ids = loaded.encode(prompt)
    b_dec = saes[0].b_dec.detach()
    handle = loaded.block(0).register_forward_hook(
        lambda m, a, out: torch.cat([out[:, :1], b_dec.expand(1, len(ids) - 1, -1)], 1))
    try:
        from tuiwb.provenance.attribution import real_run

        h = real_run(loaded, ids, [TARGET_LAYER], freeze_norms=False).resid[TARGET_LAYER]
    finally:
        handle.remove()
    with torch.no_grad():
        base = float(torch.relu(saes[TARGET_LAYER].pre_acts(h)[-1, detector]))  # TopK: selection held
    root = g.node(g.root)
    assert root.baseline == pytest.approx(base, abs=1e-4)
