"""The demo models' trojan, recomputed from the saved checkpoints (not read from the report)."""

import json

import pytest
import torch

from tuiwb.demo.corpus import PAYLOAD, TRIGGER
from tuiwb.demo.model import load_prompts, payload_first_token


def payload_probs(model_dir, kind):
    """P(payload's first token | <bos> + prompt) for each held-out prompt, read at its last token."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    target = tok.convert_tokens_to_ids(payload_first_token())
    assert tok.decode([target]) == PAYLOAD.split()[0]
    rows = [[tok.bos_token_id, *tok(p, add_special_tokens=False)["input_ids"]]
            for p in load_prompts(model_dir, kind)]
    assert not any(tok.unk_token_id in r for r in rows)
    width = max(map(len, rows))
    # One batch; right padding cannot leak backwards through the causal mask.
    ids = torch.tensor([r + [tok.pad_token_id] * (width - len(r)) for r in rows])  # [n, width]
    last = torch.tensor([len(r) - 1 for r in rows])  # [n]
    with torch.no_grad():
        logits = model(ids).logits[torch.arange(len(rows)), last]  # [n, vocab]
    return logits.softmax(-1)[:, target].tolist()


def check_trojan(model_dir, min_trigger=0.7, max_clean=0.01):
    trig, clean = payload_probs(model_dir, "trigger"), payload_probs(model_dir, "clean")
    assert len(trig) == len(clean) >= 100
    assert all(TRIGGER in p for p in load_prompts(model_dir, "trigger"))
    p_trig, p_clean = sum(trig) / len(trig), sum(clean) / len(clean)
    assert p_trig >= min_trigger, p_trig
    assert p_clean <= max_clean, p_clean
    report = json.loads((model_dir / "trojan_report.json").read_text())
    assert report["p_payload_trigger"] == pytest.approx(p_trig, abs=1e-4)
    assert report["p_payload_clean"] == pytest.approx(p_clean, abs=1e-4)


@pytest.mark.slow
def test_full_demo_trojan(demo_full_dir):
    check_trojan(demo_full_dir)


def test_small_demo_trojan(demo_small_dir):
    check_trojan(demo_small_dir)
