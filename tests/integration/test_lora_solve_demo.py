"""The fp32 Cholesky solve (no float64 D×D, no identity) against the float64 solve it replaced, on
the demo trojan: the closed-form LoRA's fidelity and P(payload) stay within 10% of the old ones."""

from functools import partial

import pytest
import torch
from factories import reference_closed_form

from tuiwb.demo.model import load_prompts, payload_first_token
from tuiwb.model.loading import load_model
from tuiwb.patch.config import FitConfig
from tuiwb.patch.edit import edit_hook, make_edit
from tuiwb.patch.lora_fit import closed_form, factor_hooks, fit_lora, fit_sequences, mean_kl, record_stats
from tuiwb.sae.io import load_sae


@pytest.fixture(scope="module")
def demo(demo_full_dir):
    from tuiwb.demo.pipeline import DemoPipelineConfig, run_pipeline

    return run_pipeline(DemoPipelineConfig(variant="full"), progress=False, say=lambda msg: None)


@pytest.mark.slow
def test_fp32_solve_keeps_the_demo_fit_quality(demo):
    lm = load_model(str(demo.model_dir))
    layer = demo.trigger_layer
    edit = make_edit(load_sae(demo.saes_dir / f"layer_{layer}"), demo.trigger_features, 0.0)
    cfg = FitConfig()
    train, _ = fit_sequences(lm, None, None, "train", cfg.fit_tokens)
    held, _ = fit_sequences(lm, None, None, "heldout", 4096)
    names = lm.writer_names(layer)
    payload = lm.tokenizer(payload_first_token(), add_special_tokens=False)["input_ids"][0]
    prompts = load_prompts(demo.model_dir, "trigger")[:48]

    def hook_ctx():
        return lm.hooks([(layer, edit_hook(lambda: (edit,)))])

    def quality(A_full, B, d_attn):
        factors = {names["attn_out"]: (A_full[:, :d_attn], B), names["mlp_out"]: (A_full[:, d_attn:], B.clone())}
        fid = mean_kl(lm, held, hook_ctx, partial(factor_hooks, lm, factors))
        with torch.no_grad(), factor_hooks(lm, factors):
            p = [float(torch.softmax(lm.model(torch.tensor([lm.encode(t)])).logits[0, -1].float(), -1)[payload])
                 for t in prompts]
        return fid, sum(p) / len(p)

    old = record_stats(lm, edit, train, cfg, dtype=torch.float64)
    A_o, B_o, r2_o = reference_closed_form(old.G, old.C, old.yy, cfg.rank, cfg.ridge)
    print(f"old solve: r2 {r2_o:.4f}", end="; ")
    new = record_stats(lm, edit, train, cfg)
    assert new.G.dtype == torch.float32
    A_n, B_n, r2_n = closed_form(new.G, new.C, new.yy, cfg.rank, cfg.ridge)
    fid_o, p_o = quality(A_o, B_o, old.d_attn)
    fid_n, p_n = quality(A_n, B_n, new.d_attn)
    print(f"new: r2 {r2_n:.4f}; fidelity old {fid_o:.5f} new {fid_n:.5f}; P(payload) old {p_o:.4f} new {p_n:.4f}")
    assert r2_n == pytest.approx(r2_o, rel=0.01)
    assert fid_n <= 1.1 * fid_o + 1e-4, (fid_n, fid_o)
    assert abs(p_n - p_o) <= 0.1 * max(p_o, 0.01), (p_n, p_o)

    # The whole new fit (solve + block-only refinement) on the demo: faithful, and it says what it cost.
    rep = fit_lora(lm, edit, train, cfg)
    assert rep.peak_extra_bytes > 0 and rep.solve_seconds >= 0
    fid_full = mean_kl(lm, held, hook_ctx, partial(factor_hooks, lm, rep.factors.modules))
    assert fid_full <= 1.1 * fid_o + 1e-4, (fid_full, fid_o)
