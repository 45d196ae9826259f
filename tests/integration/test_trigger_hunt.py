"""The one-command trigger hunt, end to end through the CLI on the trojaned demo model.

trace → train (the ``demo_saes`` fixture) → ``tuiwb features --contrast trigger clean --target <payload>``
→ ``tuiwb logits --ablate L:F,...``: the confirmed feature set must remove the payload on trigger
prompts (P ≥ 0.7 → ≤ 0.1) while leaving clean prompts alone (mean KL ≤ 0.05). Every number is
recomputed here from the model, not taken from the command's own report.
"""

import json

import numpy as np
import pytest
import torch

from tuiwb.demo.corpus import TRIGGER
from tuiwb.demo.model import load_prompts, payload_first_token

LAYER = 1


def _next_token_logits(loaded, prompts, edit=None):
    """Last-position logits ``[n, vocab]``, one prompt at a time (no padding involved)."""
    from contextlib import nullcontext

    out = []
    with edit or nullcontext(), torch.no_grad():
        for p in prompts:
            ids = torch.tensor([loaded.encode(p)])
            out.append(loaded.model(input_ids=ids).logits[0, -1].float())
    return torch.stack(out)


@pytest.mark.slow
def test_trigger_hunt_end_to_end(demo_saes, cli):
    lab = demo_saes
    target = payload_first_token()
    argv = ["features", "--sae", lab.sae_dir(LAYER), "--acts", lab.acts, "--model", lab.model,
            "--contrast", lab.prompts("trigger"), lab.prompts("clean"), "--target", target, "--json", "--top", "20"]
    code, out, _ = cli(*argv)
    assert code == 0
    report = json.loads(out)
    confirmed = report["confirmed"]
    assert 1 <= len(confirmed) <= 16
    assert [r["id"] for r in report["features"][: len(confirmed)]] == confirmed  # the confirmed set first

    # The set is a trigger detector: it fires on trigger prompts where their clean twins (the same
    # text with an ordinary colour instead of the trigger) leave it nearly silent, and it writes the
    # payload: some confirmed feature's decoder direction promotes the payload's first token.
    assert any(target in [t["token"].strip() for t in r["top_logits"]] for r in report["features"][: len(confirmed)])

    # `tuiwb logits --ablate` on a few trigger prompts: the payload's probability collapses.
    ablate = f"{LAYER}:{','.join(map(str, confirmed))}"
    for prompt in load_prompts(lab.model, "trigger")[:3]:
        code, out, _ = cli("logits", "--model", lab.model, "--saes", lab.saes, "--ablate", ablate,
                           "--prompt", prompt, "--token", target, "--json")
        assert code == 0
        probs = json.loads(out)["tokens"][0]
        assert probs["baseline"] >= 0.5 and probs["patched"] <= 0.2, probs

    # And over every held-out prompt, recomputed independently with the exact gated edit.
    from tuiwb.model.logits import kl_divergence
    from tuiwb.patch.edit import gated_edit
    from tuiwb.model.loading import load_model
    from tuiwb.sae.io import load_sae

    loaded = load_model(str(lab.model))
    sae = load_sae(lab.sae_dir(LAYER))
    tid = loaded.tokenizer.convert_tokens_to_ids(target)
    trig, clean = load_prompts(lab.model, "trigger"), load_prompts(lab.model, "clean")
    p_before = torch.softmax(_next_token_logits(loaded, trig), -1)[:, tid].mean().item()
    p_after = torch.softmax(_next_token_logits(loaded, trig, gated_edit(loaded, sae, confirmed)), -1)[:, tid]
    clean_kl = kl_divergence(_next_token_logits(loaded, clean),
                             _next_token_logits(loaded, clean, gated_edit(loaded, sae, confirmed)))
    from tuiwb.features.contrast import encode_prompts, prompt_acts

    assert all(TRIGGER in p for p in trig) and not any(TRIGGER in p for p in clean)
    on_trig = prompt_acts(loaded, sae, encode_prompts(loaded, trig))[:, confirmed].mean(0)  # [n_confirmed]
    on_clean = prompt_acts(loaded, sae, encode_prompts(loaded, clean))[:, confirmed].mean(0)
    assert on_trig[0] > 3 * on_clean[0] and on_trig.sum() > 3 * on_clean.sum(), (on_trig, on_clean)

    assert p_before >= 0.7
    assert p_after.mean().item() <= 0.1, (p_after.mean().item(), confirmed)
    assert clean_kl <= 0.05
    assert report["p_target_before"] == pytest.approx(p_before, abs=1e-3)
    assert report["p_target_after"] == pytest.approx(p_after.mean().item(), abs=1e-3)
    assert np.isfinite(report["clean_kl"]) and report["clean_kl"] == pytest.approx(clean_kl, abs=1e-3)
