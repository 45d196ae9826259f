"""The SAE module: encode/decode semantics, decoder constraints, norm folding, save → load."""

import json

import pytest
import torch
from factories import make_sae
from safetensors.torch import load_file

from tuiwb.sae.io import save_sae
from tuiwb.errors import TuiwbError
from tuiwb.sae.model import SAE, SAEConfig
from tuiwb.sae.io import load_sae, load_saes


def make(arch="topk", d_in=16, d_sae=64, k=4, layer=1, seed=0, **kw):
    """``make_sae`` (16 → 64, TopK by default) with random biases (and JumpReLU thresholds)."""
    sae = make_sae(layer, d_in, d_sae, arch, k=k, seed=seed, **kw)
    with torch.no_grad():  # non-trivial biases so every term of the maps is exercised
        sae.b_enc.normal_(0, 0.1)
        sae.b_dec.normal_(0, 0.5)
        if arch == "jumprelu":
            sae.threshold.uniform_(0, 0.3)
    return sae


def reference(sae, x):
    """The maps written out from the raw parameters."""
    W_enc, b_enc, W_dec, b_dec = (sae.W_enc.detach(), sae.b_enc.detach(), sae.W_dec.detach(), sae.b_dec.detach())
    pre = (x - b_dec) @ W_enc + b_enc
    if sae.cfg.architecture == "relu":
        a = pre.clamp_min(0)
    elif sae.cfg.architecture == "topk":
        kth = pre.sort(-1, descending=True).values[..., sae.cfg.k - 1: sae.cfg.k]
        a = torch.where(pre >= kth, pre.clamp_min(0), torch.zeros_like(pre))
    else:
        a = torch.where(pre > sae.threshold.detach(), pre.clamp_min(0), torch.zeros_like(pre))
    return a, a @ W_dec + b_dec


@pytest.mark.parametrize("arch", ["relu", "topk", "jumprelu"])
def test_encode_decode_match_the_written_out_maps(arch):
    sae = make(arch)
    x = torch.randn(3, 5, 16)  # [batch, pos, d_in]
    a_ref, x_ref = reference(sae, x)
    with torch.no_grad():
        a = sae.encode(x)
        assert a.shape == (3, 5, 64)
        torch.testing.assert_close(a, a_ref)
        torch.testing.assert_close(sae.decode(a), x_ref)
        torch.testing.assert_close(sae(x), x_ref)


def test_topk_keeps_at_most_k_latents_and_sparse_decode_agrees():
    sae = make("topk", k=5)
    x = torch.randn(50, 16)
    with torch.no_grad():
        a = sae.encode(x)
        assert ((a > 0).sum(-1) <= 5).all() and ((a > 0).sum(-1) == 5).float().mean() > 0.5
        vals, idx = sae.encode_topk(x)
        torch.testing.assert_close(sae.decode_sparse(vals, idx), sae.decode(a))


def test_init_is_unit_norm_and_tied():
    sae = SAE(SAEConfig(d_in=8, d_sae=32, k=4))
    torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.ones(32))
    torch.testing.assert_close(sae.W_enc, sae.W_dec.t())


def test_parallel_grad_removed_and_rows_renormalised():
    sae = make("topk")
    sae.W_dec.grad = torch.randn_like(sae.W_dec)
    sae.remove_parallel_decoder_grad()
    torch.testing.assert_close((sae.W_dec.grad * sae.W_dec).sum(-1), torch.zeros(64), atol=1e-5, rtol=0)
    with torch.no_grad():
        sae.W_dec.mul_(torch.rand(64, 1) + 0.5)
    sae.normalize_decoder()
    torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.ones(64))


@pytest.mark.parametrize("arch", ["relu", "topk", "jumprelu"])
def test_fold_input_scale_gives_the_native_scale_sae(arch):
    sae = make(arch)
    x = torch.randn(20, 16) * 7.0
    scale = 0.37
    with torch.no_grad():
        expected = sae(x * scale) / scale  # the SAE trained on scaled inputs, mapped back
        w_dec = sae.W_dec.clone()
        sae.fold_input_scale(scale)
        torch.testing.assert_close(sae(x), expected, rtol=1e-4, atol=1e-4)
    assert torch.equal(sae.W_dec, w_dec)
    assert sae.cfg.norm_scaling_factor == pytest.approx(scale)


def test_save_load_round_trip_is_exact(tmp_path):
    sae = make("topk", model_name="demo", model_config_hash="abc123", trace_manifest_hash="ffee",
               norm_scaling_factor=2.5, training={"lr": 0.004}, metrics={"fvu": 0.1})
    save_sae(sae, tmp_path / "layer_1")
    back = load_sae(tmp_path / "layer_1")
    for name, t in sae.state_dict().items():
        assert torch.equal(back.state_dict()[name], t), name
    assert back.cfg == sae.cfg
    x = torch.randn(7, 16)
    with torch.no_grad():
        assert torch.equal(back(x), sae(x))


def test_saved_files_use_the_saelens_layout(tmp_path):
    sae = make("relu", model_name="demo", model_config_hash="h1")
    save_sae(sae, tmp_path / "s")
    cfg = json.loads((tmp_path / "s" / "cfg.json").read_text())
    assert (cfg["d_in"], cfg["d_sae"], cfg["architecture"]) == (16, 64, "standard")
    assert cfg["metadata"]["model_name"] == "demo"
    assert cfg["metadata"]["hook_name"] == "blocks.1.hook_resid_post"
    assert cfg["normalize_activations"] == "none"
    assert cfg["tuiwb"]["layer"] == 1 and cfg["tuiwb"]["model_config_hash"] == "h1"
    w = load_file(str(tmp_path / "s" / "sae_weights.safetensors"))
    assert {k: tuple(v.shape) for k, v in w.items()} == {
        "W_enc": (16, 64), "W_dec": (64, 16), "b_enc": (64,), "b_dec": (16,)}


def test_save_replaces_an_existing_directory_whole(tmp_path):
    save_sae(make("topk", seed=0), tmp_path / "layer_1")
    (tmp_path / "layer_1" / "stale.txt").write_text("old")
    second = make("topk", seed=1)
    save_sae(second, tmp_path / "layer_1")
    assert not (tmp_path / "layer_1" / "stale.txt").exists()
    assert torch.equal(load_sae(tmp_path / "layer_1").W_enc, second.W_enc)
    assert [p.name for p in tmp_path.iterdir()] == ["layer_1"]  # no temp dirs left behind


def test_load_saes_reads_every_layer_dir(tmp_path):
    save_sae(make(layer=0), tmp_path / "layer_0")
    save_sae(make(layer=2, seed=3), tmp_path / "layer_2")
    (tmp_path / "logs").mkdir()
    saes = load_saes(tmp_path)
    assert sorted(saes) == [0, 2]
    assert saes[2].layer == 2 and saes[2].hook_name == "blocks.2.hook_resid_post"


def test_load_saes_refuses_a_misfiled_sae_and_an_empty_root(tmp_path):
    save_sae(make(layer=3), tmp_path / "layer_1")
    with pytest.raises(TuiwbError, match="layer 3"):
        load_saes(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(TuiwbError, match="no layer_N"):
        load_saes(tmp_path / "empty")


@pytest.mark.parametrize("kw", [dict(d_in=0, d_sae=4), dict(d_in=4, d_sae=8, architecture="gated"),
                                dict(d_in=4, d_sae=8, architecture="topk", k=None),
                                dict(d_in=4, d_sae=8, architecture="topk", k=9)])
def test_config_validation(kw):
    with pytest.raises(TuiwbError):  # one-line, user-facing: never a bare ValueError
        SAEConfig(**kw)
