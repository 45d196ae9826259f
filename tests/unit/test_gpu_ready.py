"""GPU-first defaults checked on the CPU: ``--device auto``, ``--device-map`` (a real two-device split
through accelerate: one block offloaded to disk), the 4-bit compute dtype, ``tuiwb env``, the one-line
out-of-memory error, and the LoRA fit's fp32 solve / block-only refinement against their references."""

import json
import warnings

import pytest
import torch
from factories import FAST_FIT, make_sae, reference_closed_form, save_saes

from tuiwb.errors import ParamError, oom_message
from tuiwb.model import loading
from tuiwb.model.device_map import parse_device_map
from tuiwb.model.loading import load_model, resolve_device
from tuiwb.session.session import Session

PROMPT = "the cat sees a big dog in the park ."
# Layer 1's weights live on disk (meta tensors in memory): accelerate's hooks bring them in per forward.
SPLIT = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers.0": "cpu",
         "model.layers.1": "disk", "model.layers.2": "cpu", "model.norm": "cpu", "lm_head": "cpu"}


# ------------------------------------------------------------------------------------ devices

def test_auto_device_prefers_cuda_then_mps_then_cpu(monkeypatch):
    from tuiwb.model.config import ModelConfig
    from tuiwb.trace.config import TraceConfig

    assert ModelConfig().device == "auto" and TraceConfig(data=["x"], out="o", layers=[0]).device == "auto"
    mps = torch.backends.mps
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == resolve_device(None) == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(mps, "is_available", lambda: True)
    assert resolve_device("auto") == "mps"
    monkeypatch.setattr(mps, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu"
    with pytest.raises(ParamError, match="not available"):
        resolve_device("cuda:0")


def test_4bit_compute_dtype_follows_the_device(monkeypatch):
    assert loading.default_compute_dtype("cpu") == torch.float32
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert loading.default_compute_dtype("cuda") == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert loading.default_compute_dtype("cuda:1") == torch.float16


def test_device_map_parsing():
    assert parse_device_map(None) is None and parse_device_map("") is None
    assert parse_device_map("auto") == "auto" and parse_device_map("balanced") == "balanced"
    assert parse_device_map('{"model.layers.0": 0, "model.layers.1": "cuda:1", "lm_head": "cpu"}') == {
        "model.layers.0": 0, "model.layers.1": "cuda:1", "lm_head": "cpu"}
    for bad, why in (("everywhere", "neither"), ("{nope", "not valid JSON"), ("{}", "empty"),
                     ('{"model.layers.0": "gpu7"}', "not a torch device"), ('{"a": true}', "GPU index")):
        with pytest.raises(ParamError, match=why):
            parse_device_map(bad)


def test_bad_device_map_is_one_line_before_loading(ckpt, cli_error):
    line = cli_error("logits", "--model", ckpt, "--prompt", PROMPT, "--device-map", "{nope")
    assert "--device-map" in line and "JSON" in line


@pytest.fixture(scope="module")
def saes_dir(tmp_path_factory):
    return save_saes(tmp_path_factory.mktemp("saes"), {1: make_sae(1, 32, seed=1), 2: make_sae(2, 32, seed=2)})


def test_two_device_map_runs_logits_hooks_and_lora(ckpt, saes_dir, data, cli):
    split = load_model(str(ckpt), device_map=json.dumps(SPLIT))
    assert any(p.device.type == "meta" for p in split.blocks[1].parameters())  # really offloaded
    assert split.layer_device(1) == torch.device("cpu")  # computes on the CPU, not on "meta"
    whole = load_model(str(ckpt))
    ids = torch.tensor([whole.encode(PROMPT)])
    with torch.no_grad():
        torch.testing.assert_close(split.model(input_ids=ids).logits, whole.model(input_ids=ids).logits)

    # The CLI with a hook patch on the offloaded layer: the same numbers as without the map.
    argv = ["logits", "--model", ckpt, "--prompt", PROMPT, "--saes", saes_dir, "--ablate", "1:1,2,3", "--json"]
    code, out_map, err = cli(*argv, "--device-map", json.dumps(SPLIT))
    assert code == 0, err
    code, out_plain, _ = cli(*argv)
    a, b = json.loads(out_map), json.loads(out_plain)
    assert a["kl"] > 0 and a["kl"] == pytest.approx(b["kl"], rel=1e-4, abs=1e-7)
    assert [t["token"] for t in a["top"]] == [t["token"] for t in b["top"]]

    # A LoRA fitted through the split model (refinement on block 2, run alone) is as faithful.
    s = Session.open(ckpt, saes_dir=saes_dir, data=data, device_map=SPLIT)
    s.fit = FAST_FIT
    s.add_patch(name="abl", layer=2, features=[1, 2, 3], method="lora")
    fid = s.patch("abl")
    base = Session.open(ckpt, saes_dir=saes_dir, data=data)
    base.fit = FAST_FIT
    base.add_patch(name="abl", layer=2, features=[1, 2, 3], method="lora")
    assert fid.fidelity is not None and fid.fidelity == pytest.approx(base.patch("abl").fidelity, rel=0.1, abs=1e-4)
    s.set_enabled(["abl"])
    base.set_enabled(["abl"])
    torch.testing.assert_close(s.next_token_logits(PROMPT), base.next_token_logits(PROMPT), rtol=1e-3, atol=1e-3)


# ------------------------------------------------------------------------------------ env, OOM

def test_env_reports_versions_devices_and_quant_modes(cli):
    code, out, _ = cli("env", "--json")
    assert code == 0
    r = json.loads(out)
    assert r["versions"]["torch"] == torch.__version__
    assert r["auto_device"] == resolve_device("auto")
    assert set(r["quant"]) == {"8bit", "4bit"}
    assert isinstance(r["gpus"], list) and len(r["gpus"]) == torch.cuda.device_count()
    code, text, _ = cli("env")
    assert code == 0 and "--quant 4bit:" in text and "--device auto →" in text


def test_oom_message_names_stage_size_and_flag():
    e = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 23.6 GiB")
    assert oom_message(e, "trace", "batch_size") == (
        "out of memory in trace (tried to allocate 2.00 GiB on the GPU): lower `batch_size`, or load the model "
        "with `quant=4bit`, then rerun")
    cpu = RuntimeError("[enforce fail at alloc_cpu.cpp:117] . DefaultCPUAllocator: not enough memory: "
                       "you tried to allocate 3221225472 bytes.")
    assert "tried to allocate 3.00 GiB on the host" in oom_message(cpu, "ui", "quant=4bit")
    assert "pass `quant=4bit`" in oom_message(cpu, "ui", "quant=4bit")


def test_oom_at_the_cli_is_one_line(ckpt, data, tmp_path, monkeypatch, cli_error):
    def no_memory(*a, **kw):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 512.00 MiB. GPU 0 has 1.2 GiB free")

    monkeypatch.setattr(loading, "load_model", no_memory)
    line = cli_error("trace", "--model", ckpt, "--data", data, "--layer", "1", "--out", tmp_path / "a.parquet")
    assert line == ("tuiwb: error: out of memory in trace (tried to allocate 512.00 MiB on the GPU): lower "
                    "--batch-size, or load the model with --quant 4bit, then rerun")


# ------------------------------------------------------------------------------------ the fit

def test_fp32_solve_matches_the_float64_one_on_badly_scaled_inputs():
    from tuiwb.patch.solve import solve_reduced_rank

    g = torch.Generator().manual_seed(0)
    N, D, d, r = 3000, 96, 16, 4
    X = torch.randn(N, D, generator=g) * torch.logspace(-2, 3, D)  # columns 5 decades apart
    X[:, 7] = 0  # a dead column
    Y = X[:, :40] @ torch.randn(40, d, generator=g) * 1e-2 + torch.randn(N, d, generator=g)
    G, C, yy = X.T @ X, X.T @ Y, float((Y * Y).sum())
    A_ref, B_ref, r2_ref = reference_closed_form(G, C, yy, r, 1e-4)
    sol = solve_reduced_rank(G.clone(), C, yy, r, 1e-4)
    assert sol.r2 == pytest.approx(r2_ref, abs=1e-4)
    torch.testing.assert_close(sol.B @ sol.A_full, B_ref @ A_ref, rtol=2e-3, atol=1e-5)
    assert sol.peak_extra_bytes >= 2 * D * D * 4  # the Gram and its factor, fp32


def test_block_only_error_equals_the_full_forward(ckpt, data):
    """Block L run alone on its recorded inputs gives what the model run up to L gives."""
    from tuiwb.patch.block_refine import block_error, record_block_inputs
    from tuiwb.patch.edit import make_edit
    from tuiwb.patch.lora_fit import encode_texts, factor_hooks

    lm = load_model(str(ckpt))
    edit = make_edit(make_sae(2, 32, seed=2), [1, 2, 3], 0.0)
    seqs = encode_texts(lm, data.read_text().splitlines()[:40], max_len=24)
    names = lm.writer_names(2)
    g = torch.Generator().manual_seed(1)
    factors = {n: (torch.randn(4, lm.writers(2)[k].in_features, generator=g) * 0.01,
                   torch.randn(32, 4, generator=g)) for k, n in names.items()}
    batches = record_block_inputs(lm, edit, 2, seqs, 8, 10_000)
    rel = {n: n.split("layers.2.")[1] for n in names.values()}
    got = block_error(lm.blocks[2], rel, factors, batches)
    num = den = 0.0
    with torch.no_grad(), factor_hooks(lm, factors):
        from tuiwb.model.batching import right_padded

        for (ids, mask, _), b in zip(right_padded(seqs, 8, lm.pad_id, lm.device), batches):
            h = lm.run_to(ids, 2).float()
            num += float(((h - b.target).pow(2).sum(-1) * mask).sum())
            den += b.delta_energy
    assert got == pytest.approx(num / den, rel=1e-5)


def test_4bit_refinement_never_backpropagates_through_4bit_kernels(tmp_path, data):
    from dataclasses import replace

    from factories import tiny_checkpoint

    from tuiwb.patch.edit import make_edit
    from tuiwb.patch.lora_fit import encode_texts, fit_lora

    lm = load_model(str(tiny_checkpoint(tmp_path / "m", d_model=64)), quant="4bit")
    edit = make_edit(make_sae(1, 64), [1, 2, 3], 0.0)
    seqs = encode_texts(lm, data.read_text().splitlines(), max_len=32, max_tokens=2048)
    backprop_through_4bit = []

    def spy(module, args, output):  # a 4-bit kernel whose input carries a gradient
        if torch.is_grad_enabled() and args[0].requires_grad:
            backprop_through_4bit.append(type(module).__name__)

    handles = [m.register_forward_hook(spy) for m in lm.model.modules() if type(m).__name__ == "Linear4bit"]
    assert handles
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rep = fit_lora(lm, edit, seqs, replace(FAST_FIT, refine_skip_below=0.0, refine_steps=20))
    for h in handles:
        h.remove()
    assert rep.refine_steps > 0 and rep.refine_seconds > 0
    assert backprop_through_4bit == []
    assert not [w for w in caught if "autograd kernel was not registered" in str(w.message)]
    assert rep.rel_err_refined is not None and rep.rel_err_refined < 1.0
    assert rep.peak_extra_bytes > 0 and rep.solve_seconds > 0


def test_features_say_why_logit_effects_are_missing(tmp_path, monkeypatch, cli):
    """At any width, `top_logits` is empty only without the model; the CLI says so instead of staying silent."""
    from factories import make_acts

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    model, acts = make_acts(tmp_path, n_docs=60)
    sae = save_saes(tmp_path / "saes", {1: make_sae(1, 32, d_sae=128)}) / "layer_1"
    code, out, err = cli("features", "--acts", acts, "--sae", sae, "--json", "--top", "3")
    assert code == 0 and all(r["top_logits"] == [] for r in json.loads(out)["features"])
    assert "no logit effects" in err and "--model" in err
    code, out, err = cli("features", "--acts", acts, "--sae", sae, "--model", model, "--json", "--top", "3")
    assert code == 0 and all(len(r["top_logits"]) > 0 for r in json.loads(out)["features"])
    assert "no logit effects" not in err
