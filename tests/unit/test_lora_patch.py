"""The patch engine's pieces: modes and flag syntax, the exact gated edit, the fit, the adapter rack."""

import itertools

import pytest
import torch
from factories import FAST_FIT, make_sae, texts

from tuiwb.errors import TuiwbError
from tuiwb.patch.config import FitConfig
from tuiwb.patch.lora_fit import closed_form, encode_texts, fit_lora
from tuiwb.commands._patch_flags import parse_ablate, parse_scale
from tuiwb.patch.edit import gated_edit, make_edit, parse_mode
from tuiwb.patch.rack import LoraRack
from tuiwb.model.loading import load_model


@pytest.fixture(scope="module")
def lm(ckpt):
    return load_model(str(ckpt))


@pytest.fixture(scope="module")
def sae1(lm):
    return make_sae(1, lm.d_model)


def _ids(lm, text="the cat sees a big dog in the park ."):
    return torch.tensor([lm.encode(text)])


def _manual_logits(lm, ids, layer, sae, feats, alpha):
    """Independent implementation of h' = h + (α−1) Σ a_f(h) d_f at block ``layer``'s output."""
    def hook(m, a, out):
        h = out[0] if isinstance(out, tuple) else out
        acts = sae.encode(h)
        new = h + (alpha - 1) * sum(acts[..., f:f + 1] * sae.W_dec[f] for f in feats)
        return (new, *out[1:]) if isinstance(out, tuple) else new

    handle = lm.block(layer).register_forward_hook(hook)
    try:
        with torch.no_grad():
            return lm.model(ids).logits
    finally:
        handle.remove()


# ------------------------------------------------------------------------------ modes and flags

@pytest.mark.parametrize("mode,alpha", [("ablate", 0.0), ("scale=0.5", 0.5), ("scale=-1", -1.0),
                                        (" scale = 2 ", 2.0), ("scale=1e-1", 0.1)])
def test_parse_mode(mode, alpha):
    assert parse_mode(mode) == alpha


@pytest.mark.parametrize("mode", ["", "mute", "scale=", "scale=abc", "scale=inf", "scale=nan", "ablate=1"])
def test_parse_mode_rejects(mode):
    with pytest.raises(TuiwbError, match="ablate' or 'scale=ALPHA"):
        parse_mode(mode)


def test_parse_ablate_and_scale_flags():
    assert parse_ablate("2:17") == (2, [17])
    assert parse_ablate("2:17, 40,3") == (2, [17, 40, 3])
    assert parse_scale("1:5=0.25") == (1, [5], 0.25)
    assert parse_scale("0:5,6=-2") == (0, [5, 6], -2.0)
    for bad in ["2", "2:", ":3", "a:3", "2:3;4", "2:3,", "-1:3", "2:3=1"]:
        with pytest.raises(TuiwbError, match="bad --ablate"):
            parse_ablate(bad)
    for bad in ["2:3", "2:3=", "2:3=x", "x:3=1", "2:=1"]:
        with pytest.raises(TuiwbError, match="bad --scale|bad patch mode"):
            parse_scale(bad)


# ---------------------------------------------------------------------------------- gated edit

def test_gated_edit_is_the_exact_formula_and_is_removed(lm, sae1):
    ids = _ids(lm)
    with torch.no_grad():
        base = lm.model(ids).logits
    for feats, alpha in [([1, 2, 3], 0.0), ([4], 2.5)]:
        with gated_edit(lm, sae1, feats, alpha), torch.no_grad():
            got = lm.model(ids).logits
        want = _manual_logits(lm, ids, 1, sae1, feats, alpha)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        assert (got - base).abs().max() > 1e-3  # the edit did something
    with torch.no_grad():
        assert torch.equal(lm.model(ids).logits, base)  # hook gone, bit-exact


def test_gated_edits_nest_and_survive_errors(lm, sae1):
    ids = _ids(lm)
    with torch.no_grad():
        base = lm.model(ids).logits
        with gated_edit(lm, sae1, [1]):
            one = lm.model(ids).logits
            with gated_edit(lm, sae1, [2]):
                two = lm.model(ids).logits
            assert torch.equal(lm.model(ids).logits, one)
    assert not torch.equal(one, two)
    with pytest.raises(RuntimeError, match="boom"):
        with gated_edit(lm, sae1, [1]):
            raise RuntimeError("boom")
    with torch.no_grad():
        assert torch.equal(lm.model(ids).logits, base)


def test_gated_edit_rejects_unknown_features(lm, sae1):
    with pytest.raises(TuiwbError, match=r"feature 64 does not exist.*0\.\.63"):
        with gated_edit(lm, sae1, [3, 64]):
            pass
    with pytest.raises(TuiwbError, match="at least one feature"):
        make_edit(sae1, [], 0.0)


# ------------------------------------------------------------------------------------- the fit

def test_closed_form_recovers_a_low_rank_map():
    g = torch.Generator().manual_seed(0)
    N, D, d, r = 2000, 24, 12, 3
    X = torch.randn(N, D, generator=g, dtype=torch.float64)
    W = torch.randn(D, r, generator=g, dtype=torch.float64) @ torch.randn(r, d, generator=g, dtype=torch.float64)
    Y = X @ W
    G, C, yy = X.T @ X, X.T @ Y, float((Y * Y).sum())
    A, B, r2 = closed_form(G, C, yy, rank=r, ridge=1e-9)
    assert r2 == pytest.approx(1.0, abs=1e-6)
    torch.testing.assert_close((B.double() @ A.double()).T, W, rtol=1e-4, atol=1e-4)
    # Rank 2 < true rank: r2 is that of the best rank-2 map of the fitted values (reduced-rank regression).
    _, _, r2_low = closed_form(G, C, yy, rank=2, ridge=1e-9)
    s = torch.linalg.svdvals(Y)
    assert r2_low == pytest.approx(float((s[:2] ** 2).sum() / (s ** 2).sum()), abs=1e-6)


def test_fit_config_validates_rank():
    for bad in (3, 17, 0):
        with pytest.raises(TuiwbError, match=r"rank .* out of range: use 4\.\.16"):
            FitConfig(rank=bad)
    FitConfig(rank=4), FitConfig(rank=16)


def test_fit_lora_imitates_the_edit_on_the_real_layer_output(lm, sae1):
    edit = make_edit(sae1, [1, 2, 3], 0.0)
    seqs = encode_texts(lm, texts(200))
    rep = fit_lora(lm, edit, seqs, FAST_FIT)
    names = lm.writer_names(1)
    assert set(rep.factors.modules) == set(names.values())
    for name, (A, B) in rep.factors.modules.items():
        assert A.shape[0] == B.shape[1] == FAST_FIT.rank
        assert B.shape[0] == lm.d_model
    # Layer-output error relative to the target's own size: a real fit, far below "do nothing" (= 1).
    assert rep.rel_err_closed < 0.5
    assert 0 < rep.r2_closed <= 1
    if rep.refined:
        assert rep.rel_err_refined < rep.rel_err_closed and rep.refine_steps > 0
    else:
        assert rep.rel_err_refined is None or rep.rel_err_refined >= rep.rel_err_closed
    # A closed form already below the skip threshold is not refined at all.
    from dataclasses import replace

    skip = fit_lora(lm, edit, seqs, replace(FAST_FIT, refine_skip_below=1e9))
    assert skip.refine_steps == 0 and skip.rel_err_refined is None and not skip.refined
    assert skip.rel_err_closed == pytest.approx(rep.rel_err_closed, rel=1e-6)


def test_fit_refuses_features_that_never_fire(lm):
    sae = make_sae(1, lm.d_model)
    with torch.no_grad():
        sae.b_enc.fill_(-1e6)  # nothing fires
    with pytest.raises(TuiwbError, match="never fire"):
        fit_lora(lm, make_edit(sae, [0], 0.0), encode_texts(lm, texts(20)), FAST_FIT)


# ------------------------------------------------------------------------------------ the rack

def test_rack_toggles_adapters_without_reload_and_is_exact_when_off(ckpt):
    from tuiwb.patch.lora_fit import LoraFactors

    lm = load_model(str(ckpt))  # its own copy: the rack stays injected
    ids = _ids(lm)
    with torch.no_grad():
        base = lm.model(ids).logits
    g = torch.Generator().manual_seed(1)

    def factors(layer, r):
        mods = {}
        for name, mod in zip(lm.writer_names(layer).values(), lm.writers(layer).values()):
            mods[name] = (0.3 * torch.randn(r, mod.in_features, generator=g),
                          0.3 * torch.randn(mod.out_features, r, generator=g))
        return LoraFactors(mods, r)

    rack = LoraRack(lm.model)
    fa, fb = factors(1, 4), factors(2, 8)
    rack.add("a", fa)
    rack.add("b", fb)
    with torch.no_grad():
        assert torch.equal(lm.model(ids).logits, base)  # injected but inactive
        seen = {}
        for order in itertools.permutations(["a", "b", "none"]):
            for step in order:
                rack.set_active(() if step == "none" else (step,) + tuple(x for x in rack.active if x != step))
                key = frozenset(rack.active)
                out = lm.model(ids).logits
                if key in seen:
                    assert torch.equal(out, seen[key])
                seen[key] = out
        rack.set_active(())
        assert torch.equal(lm.model(ids).logits, base)
        # The adapter computes exactly the effective factors: out += B A x at each module.
        rack.set_active(("a",))
        name, (A, B) = next(iter(fa.modules.items()))
        mod = dict(lm.model.named_modules())[name]
        x = torch.randn(3, mod.in_features, generator=g)
        torch.testing.assert_close(mod(x) - mod.get_base_layer()(x), x @ A.T @ B.T, rtol=1e-5, atol=1e-5)
    rack.remove("a")
    assert rack.names == ("b",) and rack.active == ()
    with pytest.raises(TuiwbError, match="no LoRA adapter named"):
        rack.set_active(("a",))
