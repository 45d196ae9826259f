"""Importing published SAEs: SAELens and EleutherAI sparsify directories built from their documented
key names, loaded by tuiwb, must reconstruct exactly as their own code would."""

import json

import pytest
import torch
from safetensors.torch import save_file

from tuiwb.errors import TuiwbError
from tuiwb.sae.io import load_sae

D_IN, D_SAE = 16, 48


def rand_weights(seed=0, dec_norm=None):
    g = torch.Generator().manual_seed(seed)
    w = {"W_enc": torch.randn(D_IN, D_SAE, generator=g) * 0.3,
         "W_dec": torch.randn(D_SAE, D_IN, generator=g) * (dec_norm or 0.7),
         "b_enc": torch.randn(D_SAE, generator=g) * 0.1,
         "b_dec": torch.randn(D_IN, generator=g) * 0.2}
    return w


def write_saelens(path, cfg, tensors):
    path.mkdir(parents=True)
    (path / "cfg.json").write_text(json.dumps(cfg))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path / "sae_weights.safetensors"))
    return path


def saelens_reference(w, x, act, apply_b_dec=True, k=None, threshold=None):
    """SAELens' forward: process_sae_in, hidden_pre, activation, decode."""
    sae_in = x - w["b_dec"] if apply_b_dec else x
    pre = sae_in @ w["W_enc"] + w["b_enc"]
    if act == "relu":
        a = torch.relu(pre)
    elif act == "topk":
        top = pre.topk(k, dim=-1)
        a = torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))
    else:
        a = torch.relu(pre) * (pre > threshold)
    return a @ w["W_dec"] + w["b_dec"]


X = torch.randn(32, D_IN, generator=torch.Generator().manual_seed(9))


def test_saelens_v6_standard_sae(tmp_path):
    w = rand_weights()
    cfg = {"architecture": "standard", "d_in": D_IN, "d_sae": D_SAE, "dtype": "float32", "device": "cpu",
           "apply_b_dec_to_input": True, "normalize_activations": "none",
           "metadata": {"model_name": "gpt2", "hook_name": "blocks.3.hook_resid_pre", "sae_lens_version": "6.5.0"}}
    sae = load_sae(write_saelens(tmp_path / "std", cfg, w))
    assert sae.cfg.architecture == "relu" and sae.cfg.source == "saelens"
    assert sae.cfg.model_name == "gpt2"
    # hook_resid_pre of block 3 is the output of block 2: renamed so patches/eval find the layer
    assert sae.layer == 2 and sae.hook_name == "blocks.2.hook_resid_post"
    with torch.no_grad():
        torch.testing.assert_close(sae(X), saelens_reference(w, X, "relu"), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.ones(D_SAE))  # folded, x̂ unchanged


def test_saelens_topk_v6_and_pre6_spellings(tmp_path):
    w = rand_weights(1)
    v6 = {"architecture": "topk", "d_in": D_IN, "d_sae": D_SAE, "k": 6, "apply_b_dec_to_input": True,
          "normalize_activations": "none", "metadata": {"hook_name": "blocks.1.hook_resid_post"}}
    pre6 = {"architecture": "standard", "d_in": D_IN, "d_sae": D_SAE, "activation_fn_str": "topk",
            "activation_fn_kwargs": {"k": 6}, "hook_point": "blocks.1.hook_resid_post", "model_name": "m",
            "normalize_activations": False}
    ref = saelens_reference(w, X, "topk", k=6)
    for name, cfg in [("v6", v6), ("pre6", pre6)]:
        sae = load_sae(write_saelens(tmp_path / name, cfg, w))
        assert (sae.cfg.architecture, sae.cfg.k, sae.layer) == ("topk", 6, 1), name
        with torch.no_grad():
            torch.testing.assert_close(sae(X), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("threshold_key", ["threshold", "log_threshold"])
def test_saelens_jumprelu_with_threshold(tmp_path, threshold_key):
    w = rand_weights(2)
    threshold = torch.rand(D_SAE) * 0.3 + 0.01
    t = dict(w, **{threshold_key: threshold if threshold_key == "threshold" else threshold.log()})
    cfg = {"architecture": "jumprelu", "d_in": D_IN, "d_sae": D_SAE, "apply_b_dec_to_input": False,
           "normalize_activations": "none", "metadata": {"hook_name": "blocks.0.hook_resid_post"}}
    sae = load_sae(write_saelens(tmp_path / "jr", cfg, t))
    assert sae.cfg.architecture == "jumprelu" and not sae.cfg.apply_b_dec_to_input
    with torch.no_grad():
        torch.testing.assert_close(sae(X), saelens_reference(w, X, "jumprelu", apply_b_dec=False,
                                                              threshold=threshold), rtol=1e-5, atol=1e-5)


def test_sparsify_directory(tmp_path):
    g = torch.Generator().manual_seed(3)
    k = 5
    enc_w = torch.randn(D_SAE, D_IN, generator=g) * 0.3  # nn.Linear layout [d_sae, d_in]
    enc_b = torch.randn(D_SAE, generator=g) * 0.1
    w_dec = torch.randn(D_SAE, D_IN, generator=g)
    w_dec = w_dec / w_dec.norm(dim=-1, keepdim=True)
    b_dec = torch.randn(D_IN, generator=g) * 0.2
    d = tmp_path / "layers.5"
    d.mkdir()
    (d / "cfg.json").write_text(json.dumps({"expansion_factor": 3, "normalize_decoder": True, "num_latents": 0,
                                            "k": k, "multi_topk": False, "skip_connection": False, "d_in": D_IN}))
    save_file({"encoder.weight": enc_w, "encoder.bias": enc_b, "W_dec": w_dec, "b_dec": b_dec},
              str(d / "sae.safetensors"))
    sae = load_sae(d)
    assert (sae.cfg.d_sae, sae.cfg.k, sae.layer, sae.hook_name) == (D_SAE, k, 5, "blocks.5.hook_resid_post")
    # sparsify: relu(encoder(x - b_dec)), top-k, decode with W_dec + b_dec
    pre = torch.relu((X - b_dec) @ enc_w.t() + enc_b)
    top = pre.topk(k, dim=-1)
    ref = torch.zeros_like(pre).scatter(-1, top.indices, top.values) @ w_dec + b_dec
    with torch.no_grad():
        torch.testing.assert_close(sae(X), ref, rtol=1e-5, atol=1e-5)


def test_not_an_sae(tmp_path):
    d = tmp_path / "model"
    d.mkdir()
    (d / "cfg.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 16}))
    save_file({"W_enc": torch.zeros(2, 2)}, str(d / "sae_weights.safetensors"))
    with pytest.raises(TuiwbError, match="not an SAE config"):
        load_sae(d)
    (d / "cfg.json").write_text("{ not json")
    with pytest.raises(TuiwbError, match="not valid JSON"):
        load_sae(d)
    with pytest.raises(TuiwbError, match="has no cfg.json"):
        load_sae(tmp_path)
    with pytest.raises(TuiwbError, match="does not exist"):
        load_sae(tmp_path / "nope")


@pytest.mark.parametrize("change,match", [
    ({"architecture": "gated"}, "not supported"),
    ({"normalize_activations": "constant_norm_rescale"}, "normalize_activations"),
    ({"d_sae": D_SAE + 1}, "shape"),
])
def test_unsupported_or_inconsistent_saelens_configs(tmp_path, change, match):
    cfg = {"architecture": "standard", "d_in": D_IN, "d_sae": D_SAE, **change}
    with pytest.raises(TuiwbError, match=match):
        load_sae(write_saelens(tmp_path / "x", cfg, rand_weights()))


def test_sparsify_transcoder_refused(tmp_path):
    d = tmp_path / "layers.1"
    d.mkdir()
    (d / "cfg.json").write_text(json.dumps({"d_in": D_IN, "k": 4, "transcode": True}))
    save_file({"encoder.weight": torch.zeros(D_SAE, D_IN)}, str(d / "sae.safetensors"))
    with pytest.raises(TuiwbError, match="transcoders"):
        load_sae(d)
