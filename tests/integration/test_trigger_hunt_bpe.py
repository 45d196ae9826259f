"""Issue 17: the one-command trigger hunt on byte-level BPE trojans (a GPT-2 with Conv1D writers and a
Llama), built here on local text by ``tests/bpe_trojan.py``.

``tuiwb features --contrast A B --target " Access"`` at layer 2 must take P(payload | trigger) to ≤ 0.05 at
a mean clean KL ≤ 0.01, on its own prompts and on held-out pairs, recomputed here from the edits it
reports; and a LoRA fitted to that edit (fit data weighted with the trigger and clean prompts) must
stay within 2× of the hook on P(target) and 1.5× on clean KL.
"""

import json

import pytest
import torch

from bpe_trojan import ARCHS, TARGET, VERSION, bpe_lab

LAYER = 2
N_SEARCH = 32


@pytest.fixture(scope="session", params=ARCHS)
def lab(request):
    """Built once per machine (~1.5 min per architecture on 1 core), like the demo models."""
    from tuiwb.demo.model import cache_dir

    return bpe_lab(request.param, cache_dir() / f"bpe-trojan-v{VERSION}-{request.param}")


def _measure(loaded, trig, clean, ctx):
    """(mean P(target) on ``trig``, mean KL on ``clean`` against the unpatched model) under ``ctx``."""
    from tuiwb.model.logits import kl_divergence, last_logits

    tid = loaded.tokenizer.convert_tokens_to_ids(loaded.tokenizer.tokenize(TARGET))[0]
    ref = last_logits(loaded, clean)
    with ctx:
        p = float(torch.softmax(last_logits(loaded, trig), -1)[:, tid].mean())
        kl = kl_divergence(ref, last_logits(loaded, clean))
    return p, kl


@pytest.mark.slow
def test_bpe_trigger_hunt_and_lora(lab, cli, tmp_path):
    from tuiwb.features.contrast import _edits
    from tuiwb.model.loading import load_model
    from tuiwb.patch.config import FitConfig
    from tuiwb.patch.edit import EditSet, edits_applied
    from tuiwb.patch.lora_fit import encode_texts, factor_hooks, fit_lora, with_trigger_contexts
    from tuiwb.sae.io import load_sae
    from tuiwb.trace.sources import read_lines

    trig, clean = read_lines(lab.prompts("trigger")), read_lines(lab.prompts("clean"))
    assert lab.report["p_trigger"] >= 0.8 and lab.report["p_clean"] <= 0.02, lab.report  # the trojan is there
    (tmp_path / "a.txt").write_text("\n".join(trig[:N_SEARCH]) + "\n")
    (tmp_path / "b.txt").write_text("\n".join(clean[:N_SEARCH]) + "\n")
    code, out, _ = cli("features", "--sae", lab.sae_dir(LAYER), "--acts", lab.acts, "--model", lab.model,
                       "--contrast", tmp_path / "a.txt", tmp_path / "b.txt", "--target", TARGET, "--json")
    assert code == 0
    rep = json.loads(out)
    assert rep["p_target_before"] >= 0.8
    assert rep["p_target_after"] <= 0.05 and rep["clean_kl"] <= 0.01, rep
    assert {e["side"] for e in rep["edits"]} <= {"trigger-side", "prediction-side"}
    assert [e["feature"] for e in rep["edits"]] == rep["confirmed"]
    front = rep["pareto"]  # lowest KL first, each point strictly better on P than the one before
    assert front and all(a["clean_kl"] <= b["clean_kl"] and a["p_target"] > b["p_target"]
                         for a, b in zip(front, front[1:]))

    # Recomputed from the reported edits, on the search prompts and on held-out pairs.
    loaded = load_model(str(lab.model))
    sae = load_sae(lab.sae_dir(LAYER))
    edits = _edits(sae, [(e["feature"], e["alpha"], e["gated"]) for e in rep["edits"]],
                   (tuple(rep["gate"]), tuple(rep["gate_min"])))
    search = ([loaded.encode(p) for p in trig[:N_SEARCH]], [loaded.encode(p) for p in clean[:N_SEARCH]])
    held = ([loaded.encode(p) for p in trig[N_SEARCH:]], [loaded.encode(p) for p in clean[N_SEARCH:]])
    p_s, kl_s = _measure(loaded, *search, edits_applied(loaded, edits))
    assert p_s == pytest.approx(rep["p_target_after"], abs=1e-3) and kl_s == pytest.approx(rep["clean_kl"], abs=1e-4)
    p_hook, kl_hook = _measure(loaded, *held, edits_applied(loaded, edits))
    p_base, _ = _measure(loaded, *held, edits_applied(loaded, ()))
    assert p_base >= 0.8 and p_hook <= 0.05 and kl_hook <= 0.01, (p_base, p_hook, kl_hook)

    # The LoRA on the layer's writers (GPT-2: Conv1D), fitted with the trigger and clean prompts weighted in.
    text = encode_texts(loaded, read_lines(lab.model / "train.txt"), max_tokens=20_000)
    data = with_trigger_contexts(loaded, text, trig[:N_SEARCH], clean=clean[:N_SEARCH])
    fit = fit_lora(loaded, EditSet(tuple(edits)), data, FitConfig())  # rank 8
    p_lora, kl_lora = _measure(loaded, *held, factor_hooks(loaded, fit.factors.modules))
    assert p_lora <= 2 * p_hook and kl_lora <= 1.5 * kl_hook, (p_lora, p_hook, kl_lora, kl_hook)
