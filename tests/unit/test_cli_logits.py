"""`tuiwb logits` and the CLI's error contract (one line on stderr, exit 2, no traceback)."""

import json
import subprocess
import sys

import pytest
import torch
from tiny_models import make_tiny_checkpoint, make_tokenizer


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("gpt2"), "gpt2", n_layers=2, d_model=32)


def test_logits_json_matches_a_direct_forward(tiny_gpt2, cli):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    code, out, _ = cli("logits", "--model", tiny_gpt2, "--prompt", "the cat sees", "--top", "5", "--json")
    assert code == 0
    out = json.loads(out)  # exactly one JSON object
    assert out["prompt"] == "the cat sees"
    assert [set(t) for t in out["top"]] == [{"token", "id", "prob", "logit"}] * 5
    probs = [t["prob"] for t in out["top"]]
    assert probs == sorted(probs, reverse=True)

    tok = AutoTokenizer.from_pretrained(tiny_gpt2)
    model = AutoModelForCausalLM.from_pretrained(tiny_gpt2).eval()
    ids = [tok.bos_token_id] + tok("the cat sees", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        ref = torch.softmax(model(torch.tensor([ids])).logits[0, -1], -1)
    p, i = ref.topk(5)
    assert [t["id"] for t in out["top"]] == i.tolist()
    assert probs == pytest.approx(p.tolist(), abs=1e-6)
    assert out["top"][0]["token"] == tok.decode([i[0].item()])


def test_logits_table_output(tiny_gpt2, cli):
    code, out, _ = cli("logits", "--model", tiny_gpt2, "--prompt", "a dog", "--top", "3")
    assert code == 0 and "next token" in out


def test_missing_model_path(tmp_path, cli_error):
    assert "does not exist" in cli_error("logits", "--model", tmp_path / "nope", "--prompt", "x")


def test_directory_without_config(tmp_path, cli_error):
    assert "config.json" in cli_error("logits", "--model", tmp_path, "--prompt", "x")


def test_non_causal_lm_checkpoint(tmp_path, cli_error):
    from transformers import BertConfig, BertModel

    tok = make_tokenizer()
    BertModel(BertConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32)).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    line = cli_error("logits", "--model", tmp_path, "--prompt", "the cat")
    assert "bert" in line and "supported" in line


def test_prompt_longer_than_context(tiny_gpt2, cli_error):
    assert "context is 64" in cli_error("logits", "--model", tiny_gpt2, "--prompt", "the cat " * 40)


def test_console_script_error_has_no_traceback(tmp_path):
    r = subprocess.run([sys.executable, "-m", "tuiwb", "logits", "--model", str(tmp_path / "missing"),
                        "--prompt", "x"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_debug_flag_shows_the_traceback(tmp_path):
    r = subprocess.run([sys.executable, "-m", "tuiwb", "logits", "--debug", "--model", str(tmp_path / "m"),
                        "--prompt", "x"], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "Traceback" in r.stderr and "TuiwbError" in r.stderr
