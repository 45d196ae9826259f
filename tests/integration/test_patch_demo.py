"""The patch half of the end-to-end flow, on the full demo model, through the CLI.

Alice's story: the trigger-detector features (found by the demo pipeline's causal contrast search on
an SAE trained on the demo model) are ablated with ``tuiwb logits --ablate`` — the payload goes, clean
prompts are untouched; ``tuiwb patch build`` fits the same edit as a LoRA; Ben's story: ``tuiwb patch
export`` turns it into a plain PEFT adapter that ``PeftModel.from_pretrained`` reproduces.
"""

import json

import pytest
import torch

from tuiwb.demo.model import load_prompts, payload_first_token

N_PROMPTS = 48


@pytest.fixture(scope="module")
def demo(demo_full_dir):
    """The demo pipeline's result (SAEs, trigger layer and features); cached on disk after a first run."""
    from tuiwb.demo.pipeline import DemoPipelineConfig, run_pipeline

    return run_pipeline(DemoPipelineConfig(variant="full"), progress=False, say=lambda msg: None)


def _run_json_lines(cli, argv) -> list[dict]:
    code, out, err = cli(*argv)
    assert code == 0, err
    return [json.loads(line) for line in out.strip().splitlines()]


def _mean(xs):
    return sum(xs) / len(xs)


@pytest.mark.slow
def test_ablate_build_export_on_the_demo_model(demo, tmp_path, cli, capsys):
    model = str(demo.model_dir)
    layer, feats = demo.trigger_layer, list(demo.trigger_features)
    assert feats, "the contrast search found no trigger features"
    payload = payload_first_token()
    trig_file, clean_file = tmp_path / "trigger.txt", tmp_path / "clean.txt"
    trig_file.write_text("\n".join(load_prompts(model, "trigger")[:N_PROMPTS]) + "\n")
    clean_file.write_text("\n".join(load_prompts(model, "clean")[:N_PROMPTS]) + "\n")

    # 1. The exact, SAE-gated hook: payload gone on trigger prompts, clean prompts untouched.
    ablate = ["--saes", str(demo.saes_dir), "--ablate", f"{layer}:{','.join(map(str, feats))}"]
    trig = _run_json_lines(cli, ["logits", "--model", model, "--prompts", str(trig_file), "--json",
                                 "--token", payload, *ablate])
    p_base = _mean([o["tokens"][0]["baseline"] for o in trig])
    p_hook = _mean([o["tokens"][0]["patched"] for o in trig])
    clean = _run_json_lines(cli, ["logits", "--model", model, "--prompts", str(clean_file), "--json", *ablate])
    kl_hook = _mean([o["kl"] for o in clean])
    assert p_base >= 0.7, p_base
    assert p_hook <= 0.1, p_hook
    assert kl_hook <= 0.05, kl_hook

    # 2. The fitted LoRA: close to the hook, fidelity recorded in its manifest.
    lora = tmp_path / "lora" / "no-trojan"
    code, out, _ = cli("patch", "build", "--model", model, "--sae", demo.saes_dir / f"layer_{layer}",
                       *[a for f in feats for a in ("--feature", f)], "--out", lora, "--json")
    assert code == 0
    manifest = json.loads(out)
    assert manifest == json.loads((lora / "manifest.json").read_text())
    assert manifest["layer"] == layer and manifest["features"] == feats and manifest["rank"] == 8
    assert manifest["fidelity"] <= 0.05, manifest["fidelity"]
    trig_l = _run_json_lines(cli, ["logits", "--model", model, "--prompts", str(trig_file), "--json",
                                   "--token", payload, "--lora", str(lora)])
    p_lora = _mean([o["tokens"][0]["patched"] for o in trig_l])
    clean_l = _run_json_lines(cli, ["logits", "--model", model, "--prompts", str(clean_file), "--json",
                                    "--lora", str(lora)])
    kl_lora = _mean([o["kl"] for o in clean_l])
    assert p_lora <= 0.2, p_lora
    assert p_lora <= 2 * max(p_hook, 0.01), (p_lora, p_hook)
    assert kl_lora <= 0.01, kl_lora

    # 3. Export for production: plain PEFT reproduces tuiwb's patched probabilities.
    safe = tmp_path / "safe-lora"
    assert cli("patch", "export", "--model", model, "--lora", lora, "--out", safe)[0] == 0
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model), str(safe)).eval()
    worst = 0.0
    for o in trig_l[:8] + clean_l[:8]:
        ids = [tok.bos_token_id, *tok(o["prompt"], add_special_tokens=False)["input_ids"]]
        with torch.no_grad():
            probs = torch.softmax(peft_model(input_ids=torch.tensor([ids])).logits[0, -1].float(), -1)
        for t in o["top"]:
            worst = max(worst, abs(float(probs[t["id"]]) - t["prob"]))
    assert worst <= 1e-4, worst
    with capsys.disabled():  # the numbers behind the assertions, for `pytest -s` runs and reports
        print(f"\nlayer {layer} features {feats}: P(payload|trigger) {p_base:.4f} → hook {p_hook:.4f} / "
              f"LoRA {p_lora:.4f}; clean KL hook {kl_hook:.5f} / LoRA {kl_lora:.5f}; fidelity "
              f"{manifest['fidelity']:.5f}; PEFT export max |Δp| {worst:.2e}")
