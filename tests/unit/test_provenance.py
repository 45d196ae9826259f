"""Provenance on a tiny random Llama with random SAEs: graph shape, the attribution maths checked
against independent autograd/ablation runs, IG completeness, the static view, errors, CLI, rendering."""

from __future__ import annotations

import contextlib
import json

import pytest
import torch
from factories import make_sae, save_saes
from tiny_models import make_tiny_checkpoint

from tuiwb.sae.io import save_sae
from tuiwb.errors import TuiwbError
from tuiwb.model.loading import load_model
from tuiwb.provenance.attribution import Target, attribute
from tuiwb.features.cache import cached_stats_by_layer as load_label_stats
from tuiwb.provenance.graph import build_graph, static_graph
from tuiwb.provenance.render import render_tree, tree_lines
from tuiwb.provenance.attribution import EMBED
from tuiwb.sae.model import SAE

PROMPT = "the cat sees the red ball in the park"
D, D_SAE, N_LAYERS = 32, 96, 3


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = make_tiny_checkpoint(tmp_path_factory.mktemp("llama"), "llama", n_layers=N_LAYERS, d_model=D)
    return load_model(str(path))


def _sae(layer: int, arch: str = "relu", seed: int = 0) -> SAE:
    """``make_sae`` (32 → 96) with a small random decoder bias."""
    sae = make_sae(layer, D, D_SAE, arch, k=12, seed=100 * seed + layer)
    with torch.no_grad():
        sae.b_dec.normal_(0, 0.01, generator=torch.Generator().manual_seed(layer))
    return sae


@pytest.fixture(scope="module")
def saes():
    return {L: _sae(L) for L in range(N_LAYERS)}


def _resid(loaded, ids, layer, splice=None):
    """Residual after ``layer``, optionally with ``splice(h) -> h'`` replacing block ``splice[0]``'s output."""
    out = {}
    handles = []
    if splice is not None:
        up, fn = splice
        handles.append(loaded.block(up).register_forward_hook(lambda m, a, o: fn(o)))
    handles.append(loaded.block(layer).register_forward_hook(lambda m, a, o: out.setdefault("h", o)))
    try:
        loaded.model(input_ids=torch.tensor([ids]), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return out["h"][0]  # [T, d]


@contextlib.contextmanager
def _frozen_norms(loaded, ids):
    """Test-side re-implementation of frozen norms: every LlamaRMSNorm divides by the RMS its input
    had on the real prompt (recorded by one forward), instead of the live one."""
    norms = [m for m in loaded.model.modules() if type(m).__name__ == "LlamaRMSNorm"]
    rms = {}

    def record(m, args, out):
        rms[m] = torch.rsqrt(args[0].pow(2).mean(-1, keepdim=True) + m.variance_epsilon).detach()  # [1, T, 1]

    handles = [m.register_forward_hook(record) for m in norms]
    with torch.no_grad():
        loaded.model(input_ids=torch.tensor([ids]))
    for h in handles:
        h.remove()
    handles = [m.register_forward_hook(lambda m, args, out: m.weight * (args[0] * rms[m])) for m in norms]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _maybe_frozen(loaded, ids, freeze):
    return _frozen_norms(loaded, ids) if freeze else contextlib.nullcontext()


def _firing_target(loaded, sae, ids, layer):
    with torch.no_grad():
        acts = sae.encode(_resid(loaded, ids, layer))  # [T, d_sae]
    return int(acts[-1].argmax())


def test_graph_shape_and_fields(tiny, saes):
    ids = tiny.encode(PROMPT)
    f = _firing_target(tiny, saes[2], ids, 2)
    g = build_graph(tiny, saes, 2, f, PROMPT, depth=2, top=4)
    assert g.root == f"L2/F{f}" and g.nodes[0].id == g.root
    root = g.node(g.root)
    assert root.position == len(ids) - 1 and root.token == tiny.token_str(ids[-1]) and root.activation > 0
    node_ids = [n.id for n in g.nodes]
    assert len(node_ids) == len(set(node_ids))
    by_id = {n.id: n for n in g.nodes}
    for e in g.edges:
        assert e.source in by_id and e.target in by_id
        src, dst = by_id[e.source], by_id[e.target]
        assert src.layer == dst.layer - 1
        if src.kind == "feature":
            assert src.position <= dst.position
            assert src.token == tiny.token_str(ids[src.position])
            assert src.id.startswith(f"L{src.layer}/F{src.feature}")
    expanded = [n for n in g.nodes if n.level < 2 and n.kind == "feature"]
    assert {n.layer for n in g.nodes} == {0, 1, 2}
    for n in expanded:
        kids = g.children(n.id)
        assert 1 <= len(kids) <= 4 + 1
        assert kids[-1][1].id == f"L{n.layer - 1}/err"  # every expanded node shows its error node, last
        weights = [abs(e.weight) for e, c in kids if c.kind == "feature"]
        assert weights == sorted(weights, reverse=True)
        assert n.attr_features is not None
    assert {n.id for n in g.nodes if n.kind == "error"} == {"L1/err", "L0/err"}
    js = json.loads(g.dumps())
    assert set(js) >= {"nodes", "edges"}
    assert {"id", "layer", "feature", "position", "token", "activation", "label"} <= set(js["nodes"][0])
    assert set(js["edges"][0]) == {"source", "target", "weight"}


@pytest.mark.parametrize("freeze", [False, True])
def test_grad_matches_spliced_leaf_autograd(tiny, saes, freeze):
    """grad × act equals the gradient w.r.t. SAE codes and error spliced in as leaves (the textbook way),
    through the real model or through the model with its norms' denominators frozen."""
    ids = tiny.encode(PROMPT)
    f = _firing_target(tiny, saes[2], ids, 2)
    [a] = attribute(tiny, saes, ids, 2, [Target(f, len(ids) - 1)], 1, freeze_norms=freeze)
    sae1, sae2 = saes[1], saes[2]
    with torch.no_grad():
        h1 = _resid(tiny, ids, 1)
        acts = sae1.encode(h1)
        err = h1 - sae1.decode(acts)
    acts_leaf = acts.clone().requires_grad_(True)
    err_leaf = err.clone().requires_grad_(True)

    def splice(o):
        spliced = sae1.decode(acts_leaf) + err_leaf  # [T, d]
        return torch.cat([o[:, :1], spliced[1:].unsqueeze(0)], 1)  # BOS kept fixed

    with _maybe_frozen(tiny, ids, freeze):
        h2 = _resid(tiny, ids, 2, (1, splice))
    t = sae2.encode(h2)[-1, f]
    ga, ge = torch.autograd.grad(t, [acts_leaf, err_leaf])
    assert a.value == pytest.approx(float(t.detach()), rel=1e-5)
    want = (acts * ga)[1:]
    assert torch.allclose(a.features[1:], want, atol=1e-6, rtol=1e-4)
    assert torch.allclose(a.error[1:], (err * ge).sum(-1)[1:], atol=1e-6, rtol=1e-4)
    assert a.features[0].abs().sum() == 0 and a.error[0] == 0  # BOS is not attributed
    per_pos = (a.features.sum(1) + a.error)[1:-1].abs().max()  # positions before the target
    if freeze:  # attention-mediated contributions show up
        assert per_pos >= 0.02 * a.value
    else:  # norms are scale-invariant: with live denominators each position cancels (up to the norm's eps)
        assert per_pos <= 0.01 * a.value


def test_batched_targets_match_one_at_a_time(tiny, saes):
    ids = tiny.encode(PROMPT)
    targets = [Target(3, 5), Target(7, len(ids) - 1), Target(11, 2)]
    together = attribute(tiny, saes, ids, 2, targets, 1)
    for t, a in zip(targets, together):
        [alone] = attribute(tiny, saes, ids, 2, [t], 1)
        assert torch.allclose(a.features, alone.features, atol=1e-6)
        assert torch.allclose(a.error, alone.error, atol=1e-6)
        assert a.features[t.pos + 1:].abs().sum() == 0  # nothing after the target's position


@pytest.mark.parametrize("arch,freeze", [("relu", True), ("topk", True), ("relu", False)])
def test_ig_completeness_against_a_real_baseline_run(tiny, arch, freeze):
    saes = {L: _sae(L, arch, seed=1) for L in range(N_LAYERS)}
    ids = tiny.encode(PROMPT)
    f = _firing_target(tiny, saes[2], ids, 2)
    [a] = attribute(tiny, saes, ids, 2, [Target(f, len(ids) - 1)], 1, method="ig", steps=32, freeze_norms=freeze)
    # The baseline run, done by hand: every non-BOS position of layer 1's output replaced by decode(0).
    b_dec = saes[1].b_dec.detach()
    with torch.no_grad(), _maybe_frozen(tiny, ids, freeze):
        h2 = _resid(tiny, ids, 2, (1, lambda o: torch.cat([o[:, :1], b_dec.expand(1, len(ids) - 1, D)], 1)))
        # TopK targets hold their selection at the real prompt's (documented): relu(pre-activation).
        base = float(torch.relu(saes[2].pre_acts(h2)[-1, f]))
        real = float(saes[2].encode(_resid(tiny, ids, 2))[-1, f])
    assert a.baseline == pytest.approx(base, abs=1e-6)
    assert a.value == pytest.approx(real, rel=1e-5)
    assert real - base != pytest.approx(0.0, abs=1e-4)
    assert a.total == pytest.approx(real - base, rel=0.05)
    g = build_graph(tiny, saes, 2, f, PROMPT, method="ig", depth=2, top=3, freeze_norms=freeze)
    for n in g.nodes:
        if n.kind == "feature" and n.level < 2:
            err = next(e.weight for e, c in g.children(n.id) if c.kind == "error")
            assert n.attr_features + err == pytest.approx(n.activation - n.baseline, rel=0.05, abs=1e-4)


def test_grad_sign_agrees_with_single_feature_ablation(tiny, saes):
    ids = tiny.encode(PROMPT)
    f = _firing_target(tiny, saes[2], ids, 2)
    g = build_graph(tiny, saes, 2, f, PROMPT, depth=1, top=3)
    sae1 = saes[1]
    with torch.no_grad():
        real = float(saes[2].encode(_resid(tiny, ids, 2))[-1, f])
        checked = 0
        for edge, child in g.children(g.root):
            if child.kind != "feature":
                continue
            q, d = child.position, child.activation * sae1.W_dec[child.feature]

            def ablate(o, q=q, d=d):
                o = o.clone()
                o[0, q] -= d
                return o

            ablated = float(saes[2].encode(_resid(tiny, ids, 2, (1, ablate)))[-1, f])
            effect = real - ablated  # what the feature added
            assert effect * edge.weight > 0, (child.id, edge.weight, effect)
            checked += 1
    assert checked == 3


def test_feature_at_several_positions_gets_position_suffixes(tiny, saes):
    prompt = "the the the the the the"
    ids = tiny.encode(prompt)
    g = build_graph(tiny, saes, 2, _firing_target(tiny, saes[2], ids, 2), prompt, depth=1, top=60)
    seen: dict[tuple[int, int], set] = {}
    for n in g.nodes:
        if n.kind == "feature":
            seen.setdefault((n.layer, n.feature), set()).add(n.position)
    multi = {k for k, v in seen.items() if len(v) > 1}
    assert multi, "expected some feature kept at several positions"
    for n in g.nodes:
        if n.kind != "feature":
            continue
        if (n.layer, n.feature) in multi:
            assert n.id == f"L{n.layer}/F{n.feature}@{n.position}"
        else:
            assert n.id == f"L{n.layer}/F{n.feature}"
    assert len({n.id for n in g.nodes}) == len(g.nodes)


def test_threshold_prunes_features_but_keeps_the_error_node(tiny, saes):
    g = build_graph(tiny, saes, 2, 5, PROMPT, depth=2, threshold=1e9)
    assert [n.id for n in g.nodes] == ["L2/F5", "L1/err"]
    assert [e.source for e in g.edges] == ["L1/err"]


def test_pos_selects_the_target_position(tiny, saes):
    ids = tiny.encode(PROMPT)
    g = build_graph(tiny, saes, 2, 5, PROMPT, pos=3, depth=1, top=50)
    assert g.node(g.root).position == 3 and g.node(g.root).token == tiny.token_str(ids[3])
    assert all(n.position <= 3 for n in g.nodes if n.kind == "feature")
    assert build_graph(tiny, saes, 2, 5, PROMPT, pos=-1, depth=1).node("L2/F5").position == len(ids) - 1


def test_static_view_uses_virtual_weights(saes):
    g = static_graph(saes, 2, 7, depth=2, top=3)
    virt = saes[2].W_enc[:, 7].detach() @ saes[1].W_dec.detach().t()  # [d_sae]
    top3 = virt.abs().topk(3).indices.tolist()
    kids = g.children("L2/F7")
    assert [c.feature for _, c in kids] == top3
    for e, c in kids:
        assert e.weight == pytest.approx(float(virt[c.feature]), rel=1e-5)
        assert c.position is None and c.activation is None
        assert len(g.children(c.id)) == 3 and all(n.layer == 0 for _, n in g.children(c.id))
    assert not [n for n in g.nodes if n.kind == "error"]


def test_errors_are_one_line_and_actionable(tiny, saes):
    partial = {2: saes[2], 0: saes[0]}
    with pytest.raises(TuiwbError, match=r"no SAE at upstream layer 1 \(SAEs exist at layers: 0, 2\)"):
        build_graph(tiny, partial, 2, 0, PROMPT)
    with pytest.raises(TuiwbError, match=rf"feature {D_SAE} does not exist.*0\.\.{D_SAE - 1}"):
        build_graph(tiny, saes, 2, D_SAE, PROMPT)
    n = len(tiny.encode(PROMPT))
    with pytest.raises(TuiwbError, match=rf"position {n} is out of range.*{n} tokens"):
        build_graph(tiny, saes, 2, 0, PROMPT, pos=n)
    with pytest.raises(TuiwbError, match="past the token embeddings: use `depth=3` or less"):
        build_graph(tiny, saes, 2, 0, PROMPT, depth=4)
    with pytest.raises(TuiwbError, match="past layer 0: use `depth=2` or less"):
        build_graph(tiny, saes, 2, 0, None, depth=3)  # the static view has no embedding level
    with pytest.raises(TuiwbError, match="`method`"):
        build_graph(tiny, saes, 2, 0, PROMPT, method="saliency")
    with pytest.raises(TuiwbError, match="`pos` needs a `prompt`"):
        build_graph(tiny, saes, 2, 0, None, pos=1)


def test_leaves_no_hooks_or_param_grads_and_works_under_inference_mode(tiny, saes):
    with torch.inference_mode():
        g = build_graph(tiny, saes, 2, 5, PROMPT, depth=2, method="ig", steps=4)
    assert len(g.nodes) > 2
    assert all(not b._forward_hooks for b in tiny.blocks)
    assert all(p.grad is None for p in tiny.model.parameters())


@pytest.mark.parametrize("freeze", [False, True])
def test_embedding_level_is_grad_times_input(tiny, saes, freeze):
    ids = tiny.encode(PROMPT)
    f = _firing_target(tiny, saes[0], ids, 0)
    [a] = attribute(tiny, saes, ids, 0, [Target(f, len(ids) - 1)], EMBED, freeze_norms=freeze)
    box = {}

    def leaf(m, args, out):
        box["e"] = out.detach().requires_grad_(True)
        return box["e"]

    handle = tiny.embed.register_forward_hook(leaf)
    try:
        with _maybe_frozen(tiny, ids, freeze):
            h0 = _resid(tiny, ids, 0)
    finally:
        handle.remove()
    (g,) = torch.autograd.grad(saes[0].encode(h0)[-1, f], box["e"])
    want = (g[0] * box["e"][0].detach()).sum(-1)  # [T]
    assert a.features.shape == (len(ids), 1)
    assert torch.allclose(a.features[1:, 0], want[1:], atol=1e-6, rtol=1e-4)
    assert a.features[0, 0] == 0 and a.error.abs().sum() == 0


def test_embedding_level_ig_completeness(tiny, saes):
    ids = tiny.encode(PROMPT)
    f = _firing_target(tiny, saes[0], ids, 0)
    [a] = attribute(tiny, saes, ids, 0, [Target(f, len(ids) - 1)], EMBED, method="ig", steps=32)
    with torch.no_grad(), _frozen_norms(tiny, ids):  # records the real prompt's norms first
        handle = tiny.embed.register_forward_hook(lambda m, args, out: torch.cat([out[:, :1], 0 * out[:, 1:]], 1))
        try:
            base = float(torch.relu(saes[0].pre_acts(_resid(tiny, ids, 0))[-1, f]))
        finally:
            handle.remove()
    assert a.baseline == pytest.approx(base, abs=1e-6)
    assert a.total == pytest.approx(a.value - base, rel=0.05)


def test_graph_below_layer_0_ends_at_the_token_embeddings(tiny, saes):
    ids = tiny.encode(PROMPT)
    g = build_graph(tiny, saes, 2, _firing_target(tiny, saes[2], ids, 2), PROMPT, depth=3, top=3)
    emb = [n for n in g.nodes if n.kind == "embedding"]
    assert emb and all(n.level == 3 and n.layer == -1 for n in emb)
    for n in emb:
        assert n.id == f"emb@{n.position}" and n.feature == ids[n.position] and n.token == tiny.token_str(n.feature)
        assert n.activation > 0 and not g.children(n.id)
    assert not any(n.id.startswith("L-1") for n in g.nodes)  # no error node below the SAEs
    for n in g.nodes:
        if n.layer == 0 and n.kind == "feature":
            assert all(c.kind == "embedding" for _, c in g.children(n.id))
    assert "emb@" in g.to_ascii()


class _Stats:
    """Just the label interface of ``FeatureStats`` (top tokens per feature)."""

    d_sae = D_SAE

    def top_tokens(self, f, n=None):
        from tuiwb.features.stats import TokenValue

        return [TokenValue(f"tok{f}a", 0.5), TokenValue(f"tok{f}b", 0.3)][:n]


def test_labels_come_from_stats_else_the_token(tiny, saes):
    g = build_graph(tiny, saes, 2, 5, PROMPT, depth=2, stats={1: _Stats()})
    for n in g.nodes:
        if n.kind == "feature" and n.layer == 1:
            assert n.label == f"tok{n.feature}a, tok{n.feature}b"
        elif n.kind == "feature":
            assert n.label == n.token


def test_tree_rendering(tiny, saes):
    g = build_graph(tiny, saes, 2, 5, PROMPT, depth=2, top=2)
    lines = tree_lines(g)
    text = "\n".join(lines)
    assert lines[0].startswith("L2/F5")
    for n in g.nodes:
        assert n.id in text
    assert "L1/err (SAE error)" in text and "└── " in text
    assert g.to_ascii() == text
    assert render_tree(g).label is not None
    assert not any("\x1b[" in line for line in lines)


def _write_stats(sae_dir, d_sae):
    """Real ``FeatureStats`` (top tokens: ids 5, 6) cached in ``sae_dir`` with the real cache key."""
    from types import SimpleNamespace

    import numpy as np

    from tuiwb.features.stats import FeatureStats, StatsConfig
    from tuiwb.features.cache import cache_key

    z = np.zeros(d_sae)
    stats = FeatureStats(layer=1, n_tokens=10, density=z + 0.1, mean_act=z + 1, max_act=z + 2, total_act=z + 3,
                         hist=np.zeros(32), top_rows=-np.ones((d_sae, 1), dtype=np.int64),
                         top_acts=np.zeros((d_sae, 1)),
                         tok_ids=np.tile([5, 6], (d_sae, 1)), tok_sum=np.tile([2.0, 1.0], (d_sae, 1)),
                         tok_fires=np.ones((d_sae, 2)), token_counts=np.ones(8), vocab={5: "cat", 6: "dog"})
    stats.save(sae_dir, cache_key(sae_dir, SimpleNamespace(manifest={}), StatsConfig()))


def test_label_stats_from_disk_only_when_fresh(tmp_path, tiny, saes):
    root = save_saes(tmp_path / "saes", saes)
    assert load_label_stats(root, [0, 1, 2]) == {}
    _write_stats(root / "layer_1", D_SAE)
    stats = load_label_stats(root, [0, 1, 2])
    assert list(stats) == [1]
    g = build_graph(tiny, saes, 2, 5, PROMPT, depth=2, stats=stats)
    assert {n.label for n in g.nodes if n.kind == "feature" and n.layer == 1} == {"cat, dog"}
    save_sae(saes[1], root / "layer_1")  # retrained: the cached stats no longer describe it
    assert load_label_stats(root, [0, 1, 2]) == {}


def test_session_provenance_is_build_graph(tiny, saes):
    from tuiwb.session.session import Session

    session = Session(tiny, saes)
    a = session.provenance(2, 5, PROMPT, depth=2, top=3)
    b = build_graph(tiny, saes, 2, 5, PROMPT, depth=2, top=3)
    assert a.to_json() == b.to_json()
    assert session.provenance(2, 5, None).method == "static"


def test_cli_json_and_tree(tiny, saes, tmp_path, cli, cli_error):
    root = save_saes(tmp_path / "saes", saes)
    argv = ["provenance", "--model", tiny.model_id, "--saes", str(root), "--layer", "2", "--feature", "5"]
    code, out, _ = cli(*argv, "--prompt", PROMPT, "--depth", "2", "--top", "3", "--json")
    assert code == 0
    out = json.loads(out)
    want = build_graph(tiny, saes, 2, 5, PROMPT, depth=2, top=3).to_json()
    assert [n["id"] for n in out["nodes"]] == [n["id"] for n in want["nodes"]]
    assert [e["weight"] for e in out["edges"]] == pytest.approx([e["weight"] for e in want["edges"]], rel=1e-4)
    code, out, _ = cli(*argv, "--prompt", PROMPT, "--depth", "1", "--live-norms", "--json")
    assert code == 0
    live = json.loads(out)
    want = build_graph(tiny, saes, 2, 5, PROMPT, depth=1, freeze_norms=False).to_json()
    frozen = build_graph(tiny, saes, 2, 5, PROMPT, depth=1).to_json()
    assert [e["weight"] for e in frozen["edges"]] != pytest.approx([e["weight"] for e in want["edges"]], rel=1e-4)
    assert [e["weight"] for e in live["edges"]] == pytest.approx([e["weight"] for e in want["edges"]], rel=1e-4)
    code, out, _ = cli(*argv, "--prompt", PROMPT, "--method", "ig", "--steps", "8")
    assert code == 0 and out.splitlines()[0].startswith("L2/F5 @")
    code, out, _ = cli(*argv, "--json")  # no prompt: static view
    assert code == 0 and json.loads(out)["meta"]["method"] == "static"
    code, _, err = cli(*argv[:-4], "--layer", "2", "--feature", "5", "--prompt", PROMPT, "--depth", "4")
    assert code == 2 and "--depth 3 or less" in err
    (root / "layer_1" / "cfg.json").unlink()
    for f in (root / "layer_1").iterdir():
        f.unlink()
    (root / "layer_1").rmdir()
    assert "no SAE at upstream layer 1 (SAEs exist at layers: 0, 2)" in cli_error(*argv, "--prompt", PROMPT)


def test_cli_names_the_flags_the_library_calls_parameters(tiny, saes, tmp_path, cli_error):
    root = save_saes(tmp_path / "saes", saes)
    base = ["provenance", "--model", tiny.model_id, "--saes", str(root), "--layer", "2", "--feature", "5"]
    for extra, shown in ((["--depth", "4"], "use --depth 3 or less"), (["--pos", "1"], "--pos needs a --prompt"),
                         (["--top", "0"], "--top must be at least 1")):
        err = cli_error(*base, *extra)
        assert shown in err and "`" not in err, err
