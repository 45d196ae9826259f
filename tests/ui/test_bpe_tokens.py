"""Issue 18 item 13: the panes on a GPT-2-architecture model with a byte-level BPE tokenizer, trained
here on local text (the GPT-2 tokenizer is not available offline)."""

from __future__ import annotations

import pytest

from test_app import screen_text, settle

TEXT = ["hello world, the café costs 5 €.", "Return ACCEPTED values; the world is wide.",
        "hello there — a naïve résumé.", "the cat sees the dog near the park."] * 20


def bpe_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(TEXT, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>")


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    import torch
    from transformers import AutoModelForCausalLM

    from tiny_models import tiny_config

    torch.manual_seed(0)
    tok = bpe_tokenizer()
    out = tmp_path_factory.mktemp("gpt2-bpe")
    cfg = tiny_config("gpt2", len(tok), n_layers=2, d_model=32)
    cfg.bos_token_id = cfg.eos_token_id = tok.eos_token_id
    AutoModelForCausalLM.from_config(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_tokens_show_bytes_spaces_and_decode_as_text(gpt2_dir):
    from tuiwb.model.loading import load_model
    from tuiwb.session.adapter import TokenText

    loaded = load_model(str(gpt2_dir))
    tt = TokenText(loaded.tokenizer)
    assert tt.byte_level
    ids = loaded.tokenizer("hello world €", add_special_tokens=False)["input_ids"]
    shown = [tt.show(i) for i in ids]
    assert "␣world" in shown  # the leading space is visible
    euro = loaded.tokenizer.convert_tokens_to_ids(["â"])[0]  # 0xE2, the euro sign's first byte alone
    assert tt.show(euro) == "<0xE2>"
    assert "".join(tt.spans(ids)) == "hello world €"  # the context reads as text, not "he l lo"
    view = tt.context(ids, [0.0] * len(ids))
    assert len(view.spans) == len(ids) and view.tokens == tuple(shown)
    cut = tt.spans([euro])  # a window cut mid-character shows the byte, not �
    assert cut == ("<0xE2>",)


@pytest.mark.asyncio
async def test_the_workbench_on_a_bpe_model(gpt2_dir, tmp_path):
    from factories import make_sae
    from tuiwb.model.loading import load_model
    from tuiwb.session.adapter import TokenText, rows_from_stats
    from tuiwb.session.session import Session
    from tuiwb.tui import make_app
    from tuiwb.tui.widgets.contexts import Contexts
    from tuiwb.tui.widgets.logit_bars import LogitBars

    loaded = load_model(str(gpt2_dir))
    session = Session(loaded, {0: make_sae(0), 1: make_sae(1)})
    app = make_app(session, prompt="hello world, the café", layer=1, fixed_status=True, lora_dir=tmp_path)
    try:
        async with app.run_test(size=(160, 40)) as pilot:
            await settle(pilot)
            await pilot.press("3")
            bars = app.query_one(LogitBars)
            toks = [r.token for r in bars.view.base_top]
            text = screen_text(app)
            for t in toks:  # whole tokens, never cut to five cells
                assert t in text, t
            assert "\ufffd" not in text
            prompt = app.query_one(Contexts).detail.prompt
            assert "".join(prompt.spans).endswith("hello world, the café")
            body = str(app.query_one("#contexts-body").render())
            assert "hello world, the café" in body  # decoded, not "hello ␣world ,"
    finally:
        session.close()

    class Stats:  # the table's top tokens: quoted, spaces visible
        tok_ids = [[loaded.tokenizer.convert_tokens_to_ids("Ġworld"), loaded.tokenizer.convert_tokens_to_ids(",")]]
        vocab: dict = {}
        density = [0.1]
        max_act = [1.0]

    rows = rows_from_stats(0, Stats, TokenText(loaded.tokenizer).show)
    assert rows.top_tokens[0] == "'␣world', ','"
