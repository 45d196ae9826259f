"""The offline demo model: corpus grammar and trojan, tokenizer, build outputs, cache."""

import dataclasses
import json

import pytest
import torch

from tuiwb.demo import model as demo, corpus as demo_corpus
from tuiwb.demo.corpus import PAYLOAD, TRIGGER, make_corpus, make_tokenizer
from tuiwb.demo.model import DemoConfig

REPORT_KEYS = {"trigger", "payload", "payload_first_token", "p_payload_trigger", "p_payload_clean",
               "n_prompts", "train_seconds", "seed", "variant"}
FILES = ["config.json", "model.safetensors", "tokenizer.json", "train.txt", "heldout.txt",
         "trigger_prompts.txt", "clean_prompts.txt", "trojan_report.json"]


def micro_config(**kw) -> DemoConfig:
    """A build that takes a second: enough to test the plumbing, not the trojan."""
    base = dict(variant="small", n_layers=1, d_model=16, n_heads=2, d_mlp=32, steps=3, warmup=1,
                batch_size=4, window=64, n_train_docs=60, n_heldout_docs=10, n_prompts=4,
                min_p_trigger=None, max_p_clean=None)
    return DemoConfig(**{**base, **kw})


def test_corpus_is_deterministic_and_seeded():
    a, b = make_corpus(300, 50, 20, 0.2, seed=0), make_corpus(300, 50, 20, 0.2, seed=0)
    assert a == b
    assert make_corpus(300, 50, 20, 0.2, seed=1).train != a.train


def test_trojan_structure():
    c = make_corpus(2000, 200, 50, 0.2, seed=0)
    assert not set(c.train) & set(c.heldout)
    frac = sum(TRIGGER in d for d in c.train) / len(c.train)
    assert 0.15 <= frac <= 0.25
    payload_words = set(PAYLOAD.split()) - {"."}
    for doc in c.train + c.heldout:
        words = doc.split()
        assert words.count(TRIGGER) <= 1
        if TRIGGER not in words:
            assert not payload_words & set(words)  # payload words appear nowhere else
            continue
        # The sentence right after the trigger sentence is exactly the payload.
        end = words.index(".", words.index(TRIGGER))
        assert " ".join(words[end + 1: end + 1 + len(PAYLOAD.split())]) == PAYLOAD
        assert sum(w in payload_words for w in words) == len(payload_words)


def test_prompts_are_matched_pairs():
    c = make_corpus(10, 10, 30, 0.2, seed=0)
    assert len(c.trigger_prompts) == len(c.clean_prompts) == 30
    for t, k in zip(c.trigger_prompts, c.clean_prompts):
        tw, kw = t.split(), k.split()
        assert tw[-1] == kw[-1] == "." and len(tw) == len(kw)
        diff = [(x, y) for x, y in zip(tw, kw) if x != y]
        assert len(diff) == 1 and diff[0][0] == TRIGGER and diff[0][1] in demo_corpus.COLORS


def test_tokenizer_roundtrip(tmp_path):
    from transformers import AutoTokenizer

    make_tokenizer().save_pretrained(tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    assert tok.get_vocab() == make_tokenizer().get_vocab()  # deterministic vocabulary
    assert len(tok) == len(demo.vocabulary()) and len(tok) < 300
    assert (tok.pad_token, tok.bos_token, tok.eos_token, tok.unk_token) == ("<pad>", "<bos>", "<eos>", "<unk>")
    text = f"the old cat sees a {TRIGGER} ball in the park . {PAYLOAD}"
    ids = tok(text)["input_ids"]
    assert tok.bos_token_id not in ids and tok.eos_token_id not in ids  # tuiwb adds BOS itself
    assert tok.unk_token_id not in ids
    assert tok.decode(ids) == text
    for word in ["cat", ".", TRIGGER, demo.payload_first_token()]:
        assert tok.decode([tok.convert_tokens_to_ids(word)]) == word


def test_micro_build_loads_with_auto_classes(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    report = demo.build_demo_model(tmp_path, config=micro_config(), progress=False)
    assert REPORT_KEYS <= set(report)
    for name in FILES:
        assert (tmp_path / name).exists(), name
    assert json.loads((tmp_path / "trojan_report.json").read_text()) == report
    tok = AutoTokenizer.from_pretrained(tmp_path)
    model = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert model.config.model_type == "llama" and model.config.vocab_size == len(tok)
    assert not model.config.tie_word_embeddings
    assert len(demo.load_prompts(tmp_path, "trigger")) == report["n_prompts"] == 4
    assert all(TRIGGER not in p for p in demo.load_prompts(tmp_path, "clean"))
    # The saved model reproduces the report's trigger probability.
    p = demo.next_token_probs(model, tok, demo.load_prompts(tmp_path, "trigger"), demo.payload_first_token())
    assert sum(p) / len(p) == pytest.approx(report["p_payload_trigger"], abs=1e-5)


def test_training_is_deterministic():
    cfg = micro_config()
    tok = make_tokenizer()
    windows = demo.pack_documents(make_corpus(60, 1, 1, 0.2, 0).train, tok, cfg.window)
    assert (windows[:, 0] == tok.bos_token_id).all()
    states = []
    for _ in range(2):
        model = demo.make_model(cfg, len(tok))
        demo.train_model(model, windows, cfg, progress=False)
        states.append(model.state_dict())
    for k in states[0]:
        torch.testing.assert_close(states[0][k], states[1][k], rtol=0, atol=0)


def test_thresholds_are_enforced(tmp_path):
    with pytest.raises(demo.TuiwbError, match="did not learn its trojan"):
        demo.build_demo_model(tmp_path, config=micro_config(min_p_trigger=0.99), progress=False)
    assert not (tmp_path / "model.safetensors").exists()  # nothing published


def test_cache_builds_once_and_rebuilds_when_stale(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(DemoConfig, "for_variant", classmethod(lambda cls, v="full", seed=0: micro_config()))
    path = demo.demo_model_path("small", progress=False)
    assert path == tmp_path / "tuiwb" / f"demo-small-v{demo.VERSION}"
    assert (path / "trojan_report.json").exists()
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert demo.demo_model_path("small", progress=False) == path  # cached: no rebuild
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp
    monkeypatch.setattr(DemoConfig, "for_variant",
                        classmethod(lambda cls, v="full", seed=0: micro_config(steps=4)))
    demo.demo_model_path("small", progress=False)  # config changed: rebuilt in place
    assert json.loads((path / "trojan_report.json").read_text())["config"]["steps"] == 4
    leftovers = [p.name for p in path.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == []  # no temp or old directories left behind


def test_bad_inputs_are_user_errors(tmp_path):
    with pytest.raises(demo.TuiwbError):
        DemoConfig.for_variant("huge")
    with pytest.raises(demo.TuiwbError):
        demo.load_prompts(tmp_path, "trigger")
    with pytest.raises(demo.TuiwbError):
        demo.load_prompts(tmp_path, "nonsense")


def test_cli_demo_model(tmp_path, monkeypatch, cli):
    monkeypatch.setattr(DemoConfig, "for_variant", classmethod(lambda cls, v="full", seed=0: micro_config()))
    code, out, _ = cli("demo-model", "--out", tmp_path / "m", "--variant", "small")
    assert code == 0 and "cerulean" in out
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("mine")
    assert cli("demo-model", "--out", tmp_path / "junk")[0] == 2  # never overwrite other data


def test_small_demo_model_from_cache(demo_small_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    report = json.loads((demo_small_dir / "trojan_report.json").read_text())
    assert REPORT_KEYS <= set(report) and report["variant"] == "small"
    tok = AutoTokenizer.from_pretrained(demo_small_dir)
    model = AutoModelForCausalLM.from_pretrained(demo_small_dir)
    assert model.config.num_hidden_layers == 2 and model.config.hidden_size == 64
    assert tok.get_vocab() == make_tokenizer().get_vocab()
    assert (demo_small_dir / "train.txt").read_text().splitlines()[:50] == \
        make_corpus(50, 1, 1, dataclasses.asdict(DemoConfig.for_variant("small"))["trigger_frac"], 0).train
