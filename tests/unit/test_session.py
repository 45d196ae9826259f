"""The Session: switchable hook and LoRA patches, cached baselines, feature activations, threads."""

import itertools
import random
import threading

import pytest
import torch
from factories import FAST_FIT, make_sae, texts

from tuiwb.errors import TuiwbError
from tuiwb.model.logits import kl_divergence
from tuiwb.patch.lora_fit import encode_texts, mean_kl
from tuiwb.patch.edit import gated_edit
from tuiwb.model.loading import load_model
from tuiwb.session.session import Session

PROMPT = "the cat sees a big dog in the park ."


def _logits(lm, prompt=PROMPT):
    with torch.no_grad():
        return lm.model(torch.tensor([lm.encode(prompt)])).logits[0, -1].float()


@pytest.fixture
def session(ckpt, data):
    lm = load_model(str(ckpt))
    saes = {layer: make_sae(layer, lm.d_model, seed=layer) for layer in range(3)}
    return Session(lm, saes, fit=FAST_FIT, data=data)


def test_nothing_on_is_the_model_and_kl_is_zero(session):
    pristine = _logits(session.loaded)
    r = session.logits(PROMPT, top=5)
    assert r.patched == r.baseline and r.kl == 0.0 and r.active == ()
    assert [t.id for t in r.baseline] == pristine.topk(5).indices.tolist()
    assert r.latency_ms > 0


def test_hook_patch_is_the_exact_edit_and_reports_kl(session):
    pristine = _logits(session.loaded)
    p = session.add_patch(layer=1, features=[1, 2, 3])
    assert p.method == "hook" and p.enabled and p.mode == "ablate" and p.features == [1, 2, 3]
    r = session.logits(PROMPT, top=5)
    assert r.active == (p.name,)
    patched = session.next_token_logits(PROMPT)
    session.toggle(p.name, False)
    with gated_edit(session.loaded, session.saes[1], [1, 2, 3]):
        want = _logits(session.loaded)
    torch.testing.assert_close(patched, want, rtol=1e-5, atol=1e-5)
    assert r.kl == pytest.approx(kl_divergence(pristine, want), rel=1e-4, abs=1e-7)
    assert r.kl > 1e-6
    assert [t.id for t in r.patched] == want.topk(5).indices.tolist()


def test_patches_on_one_layer_are_gated_on_the_unedited_stream(session):
    """Two patches on a layer add their deltas computed from the same h, so they commute."""
    session.add_patch(name="a", layer=1, features=[1, 2])
    session.add_patch(name="b", layer=1, features=[5], mode="scale=3")
    got = session.next_token_logits(PROMPT)
    session.set_enabled([])
    sae = session.saes[1]

    def hook(m, a, out):
        h = out[0] if isinstance(out, tuple) else out
        acts = sae.encode(h)
        d = -(acts[..., [1, 2]] @ sae.W_dec[[1, 2]]) + 2 * acts[..., [5]] @ sae.W_dec[[5]]
        return h + d

    handle = session.loaded.block(1).register_forward_hook(hook)
    try:
        want = _logits(session.loaded)
    finally:
        handle.remove()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_toggling_in_any_order_returns_exactly_to_baseline(session):
    pristine = _logits(session.loaded)
    session.add_patch(name="h0", layer=0, features=[3, 9])
    session.add_patch(name="h1", layer=1, features=[1, 2, 3])
    session.add_patch(name="s1", layer=1, features=[4], mode="scale=2")
    session.add_patch(name="l2", layer=2, features=[6, 7], method="lora")
    session.add_patch(name="l1", layer=1, features=[8], method="lora", rank=4)
    names = [p.name for p in session.patches]
    assert [p.method for p in session.patches] == ["hook", "hook", "hook", "lora", "lora"]
    rng = random.Random(0)
    by_state: dict[frozenset, torch.Tensor] = {}
    for _ in range(40):
        session.toggle(rng.choice(names))
        state = frozenset(session.active)
        out = session.next_token_logits(PROMPT)
        if state in by_state:
            assert torch.equal(out, by_state[state]), state  # depends on the set, not the history
        by_state[state] = out
    for order in itertools.islice(itertools.permutations(names), 0, 120, 7):
        for n in order:
            session.toggle(n, False)
        assert session.active == ()
        assert torch.equal(_logits(session.loaded), pristine)  # the raw model, bit for bit
        assert torch.equal(session.next_token_logits(PROMPT), pristine)
        for n in reversed(order):
            session.toggle(n, True)
    assert len(by_state) > 8
    for n in names:  # every patch alone changes the output
        session.set_enabled([n])
        assert not torch.equal(session.next_token_logits(PROMPT), pristine), n


def test_lora_patch_imitates_its_hook_patch(session, data):
    session.add_patch(name="p", layer=1, features=[1, 2, 3], enabled=False)
    edit = session._edits["p"]
    fid = session.build_lora("p")
    p = session.patch("p")
    assert p.method == "lora" and p.rank == 8 and p.fidelity == fid and not p.enabled
    # Fidelity is measured against the hook on held-out text; the LoRA must be far closer to the
    # hook than doing nothing is.
    held = encode_texts(session.loaded, texts(40, seed=7))
    with session.unpatched():
        effect = mean_kl(session.loaded, held, lambda: session._only(hook_edit=edit), session.unpatched)
    assert 0 <= fid < 0.1 * effect
    assert session.measure_fidelity("p") == pytest.approx(fid, rel=1e-4, abs=1e-9)
    with pytest.raises(TuiwbError, match="already a LoRA"):
        session.build_lora("p")


def test_feature_acts_read_the_sae_at_the_layer(session):
    lm = session.loaded
    ids = lm.encode(PROMPT)
    tokens, acts = session.feature_acts(PROMPT, 1)
    assert len(tokens) == len(ids) and acts.shape == (len(ids), 64)
    with torch.no_grad():
        hs = lm.model(torch.tensor([ids]), output_hidden_states=True).hidden_states[2][0]
        torch.testing.assert_close(acts, session.saes[1].encode(hs), rtol=1e-5, atol=1e-5)
    session.add_patch(layer=1, features=[1, 2, 3])
    _, patched = session.feature_acts(PROMPT, 1)
    _, unpatched = session.feature_acts(PROMPT, 1, patched=False)
    torch.testing.assert_close(unpatched, acts)
    # The edit removes a_f·d_f; re-encoding what is left shows far less of the ablated features
    # (not exactly zero: the encoder rows are not orthogonal to the other directions).
    before, after = acts[:, [1, 2, 3]].sum(), patched[:, [1, 2, 3]].sum()
    assert before > 0 and after < 0.5 * before
    others = [f for f in range(64) if f not in (1, 2, 3)]
    assert not torch.equal(patched[:, others], acts[:, others])


def test_concurrent_logits_and_toggles(session):
    session.add_patch(name="a", layer=1, features=[1, 2, 3], enabled=False)
    session.add_patch(name="b", layer=2, features=[4], mode="scale=2", enabled=False)
    expect = {}
    for state in ([], ["a"], ["b"], ["a", "b"]):
        session.set_enabled(state)
        expect[frozenset(state)] = [t.id for t in session.logits(PROMPT, top=5).patched]
    session.set_enabled([])
    errors, results = [], []

    def work(seed):
        rng = random.Random(seed)
        try:
            for _ in range(25):
                if rng.random() < 0.5:
                    session.toggle(rng.choice("ab"))
                else:
                    results.append(session.logits(PROMPT, top=5))
        except Exception as e:  # noqa: BLE001 — surfaced below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert results
    for r in results:  # each answer is consistent with the patch set it reports
        assert [t.id for t in r.patched] == expect[frozenset(r.active)]
    session.set_enabled([])
    assert torch.equal(session.next_token_logits(PROMPT), _logits(session.loaded))


def test_add_patch_errors(session):
    with pytest.raises(TuiwbError, match="feature 64 does not exist"):
        session.add_patch(layer=1, features=[64])
    with pytest.raises(TuiwbError, match=r"no SAE attached at layer 5 \(SAEs at layers: 0, 1, 2\)"):
        session.add_patch(layer=5, features=[1])
    for rank in (3, 17):
        with pytest.raises(TuiwbError, match="out of range: use 4..16"):
            session.add_patch(layer=1, features=[1], rank=rank)
    with pytest.raises(TuiwbError, match="bad patch mode"):
        session.add_patch(layer=1, features=[1], mode="zero")
    with pytest.raises(TuiwbError, match="bad patch name"):
        session.add_patch(name="a/b", layer=1, features=[1])
    session.add_patch(name="x", layer=1, features=[1])
    with pytest.raises(TuiwbError, match="already exists"):
        session.add_patch(name="x", layer=1, features=[2])
    with pytest.raises(TuiwbError, match="no patch named 'y'"):
        session.toggle("y")
    with pytest.raises(TuiwbError, match="hook patch: build its LoRA"):
        session.export(["x"], "/nonexistent/out")
    assert [p.name for p in session.patches] == ["x"]  # failed adds left nothing behind
    session.remove_patch("x")
    assert session.patches == [] and torch.equal(session.next_token_logits(PROMPT), _logits(session.loaded))


def test_mismatched_sae_is_refused(ckpt):
    lm = load_model(str(ckpt))
    with pytest.raises(TuiwbError, match="d_in 48 but the model's d_model is 32"):
        Session(lm, {1: make_sae(1, 48)})
    with pytest.raises(TuiwbError, match="trained on another model"):
        Session(lm, {1: make_sae(1, 32, model_config_hash="0123456789abcdef")})
    with pytest.raises(TuiwbError, match="given for layer 0 reads layer 1"):
        Session(lm, {0: make_sae(1, 32)})


def test_unpatched_nests_and_defers_toggles(session):
    pristine = _logits(session.loaded)
    session.add_patch(name="a", layer=1, features=[1, 2, 3])
    patched = session.next_token_logits(PROMPT)
    with session.unpatched():
        with session.unpatched():
            assert torch.equal(_logits(session.loaded), pristine)
        assert torch.equal(_logits(session.loaded), pristine)  # the inner exit did not re-apply "a"
        session.toggle("a", False)
        session.toggle("a", True)
        assert torch.equal(_logits(session.loaded), pristine)
    assert torch.equal(session.next_token_logits(PROMPT), patched)
