"""Feature stats against a brute-force computation, the cache, and each search mode."""

import json

import numpy as np
import pytest
import torch
from factories import make_sae, tiny_checkpoint, write_texts
from tiny_models import WORDS

from tuiwb.sae.io import save_sae
from tuiwb.errors import TuiwbError
from tuiwb.features.search import filter_density, parse_range, search_by_id, search_by_token
from tuiwb.features.stats import FeatureStats, StatsConfig
from tuiwb.features.compute import compute_feature_stats
from tuiwb.features.logit_effects import decoder_logits
from tuiwb.features.cache import load_or_compute

LAYER = 1


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A tiny llama, a small trace of its layer 1 and a random TopK SAE saved to saes/layer_1."""
    from tuiwb.model.loading import load_model
    from tuiwb.trace.store import ActivationStore
    from tuiwb.trace.config import TraceConfig
    from tuiwb.trace.tracer import trace

    root = tmp_path_factory.mktemp("features")
    model_dir = tiny_checkpoint(root / "model", n_layers=2)
    write_texts(root / "data.txt", 120, length=(5, 30), words=[w for w in WORDS if w not in (".", ",")])
    loaded = load_model(str(model_dir))
    trace(TraceConfig(data=[str(root / "data.txt")], out=str(root / "acts.parquet"), layers=[LAYER],
                      seq_len=16, store_dtype="float32"), progress=False, loaded=loaded)
    sae = make_sae(LAYER, 32, 48, "topk", model_config_hash=loaded.config_hash)
    sae_dir = save_sae(sae, root / "saes" / f"layer_{LAYER}")
    store = ActivationStore(root / "acts.parquet")
    return {"root": root, "model": model_dir, "loaded": loaded, "sae": sae, "sae_dir": sae_dir, "store": store}


@pytest.fixture(scope="module")
def brute(lab):
    """Every activation of every non-special row, computed directly."""
    store, sae = lab["store"], lab["sae"]
    rows = store.row_indices("all", exclude_special=True)
    with torch.no_grad():
        acts = sae.encode(store.read_rows(LAYER, rows)).numpy().astype(np.float64)  # [n, d_sae]
    return {"rows": rows, "acts": acts, "tok": store.token_ids(rows).astype(np.int64)}


@pytest.fixture(scope="module")
def stats(lab):
    # A small batch size so the running top-k and the token merge cross many batches.
    return compute_feature_stats(lab["sae"], lab["store"], lab["loaded"], progress=False,
                                 cfg=StatsConfig(batch_size=64, top_k=8, n_tokens=5))


def test_scalar_stats_match_brute_force(stats, brute):
    a = brute["acts"]
    fires = (a > 0).sum(0)
    assert stats.n_tokens == len(a) and stats.d_sae == a.shape[1]
    np.testing.assert_allclose(stats.density, fires / len(a))
    np.testing.assert_allclose(stats.max_act, a.max(0), rtol=1e-5)
    np.testing.assert_allclose(stats.total_act, a.sum(0), rtol=1e-5)
    mean = np.divide(a.sum(0), fires, out=np.zeros(a.shape[1]), where=fires > 0)
    np.testing.assert_allclose(stats.mean_act, mean, rtol=1e-5)
    alive = stats.density[stats.density > 0]
    expect, _ = np.histogram(np.log10(alive), bins=stats.hist_edges)
    assert stats.hist.tolist() == expect.tolist() and stats.hist.sum() == stats.d_sae - stats.n_dead


def test_top_activations_match_brute_force(stats, brute):
    a, rows = brute["acts"], brute["rows"]
    for f in range(stats.d_sae):
        order = np.argsort(-a[:, f], kind="stable")[:8]
        order = order[a[order, f] > 0]
        got = stats.top_activations(f)
        # identical contexts give tied activations, so compare values, then each row's own value
        np.testing.assert_allclose([v for _, v in got], a[order, f], rtol=1e-5)
        where = np.searchsorted(rows, [r for r, _ in got])
        np.testing.assert_allclose(a[where, f], [v for _, v in got], rtol=1e-5)
        assert len(set(where.tolist())) == len(got)


def test_top_tokens_match_brute_force(stats, brute):
    a, tok = brute["acts"], brute["tok"]
    n_vocab = tok.max() + 1
    for f in range(stats.d_sae):
        sums = np.bincount(tok, weights=a[:, f], minlength=n_vocab)
        want = [t for t in np.lexsort((np.arange(n_vocab), -sums)) if sums[t] > 0][:5]
        got = stats.top_tokens(f)
        assert [t.id for t in got] == want, f
        np.testing.assert_allclose([t.value for t in got], sums[want] / a[:, f].sum(), rtol=1e-6)
    assert stats.token_counts.tolist() == np.bincount(tok).tolist()
    assert stats.top_tokens(0)[0].token in WORDS  # decoded with the model's tokenizer


def test_logit_effects_match_the_unembedding(stats, lab):
    loaded, sae = lab["loaded"], lab["sae"]
    w_u = loaded.unembed.weight.detach()  # [vocab, d]
    gain = loaded.final_norm.weight.detach()  # [d]
    full = (sae.W_dec.detach() * gain) @ w_u.t()  # [d_sae, vocab]
    for f in (0, 7, 31):
        want = torch.argsort(full[f], descending=True)[:5].tolist()
        assert [t.id for t in stats.top_logits(f)] == want
        np.testing.assert_allclose([t.value for t in stats.top_logits(f)], full[f, want].numpy(), rtol=1e-4)
        low = torch.argsort(full[f])[:5].tolist()
        assert [t.id for t in stats.bottom_logits(f)] == low
    np.testing.assert_allclose(decoder_logits(sae, loaded, [3]).numpy()[0], full[3].numpy(), rtol=1e-4, atol=1e-6)


def test_contexts_resolve_rows_and_activations(stats, lab):
    store, sae = lab["store"], lab["sae"]
    f = int(np.argmax(stats.density))
    ctxs = stats.contexts(f, store, sae, n=3, before=4, after=2)
    assert len(ctxs) == 3
    for c, (row, act) in zip(ctxs, stats.top_activations(f, 3)):
        assert c.row == row and c.activation == pytest.approx(act)
        assert c.acts[c.focus] == pytest.approx(act, rel=1e-5)
        assert c.tokens[c.focus] == lab["loaded"].token_str(store.token_ids([row])[0])
        assert (c.seq_id, c.pos) == (store.seq_ids([row])[0], store.positions([row])[0])
        assert len(c.tokens) == len(c.acts) <= 7


def test_row_json_has_the_documented_shape(stats):
    row = stats.row(5, score=1.5)
    d = json.loads(json.dumps(row.to_json()))
    assert set(d) == {"id", "density", "max_act", "mean_act", "top_tokens", "top_logits", "score"}
    assert d["id"] == 5 and d["score"] == 1.5 and d["density"] == pytest.approx(stats.density[5])
    assert all(set(t) == {"token", "value"} for t in d["top_tokens"] + d["top_logits"])
    assert stats.row(5).to_json()["score"] is None  # NaN is not valid JSON


def test_listing_orders(stats):
    for key in ("density", "max", "mean"):
        rows = stats.listing(key, top=10)
        vals = [r.score for r in rows]
        assert vals == sorted(vals, reverse=True) and vals[0] == pytest.approx(stats.sort_values(key).max())
    assert [r.id for r in stats.listing("id", top=4)] == [0, 1, 2, 3]
    with pytest.raises(TuiwbError):
        stats.order("nope")


def test_search_by_token_fires(stats, brute, lab):
    a, tok = brute["acts"], brute["tok"]
    word = "cat"
    tid = lab["loaded"].tokenizer.convert_tokens_to_ids(word)
    hits = search_by_token(stats, word, "fires", tokenizer=lab["loaded"].tokenizer)
    assert len(hits) > 0
    occ = tok == tid
    for f, score in zip(hits.ids, hits.scores):
        assert score == pytest.approx(a[occ, f].mean(), rel=1e-6)  # mean over all occurrences
        assert stats.token_mean(f, tid) == pytest.approx(score)
        assert tid in [t.id for t in stats.top_tokens(f)]
    assert list(hits.scores) == sorted(hits.scores, reverse=True)
    # every feature with the token among its top tokens is found, and no other
    want = {f for f in range(stats.d_sae) if tid in stats.tok_ids[f]}
    assert set(hits.ids.tolist()) == want
    # without a tokenizer, the stats' own decoded vocabulary resolves the word
    assert search_by_token(stats, word).ids.tolist() == hits.ids.tolist()


def test_search_by_token_promotes(stats, lab):
    loaded, sae = lab["loaded"], lab["sae"]
    tid = loaded.tokenizer.convert_tokens_to_ids("dog")
    col = decoder_logits(sae, loaded).numpy()[:, tid]
    exact = search_by_token(stats, "dog", "promotes", sae=sae, loaded=loaded)
    assert exact.ids.tolist() == [int(i) for i in np.argsort(-col, kind="stable") if col[i] > 0]
    stored = search_by_token(stats, "dog", "promotes", tokenizer=loaded.tokenizer)  # from the top-5 lists
    assert set(stored.ids.tolist()) <= set(exact.ids.tolist())
    assert set(stored.ids.tolist()) == {f for f in range(stats.d_sae) if tid in stats.logit_ids[f]}


def test_search_by_density_and_id(stats):
    lo, hi = parse_range("0.05:0.2")
    hits = filter_density(stats, lo, hi)
    want = {f for f in range(stats.d_sae) if lo <= stats.density[f] <= hi}
    assert set(hits.ids.tolist()) == want and len(want) > 0
    assert list(hits.scores) == sorted(hits.scores, reverse=True)
    assert filter_density(stats, 0, 0).ids.tolist() == sorted(np.flatnonzero(stats.density == 0).tolist())
    by_id = search_by_id(stats, [7, 3], key="max")
    assert by_id.ids.tolist() == [7, 3] and by_id.scores[0] == pytest.approx(stats.max_act[7])
    with pytest.raises(TuiwbError, match="does not exist"):
        search_by_id(stats, [stats.d_sae])
    with pytest.raises(TuiwbError):
        parse_range("0.1")
    with pytest.raises(TuiwbError):
        search_by_token(stats, "zebra", tokenizer=None)


def test_cache_is_reused_and_invalidated(lab, monkeypatch, tmp_path):
    import shutil

    import tuiwb.features.compute as F
    from tuiwb.sae.io import load_sae
    from tuiwb.trace.store import ActivationStore

    sae_dir = tmp_path / "layer_1"
    shutil.copytree(lab["sae_dir"], sae_dir)
    store, loaded = lab["store"], lab["loaded"]
    cfg = StatsConfig(batch_size=256)
    first = load_or_compute(sae_dir, store, loaded, cfg=cfg, progress=False)
    assert (sae_dir / "features.npz").is_file() and (sae_dir / "features.json").is_file()
    with np.load(sae_dir / "features.npz", allow_pickle=False) as z:  # no pickled objects inside
        assert "density" in z.files

    calls = []
    real = F.compute_feature_stats
    monkeypatch.setattr(F, "compute_feature_stats", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = load_or_compute(sae_dir, store, loaded, cfg=cfg, progress=False)
    assert calls == [] and np.array_equal(again.density, first.density)
    assert again.top_tokens(0) == first.top_tokens(0) and again.top_logits(0) == first.top_logits(0)

    load_or_compute(sae_dir, store, loaded, cfg=StatsConfig(batch_size=256, top_k=3), progress=False)
    assert calls == [1]  # other settings → recomputed

    sae = load_sae(sae_dir)  # retrain-like change of the weights → recomputed, different numbers
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn_like(sae.W_enc))
    save_sae(sae, sae_dir)
    changed = load_or_compute(sae_dir, store, loaded, cfg=cfg, progress=False)
    assert calls == [1, 1] and not np.allclose(changed.max_act, first.max_act)

    acts2 = tmp_path / "acts2.parquet"  # the same trace elsewhere, at another time: what was recorded is equal
    shutil.copytree(store.path, acts2)
    man = json.loads((acts2 / "manifest.json").read_text())
    man["created"] = "another time"
    (acts2 / "manifest.json").write_text(json.dumps(man))
    load_or_compute(sae_dir, ActivationStore(acts2), loaded, cfg=cfg, progress=False)
    assert calls == [1, 1]  # reused: a re-trace of the same text keeps the stats (the shipped demo lab relies on it)
    man["text_field"] = "body"  # a trace recorded otherwise → recomputed
    (acts2 / "manifest.json").write_text(json.dumps(man))
    load_or_compute(sae_dir, ActivationStore(acts2), loaded, cfg=cfg, progress=False)
    assert calls == [1, 1, 1]


def test_cache_adds_logits_when_a_model_arrives(lab, tmp_path):
    import shutil

    sae_dir = tmp_path / "layer_1"
    shutil.copytree(lab["sae_dir"], sae_dir)
    no_model = load_or_compute(sae_dir, lab["store"], None, progress=False)
    assert not no_model.has_logits and no_model.top_logits(0) == []
    with_model = load_or_compute(sae_dir, lab["store"], lab["loaded"], progress=False)
    assert with_model.has_logits and len(with_model.top_logits(0)) == 10
    assert FeatureStats.load(sae_dir)[0].has_logits


def test_mismatched_layer_is_a_clear_error(lab):
    other = make_sae(0, 32, 8)
    with pytest.raises(TuiwbError, match="layers"):
        compute_feature_stats(other, lab["store"], progress=False)


# ---- the CLI ---------------------------------------------------------------------------------------
def test_cli_listing_json(lab, cli):
    code, out, _ = cli("features", "--sae", lab["sae_dir"], "--acts", lab["store"].path, "--model", lab["model"],
                       "--sort", "max", "--top", "5", "--json")
    assert code == 0
    rows = json.loads(out)["features"]  # stdout is exactly one JSON object (progress goes to stderr)
    stats = load_or_compute(lab["sae_dir"], lab["store"], progress=False)  # the cache the CLI wrote
    assert [r["id"] for r in rows] == stats.order("max")[:5].tolist()
    assert [r["score"] for r in rows] == pytest.approx(stats.max_act[[r["id"] for r in rows]].tolist())
    assert all(len(r["top_logits"]) == 5 for r in rows)  # --model gives logit effects


def test_cli_search_modes(lab, cli):
    base = ["--sae", lab["sae_dir"], "--acts", lab["store"].path, "--json"]
    stats = load_or_compute(lab["sae_dir"], lab["store"], lab["loaded"], progress=False)
    code, out, _ = cli("features", *base, "--search", "cat", "--top", "100")
    assert code == 0
    want = search_by_token(stats, "cat", tokenizer=lab["loaded"].tokenizer)
    assert [r["id"] for r in json.loads(out)["features"]] == want.ids.tolist()
    code, out, _ = cli("features", *base, "--id", "4,2")
    assert [r["id"] for r in json.loads(out)["features"]] == [4, 2]
    code, out, _ = cli("features", *base, "--density", "0.05:0.2", "--top", "100")
    got = json.loads(out)["features"]
    assert {r["id"] for r in got} == set(filter_density(stats, 0.05, 0.2).ids.tolist())
    assert all(0.05 <= r["density"] <= 0.2 for r in got)


def test_cli_contrast_and_target(lab, cli, tmp_path):
    from tuiwb.features.contrast import contrast

    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("the cat sees a dog\na big dog runs in the park\nthe red ball\n")
    b.write_text("a dog sees the cat\n\nthe small ball is red\n")
    base = ["--sae", lab["sae_dir"], "--acts", lab["store"].path, "--model", lab["model"], "--json",
            "--contrast", a, b]
    code, out, _ = cli("features", *base, "--top", "6")
    assert code == 0
    want = contrast(lab["loaded"], lab["sae"], a.read_text().split("\n")[:3], ["a dog sees the cat",
                    "the small ball is red"]).hits
    got = json.loads(out)["features"]
    assert [r["id"] for r in got] == want.ids[:6].tolist()
    assert [r["score"] for r in got] == pytest.approx(want.scores[:6].tolist(), abs=1e-6)

    code, out, _ = cli("features", *base, "--target", "ball", "--top", "30")
    assert code == 0
    obj = json.loads(out)
    assert obj["target"] == "ball" and 0 <= obj["p_target_after"] <= 1 and obj["clean_kl"] is not None
    assert [r["id"] for r in obj["features"][: len(obj["confirmed"])]] == obj["confirmed"]
    assert [e["feature"] for e in obj["edits"]] == obj["confirmed"] and obj["stopped"]
    assert all(set(p) == {"p_target", "clean_kl", "edits"} for p in obj["pareto"])
    if obj["confirmed"]:  # the table marks each confirmed feature's side and prints the front
        code, out, _ = cli("features", *[x for x in base if x != "--json"], "--target", "ball", "--top", "5")
        assert code == 0 and "Pareto front" in out and ("*T" in out or "*P" in out), out


def test_cli_errors_are_one_line(lab, cli, cli_error):
    base = ["--sae", lab["sae_dir"], "--acts", lab["store"].path]
    assert cli("features", *base, "--target", "ball")[0] == 2
    assert "--model" in cli_error("features", *base, "--contrast", "a.txt", "b.txt")
    cli_error("features", "--sae", lab["root"] / "nope", "--acts", lab["store"].path)
    code, _, err = cli("features", *base, "--search", "cat", "--by", "promotes", "--no-cache")
    assert code == 2 and "--model" in err


def test_cli_table(lab, cli):
    code, out, _ = cli("features", "--sae", lab["sae_dir"], "--acts", lab["store"].path, "--top", "3")
    assert code == 0 and "48 features" in out and "density" in out


def test_session_features_uses_the_attached_store(lab):
    from tuiwb.session.session import Session

    session = Session(lab["loaded"], {LAYER: lab["sae"]}, lab["store"])
    s1 = session.stats(LAYER, cfg=StatsConfig(batch_size=512))
    assert s1 is session.stats(LAYER, cfg=StatsConfig(batch_size=512))  # memoised for the session
    ref = compute_feature_stats(lab["sae"], lab["store"], progress=False)
    np.testing.assert_allclose(s1.density, ref.density)
    assert s1.has_logits
    with pytest.raises(TuiwbError, match="activation store"):
        Session(lab["loaded"], {LAYER: lab["sae"]}).stats(LAYER)


def test_dense_path_of_a_relu_sae_matches_brute_force(lab):
    """Non-TopK SAEs go through the dense encoder; same numbers as computing everything at once."""
    sae = make_sae(LAYER, 32, 40, seed=1)
    store = lab["store"]
    with torch.no_grad():  # each feature fires on ~30% of the tokens (the tied init alone: ~50%)
        sae.b_enc.sub_(torch.quantile(sae.pre_acts(store.read_rows(LAYER, np.arange(500))), 0.7, dim=0))
    st = compute_feature_stats(sae, store, progress=False, cfg=StatsConfig(batch_size=100, top_k=4, n_tokens=3))
    rows = store.row_indices("all")
    with torch.no_grad():
        a = sae.encode(store.read_rows(LAYER, rows)).numpy().astype(np.float64)  # [n, d_sae]
    tok = store.token_ids(rows).astype(np.int64)
    assert 0 < (a > 0).mean() < 0.5
    np.testing.assert_allclose(st.density, (a > 0).mean(0))
    np.testing.assert_allclose(st.max_act, a.max(0), rtol=1e-5)
    for f in range(sae.d_sae):
        want = np.sort(a[:, f][a[:, f] > 0])[::-1][:4]
        np.testing.assert_allclose([v for _, v in st.top_activations(f)], want, rtol=1e-5)
        sums = np.bincount(tok, weights=a[:, f])
        np.testing.assert_allclose(sorted(st.tok_sum[f][st.tok_ids[f] >= 0], reverse=True),
                                   np.sort(sums[sums > 0])[::-1][:3], rtol=1e-5)
