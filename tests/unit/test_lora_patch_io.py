"""LoRA patches on disk and on the command line: manifest + PEFT adapter, export, import checks, 4-bit."""

import json
import shutil

import pytest
import torch
from factories import FAST_FIT, make_sae, save_saes, tiny_checkpoint

from tuiwb.errors import TuiwbError
from tuiwb.model.loading import load_model
from tuiwb.patch.io import read_patch
from tuiwb.session.session import Session

PROMPT = "the cat sees a big dog in the park ."


@pytest.fixture(scope="module")
def saes_dir(tmp_path_factory, ckpt):
    return save_saes(tmp_path_factory.mktemp("saes"), {1: make_sae(1, 32, seed=1), 2: make_sae(2, 32, seed=2)})


@pytest.fixture(scope="module")
def built(tmp_path_factory, ckpt, saes_dir, data):
    """Two LoRA patches (layers 1 and 2) saved as lora/NAME, plus the session's patched probabilities."""
    out = tmp_path_factory.mktemp("lora")
    s = Session.open(ckpt, saes_dir=saes_dir, data=data)
    s.fit = FAST_FIT
    s.add_patch(name="abl", layer=1, features=[1, 2, 3], method="lora")
    s.add_patch(name="amp", layer=2, features=[5], mode="scale=3", method="lora", rank=4)
    s.save_lora("abl", out / "abl")
    s.save_lora("amp", out / "amp")
    probs = {}
    for state in (["abl"], ["amp"], ["abl", "amp"]):
        s.set_enabled(state)
        probs[tuple(state)] = torch.softmax(s.next_token_logits(PROMPT), -1)
    return out, probs


def _peft_probs(ckpt, adapter_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    lm = load_model(str(ckpt))
    base = AutoModelForCausalLM.from_pretrained(ckpt).eval()
    model = PeftModel.from_pretrained(base, str(adapter_dir)).eval()
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([lm.encode(PROMPT)])).logits[0, -1]
    return torch.softmax(logits.float(), -1)


def test_manifest_records_the_patch_and_its_base(built, ckpt):
    out, _ = built
    m = json.loads((out / "abl" / "manifest.json").read_text())
    lm = load_model(str(ckpt))
    assert m["name"] == "abl" and m["layer"] == 1 and m["features"] == [1, 2, 3] and m["mode"] == "ablate"
    assert m["rank"] == 8 and m["config_hash"] == lm.config_hash and m["base_model"] == str(ckpt)
    assert m["d_model"] == 32 and m["n_layers"] == 3
    assert sorted(m["target_modules"]) == sorted(lm.writer_names(1).values())
    assert isinstance(m["fidelity"], float) and m["fidelity"] >= 0
    assert m["created"] and m["tuiwb_version"]
    assert json.loads((out / "amp" / "manifest.json").read_text())["rank"] == 4
    cfg = json.loads((out / "abl" / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == 8
    assert not list(out.glob(".*tmp*"))  # no half-written leftovers


def test_peft_loads_a_patch_and_reproduces_the_session(built, ckpt):
    out, probs = built
    torch.testing.assert_close(_peft_probs(ckpt, out / "abl"), probs[("abl",)], rtol=0, atol=1e-5)
    torch.testing.assert_close(_peft_probs(ckpt, out / "amp"), probs[("amp",)], rtol=0, atol=1e-5)


def test_export_merges_patches_into_one_adapter(built, ckpt, tmp_path, cli):
    out, probs = built
    code, stdout, _ = cli("patch", "export", "--model", ckpt, "--lora", out / "abl", "--lora", out / "amp",
                          "--out", tmp_path / "safe")
    assert code == 0 and "2 patch(es)" in stdout
    torch.testing.assert_close(_peft_probs(ckpt, tmp_path / "safe"), probs[("abl", "amp")], rtol=0, atol=1e-5)
    m = json.loads((tmp_path / "safe" / "manifest.json").read_text())
    assert [p["name"] for p in m["patches"]] == ["abl", "amp"]
    with pytest.raises(TuiwbError, match="merged export"):
        read_patch(tmp_path / "safe")
    # Two patches on the same modules: their ranks concatenate, the updates add.
    s = Session.open(ckpt, lora_dirs=[out / "abl"])
    s.attach_lora(out / "abl", name="abl2")
    both = torch.softmax(s.next_token_logits(PROMPT), -1)
    s.export(["abl", "abl2"], tmp_path / "double")
    assert json.loads((tmp_path / "double" / "adapter_config.json").read_text())["r"] == 16
    torch.testing.assert_close(_peft_probs(ckpt, tmp_path / "double"), both, rtol=0, atol=1e-5)
    assert not torch.allclose(both, probs[("abl",)], atol=1e-6)


def test_importing_patches_elsewhere_attaches_them(built, ckpt, saes_dir):
    out, probs = built
    s = Session.open(ckpt, saes_dir=saes_dir, lora_dirs=[out / "abl", out / "amp"])
    assert [(p.name, p.method, p.enabled) for p in s.patches] == [("abl", "lora", True), ("amp", "lora", True)]
    assert s.patch("abl").fidelity == json.loads((out / "abl" / "manifest.json").read_text())["fidelity"]
    torch.testing.assert_close(torch.softmax(s.next_token_logits(PROMPT), -1), probs[("abl", "amp")],
                               rtol=0, atol=1e-6)
    s.set_enabled([])
    assert torch.equal(s.next_token_logits(PROMPT), s.next_token_logits(PROMPT, patched=False))
    with pytest.raises(TuiwbError, match="already attached"):
        s.attach_lora(out / "abl")


def test_base_model_mismatch_is_refused(built, tmp_path, cli_error):
    out, _ = built
    other = tiny_checkpoint(tmp_path / "two_layers", n_layers=2)
    with pytest.raises(TuiwbError, match=r"different base model.*n_layers 3 ≠ 2"):
        Session.open(other, lora_dirs=[out / "abl"])
    # Same shapes, different config (another norm epsilon): the config hash alone refuses it.
    same_shape = tmp_path / "eps"
    shutil.copytree(tiny_checkpoint(tmp_path / "orig"), same_shape)
    cfg = json.loads((same_shape / "config.json").read_text())
    cfg["rms_norm_eps"] = 1e-3
    (same_shape / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(TuiwbError, match="different base model.*config_hash"):
        Session.open(same_shape, lora_dirs=[out / "abl"])
    err = cli_error("logits", "--model", other, "--prompt", "a cat", "--lora", out / "abl")
    assert "different base model" in err


def test_broken_patch_directories_are_refused(built, tmp_path):
    out, _ = built
    with pytest.raises(TuiwbError, match="does not exist"):
        read_patch(tmp_path / "nope")
    broken = tmp_path / "broken"
    shutil.copytree(out / "abl", broken)
    (broken / "adapter_model.safetensors").unlink()
    with pytest.raises(TuiwbError, match="has no adapter_model.safetensors"):
        read_patch(broken)


@pytest.mark.parametrize("quant", ["4bit", "8bit"])
def test_lora_patch_on_a_quantized_model(tmp_path, data, quant):
    ckpt = tiny_checkpoint(tmp_path / "m", d_model=64)
    lm = load_model(str(ckpt), quant=quant)
    s = Session(lm, {1: make_sae(1, 64)}, fit=FAST_FIT, data=data)
    base = s.next_token_logits(PROMPT)
    s.add_patch(name="q", layer=1, features=[1, 2, 3], enabled=False)
    hook_on = s.toggle("q", True) and s.next_token_logits(PROMPT)
    s.toggle("q", False)
    fid = s.build_lora("q")
    wrapped = type(lm.writers(1)["mlp_out"]).__name__
    assert wrapped == ("Linear4bit" if quant == "4bit" else "Linear8bitLt")
    assert type(lm.writers(1)["mlp_out"]).__module__.startswith("peft")
    s.toggle("q", True)
    lora_on = s.next_token_logits(PROMPT)
    assert torch.isfinite(lora_on).all() and not torch.equal(lora_on, base)
    # Closer to the exact edit than the unpatched model is.
    assert (lora_on - hook_on).abs().max() < (base - hook_on).abs().max()
    assert fid >= 0
    s.toggle("q", False)
    assert torch.equal(s.next_token_logits(PROMPT), base)
    with torch.no_grad():
        assert torch.equal(lm.model(torch.tensor([lm.encode(PROMPT)])).logits[0, -1].float(), base)
    s.save_lora("q", tmp_path / "lora_q")
    assert read_patch(tmp_path / "lora_q").manifest["config_hash"] == lm.config_hash


# ----------------------------------------------------------------------------------------- CLI

def test_logits_cli_with_hook_and_lora_patches(built, ckpt, saes_dir, cli):
    out, probs = built
    code, stdout, _ = cli("logits", "--model", ckpt, "--prompt", PROMPT, "--saes", saes_dir, "--ablate", "1:1,2,3",
                          "--scale", "2:5=3", "--top", "4", "--json", "--token", "park")
    assert code == 0
    obj = json.loads(stdout)
    assert set(obj) >= {"prompt", "top", "baseline", "kl", "tokens"}
    assert len(obj["top"]) == len(obj["baseline"]) == 4
    assert obj["kl"] > 0
    s = Session.open(ckpt, saes_dir=saes_dir)
    s.add_patch(layer=1, features=[1, 2, 3])
    s.add_patch(layer=2, features=[5], mode="scale=3")
    want = torch.softmax(s.next_token_logits(PROMPT), -1)
    assert [t["id"] for t in obj["top"]] == want.topk(4).indices.tolist()
    assert [t["prob"] for t in obj["top"]] == pytest.approx(want.topk(4).values.tolist(), abs=1e-6)
    park = s.loaded.tokenizer.convert_tokens_to_ids("park")
    assert obj["tokens"][0]["patched"] == pytest.approx(float(want[park]), abs=1e-6)

    code, stdout, _ = cli("logits", "--model", ckpt, "--prompt", PROMPT, "--lora", out / "abl", "--json")
    assert code == 0
    obj = json.loads(stdout)
    assert obj["top"][0]["prob"] == pytest.approx(float(probs[("abl",)].max()), abs=1e-6)
    assert obj["kl"] >= 0 and "baseline" in obj


@pytest.mark.parametrize("argv,message", [
    (["--ablate", "1-3"], "bad --ablate '1-3'"),
    (["--ablate", "1:"], "bad --ablate"),
    (["--scale", "1:3"], "bad --scale"),
    (["--scale", "1:3=big"], "bad --scale '1:3=big': ALPHA 'big' is not a number"),  # its own syntax
    (["--saes", "SAES", "--ablate", "1:999"], "feature 999 does not exist"),
    (["--saes", "SAES", "--ablate", "0:1"], "no SAE attached at layer 0"),
])
def test_logits_cli_patch_errors(ckpt, saes_dir, cli_error, argv, message):
    argv = [saes_dir if a == "SAES" else a for a in argv]
    assert message in cli_error("logits", "--model", ckpt, "--prompt", "a cat", *argv)


def test_ablate_needs_saes(ckpt, cli_error):
    assert "--saes" in cli_error("logits", "--model", ckpt, "--prompt", "a cat", "--ablate", "1:2")


def test_patch_build_cli(ckpt, saes_dir, data, tmp_path, cli, cli_error):
    out = tmp_path / "lora" / "cli_patch"
    argv = ["patch", "build", "--model", str(ckpt), "--sae", str(saes_dir / "layer_1"), "--feature", "1",
            "--feature", "2,3", "--rank", "4", "--data", str(data), "--refine-steps", "20", "--fit-tokens",
            "1024", "--out", str(out)]
    code, stdout, _ = cli(*argv, "--json")
    assert code == 0
    m = json.loads(stdout)
    assert m["name"] == "cli_patch" and m["features"] == [1, 2, 3] and m["rank"] == 4
    assert m["fidelity"] == read_patch(out).manifest["fidelity"]
    assert "already exists" in cli_error(*argv)
    assert cli(*argv, "--force", "--mode", "scale=0.5")[0] == 0
    assert read_patch(out).manifest["mode"] == "scale=0.5"
    code, stdout, _ = cli("patch", "show", out)
    assert code == 0 and "cli_patch: layer 1" in stdout


@pytest.mark.parametrize("extra,message", [
    (["--rank", "3"], "out of range: use 4..16"),
    (["--rank", "17"], "out of range: use 4..16"),
    (["--feature", "x"], "bad --feature"),
    (["--feature", "64"], "feature 64 does not exist"),
    (["--mode", "mute"], "bad patch mode"),
])
def test_patch_build_cli_errors(ckpt, saes_dir, data, tmp_path, cli_error, extra, message):
    argv = ["patch", "build", "--model", str(ckpt), "--sae", str(saes_dir / "layer_1"), "--feature", "1",
            "--data", str(data), "--out", str(tmp_path / "x"), *extra]
    assert message in cli_error(*argv)
    assert not (tmp_path / "x").exists()


def test_logits_cli_prompts_file_prints_json_lines(ckpt, saes_dir, tmp_path, cli):
    f = tmp_path / "prompts.txt"
    f.write_text("the cat sees\n\na big dog runs\n")
    code, stdout, _ = cli("logits", "--model", ckpt, "--prompts", f, "--saes", saes_dir, "--ablate", "1:1,2",
                          "--json", "--top", "3")
    assert code == 0
    lines = stdout.strip().splitlines()
    objs = [json.loads(line) for line in lines]
    assert [o["prompt"] for o in objs] == ["the cat sees", "a big dog runs"]
    s = Session.open(ckpt, saes_dir=saes_dir)
    s.add_patch(layer=1, features=[1, 2])
    for o in objs:
        assert o["kl"] == pytest.approx(s.logits(o["prompt"]).kl, rel=1e-5, abs=1e-9)


@pytest.mark.parametrize("model_type", ["gpt2", "gpt_neox", "qwen3", "gemma2", "mistral", "qwen2"])
def test_lora_patch_on_every_architecture(tmp_path, data, model_type):
    from tiny_models import make_tiny_checkpoint

    ckpt = make_tiny_checkpoint(tmp_path / model_type, model_type, n_layers=3, d_model=32)
    lm = load_model(str(ckpt))
    s = Session(lm, {1: make_sae(1, 32)}, fit=FAST_FIT, data=data)
    base = s.next_token_logits(PROMPT)
    s.add_patch(name="p", layer=1, features=[1, 2, 3], method="lora")
    patched = torch.softmax(s.next_token_logits(PROMPT), -1)
    assert not torch.equal(patched, torch.softmax(base, -1))
    s.save_lora("p", tmp_path / "lora")
    torch.testing.assert_close(_peft_probs(ckpt, tmp_path / "lora"), patched, rtol=0, atol=1e-5)
    s.toggle("p", False)
    assert torch.equal(s.next_token_logits(PROMPT), base)
