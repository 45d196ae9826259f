"""Contrast search: activation difference, attribution (against finite differences) and the greedy
confirmation by real ablation."""

import numpy as np
import pytest
import torch
from factories import make_sae, tiny_checkpoint

from tuiwb.features.config import EffectConfig
from tuiwb.features.contrast import attribution, contrast, encode_prompts, find_feature_set, prompt_acts
from tuiwb.model.logits import last_logits as final_logits
from tuiwb.errors import TuiwbError
from tuiwb.patch.edit import gated_edit

A = ["the cat sees a dog", "a big dog runs in the park", "the red ball is small", "the cat runs .",
     "a small cat sees the red ball", "the dog was in the park"]
B = ["a dog sees the cat", "the small ball", "the park is big", "a cat and a dog", "the ball runs", "red"]
TARGET = "ball"


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    from tuiwb.model.loading import load_model

    return load_model(str(tiny_checkpoint(tmp_path_factory.mktemp("m"), n_layers=2)))


def _hidden_acts(loaded, sae, prompt):
    ids = torch.tensor([loaded.encode(prompt)])
    with torch.no_grad():
        h = loaded.model(input_ids=ids, output_hidden_states=True).hidden_states[sae.layer + 1][0]  # [pos, d]
        return sae.encode(h)  # [pos, d_sae]


def test_contrast_scores_are_mean_final_activation_differences(loaded):
    sae = make_sae(0, d_sae=24, arch="topk")
    res = contrast(loaded, sae, A, B, batch_size=4)  # several padded batches
    mean_a = torch.stack([_hidden_acts(loaded, sae, p)[-1] for p in A]).mean(0).numpy()
    mean_b = torch.stack([_hidden_acts(loaded, sae, p)[-1] for p in B]).mean(0).numpy()
    np.testing.assert_allclose(res.mean_a, mean_a, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(res.mean_b, mean_b, rtol=1e-4, atol=1e-6)
    assert res.hits.ids[0] == int(np.argmax(mean_a - mean_b))
    assert list(res.hits.scores) == sorted(res.hits.scores, reverse=True)
    assert sorted(res.hits.ids.tolist()) == list(range(sae.d_sae))


def test_max_position_contrast(loaded):
    sae = make_sae(0, d_sae=24, arch="topk")
    got = prompt_acts(loaded, sae, encode_prompts(loaded, A), position="max", batch_size=4)
    want = torch.stack([_hidden_acts(loaded, sae, p).max(0).values for p in A])
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    with pytest.raises(TuiwbError):
        prompt_acts(loaded, sae, encode_prompts(loaded, A), position="middle")


@pytest.mark.parametrize("layer", [0, 1])
def test_attribution_is_the_derivative_of_the_gated_edit(loaded, layer):
    """attr_f = d/dε of mean log P(target) when feature f is scaled by (1 − ε): checked numerically."""
    sae = make_sae(layer, d_sae=24, seed=layer)
    seqs = encode_prompts(loaded, A)
    tid = loaded.tokenizer.convert_tokens_to_ids(TARGET)
    attr = attribution(loaded, sae, seqs, tid, batch_size=4)

    def j(feats, alpha):
        with gated_edit(loaded, sae, feats, alpha):
            return float(torch.log_softmax(final_logits(loaded, seqs), -1)[:, tid].mean())

    base = j([0], 1.0)
    eps = 1e-3
    for f in np.argsort(-np.abs(attr))[:4]:
        fd = (base - j([int(f)], 1 - eps)) / eps
        assert attr[f] == pytest.approx(fd, rel=0.05, abs=1e-4)
    # with features already ablated, the attribution is taken on the ablated model
    abl = [int(np.argmax(attr))]
    attr2 = attribution(loaded, sae, seqs, tid, ablated=abl, batch_size=4)
    assert attr2[abl[0]] == 0.0
    g = int(np.argsort(-np.abs(attr2))[0])

    def j2(eps_g):  # one edit, all activations read from the unedited h (as gated_edit of a set does)
        def hook(module, args, out):
            a = sae.encode(out)  # [b, pos, d_sae]
            return out - a[..., abl] @ sae.W_dec[abl] - eps_g * a[..., [g]] @ sae.W_dec[[g]]

        handle = loaded.block(layer).register_forward_hook(hook)
        try:
            return float(torch.log_softmax(final_logits(loaded, seqs), -1)[:, tid].mean())
        finally:
            handle.remove()

    with gated_edit(loaded, sae, abl, 0.0):
        assert j2(0.0) == pytest.approx(float(torch.log_softmax(final_logits(loaded, seqs), -1)[:, tid].mean()))
    assert attr2[g] == pytest.approx((j2(0.0) - j2(eps)) / eps, rel=0.05, abs=1e-4)


def _planted_sae(loaded, strengths):
    """A layer-1 SAE whose features fire at every position with fixed activations ``strengths`` and
    whose decoder directions point along the target's unembedding (through the final norm's gain):
    removing a stronger one lowers P(target) more. The remaining features never fire."""
    sae = make_sae(1, d_sae=12)
    tid = loaded.tokenizer.convert_tokens_to_ids(TARGET)
    u = loaded.unembed.weight[tid].detach() * loaded.final_norm.weight.detach()  # [d]
    u = u / u.norm()
    with torch.no_grad():
        sae.W_enc.zero_()
        sae.b_enc.fill_(-1.0)
        for f, s in strengths.items():
            sae.b_enc[f] = s
            sae.W_dec[f] = u
    return sae


def test_contrast_effect_confirms_the_features_that_carry_the_target(loaded):
    sae = _planted_sae(loaded, {3: 6.0, 7: 3.0})
    # no B set: nothing to trade against, so the largest drop wins (with B it is the drop per clean KL)
    res = find_feature_set(loaded, sae, A, TARGET, None, EffectConfig(max_clean_kl=None, max_eval_prompts=4))
    assert res.confirmed[0] == 3  # the strongest first
    assert set(res.confirmed) <= {3, 7}
    assert res.p_after < res.p_before
    assert res.steps[0].p_target < res.p_before and res.steps[-1].p_target >= 0
    # the reported numbers are real ablations of the confirmed set on all prompts
    with gated_edit(loaded, sae, list(res.confirmed)):
        p = torch.softmax(final_logits(loaded, encode_prompts(loaded, A)), -1)[:, res.target_id].mean()
    assert res.p_after == pytest.approx(float(p), rel=1e-5)
    assert res.attribution[3] > res.attribution[7] > 0
    assert np.all(res.attribution[[0, 1, 2, 4]] == 0)  # never fire: no effect
    hits = res.hits
    assert hits.ids[: len(res.confirmed)].tolist() == list(res.confirmed)
    assert sorted(hits.ids.tolist()) == list(range(sae.d_sae))
    rest = hits.scores[len(res.confirmed):]
    assert list(rest) == sorted(rest, reverse=True)


def test_clean_kl_guard_rejects_features_that_break_set_b(loaded):
    sae = _planted_sae(loaded, {3: 6.0})
    free = find_feature_set(loaded, sae, A, TARGET, B, EffectConfig(max_clean_kl=None))
    assert free.confirmed == (3,) and free.clean_kl > 1e-4
    guarded = find_feature_set(loaded, sae, A, TARGET, B, EffectConfig(max_clean_kl=free.clean_kl / 10))
    assert guarded.confirmed == () and guarded.p_after == guarded.p_before and guarded.clean_kl == 0.0


def test_stops_when_probability_stops_falling(loaded):
    sae = _planted_sae(loaded, {3: 6.0, 7: 1e-3})  # 7's effect is far below the stopping threshold
    res = find_feature_set(loaded, sae, A, TARGET, None, EffectConfig(max_clean_kl=None))
    assert res.confirmed == (3,) and res.clean_kl is None
    one = find_feature_set(loaded, _planted_sae(loaded, {3: 6.0, 7: 3.0}), A, TARGET, None,
                          EffectConfig(max_features=1, max_clean_kl=None))
    assert one.confirmed == (3,)


def test_target_must_be_one_token(loaded):
    sae = make_sae(1, d_sae=24)
    with pytest.raises(TuiwbError, match="single token"):
        find_feature_set(loaded, sae, A, "zebra crossing", B)


def test_target_objectives():
    from tuiwb.features.contrast import target_objective

    logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 0.0, 9.0]])
    p = torch.softmax(logits, -1)[:, 1]
    torch.testing.assert_close(target_objective(logits, 1, "prob"), p)
    torch.testing.assert_close(target_objective(logits, 1, "logprob"), p.log())
    torch.testing.assert_close(target_objective(logits, 1, "logodds"), (p / (1 - p)).log())
    clamped = target_objective(logits, 1, "logodds", floor=-3.0)
    assert clamped[1] == -3.0 and clamped[0] == pytest.approx(float((p[0] / (1 - p[0])).log()))
    with pytest.raises(TuiwbError):
        target_objective(logits, 1, "odds")


def test_gated_edit_acts_only_after_a_gate_feature_fired(loaded):
    """h'_t = h_t − g_t · a_f(h_t) d_f with g_t = 1 once a gate feature exceeded its threshold at s ≤ t."""
    from tuiwb.patch.edit import make_edit

    sae = make_sae(1, d_sae=24, seed=3)
    h = torch.randn(2, 7, sae.W_dec.shape[1])  # [b, pos, d]
    with torch.no_grad():
        acts = sae.encode(h)  # [b, pos, d_sae]
    gate_f = int(acts[0].max(0).values.argmax())
    low = float(acts[0, :, gate_f].median())
    f = int((acts > 0).float().mean((0, 1)).argmax())
    edit = make_edit(sae, [f], 0.0, gate=[gate_f], gate_min=[low])
    opened = (acts[..., gate_f] > low).float().cummax(-1).values  # [b, pos]
    want = -(opened.unsqueeze(-1) * acts[..., [f]]) * sae.W_dec[f]  # [b, pos, d]
    with torch.no_grad():
        torch.testing.assert_close(edit.delta(h), want)
    assert bool((opened == 0).any()) and bool((opened == 1).any())  # a real gate: shut somewhere, open elsewhere
    ungated = make_edit(sae, [f], 0.0)
    with torch.no_grad():
        torch.testing.assert_close(ungated.delta(h), -acts[..., [f]] * sae.W_dec[f])


def test_pareto_front_keeps_the_undominated_sets():
    from tuiwb.features.contrast import ParetoPoint, pareto_front

    pts = [ParetoPoint(0.5, 0.001, ((1, 0.0, False),)), ParetoPoint(0.6, 0.002, ((2, 0.0, False),)),
           ParetoPoint(0.1, 0.004, ((1, 0.0, False), (3, 0.0, True))), ParetoPoint(0.9, 0.0, ((4, 0.5, False),))]
    front = pareto_front(pts)
    assert [p.p_target for p in front] == [0.9, 0.5, 0.1]  # (0.6, 0.002) is beaten by (0.5, 0.001)
