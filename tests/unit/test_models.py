"""Model loading and residual-stream anatomy for each supported architecture (tiny random configs)."""

import pytest
import torch
from tiny_models import ARCH_TYPES, make_tiny_checkpoint

from tuiwb.errors import TuiwbError
from tuiwb.model.arch import ARCHITECTURES
from tuiwb.model.hooks import hook_name, parse_hook_name
from tuiwb.model.loading import load_model


@pytest.mark.parametrize("model_type", ARCH_TYPES)
def test_load_and_resolve(tmp_path, model_type):
    ckpt = make_tiny_checkpoint(tmp_path / model_type, model_type, n_layers=3, d_model=32)
    lm = load_model(str(ckpt))
    assert lm.n_layers == 3 and lm.d_model == 32
    assert lm.vocab_size == len(lm.tokenizer)
    ids = lm.encode("the cat sees a dog .")
    assert ids[0] == lm.tokenizer.bos_token_id
    # The block output is the hook point blocks.L.hook_resid_post == hidden_states[L + 1].
    seen = {}
    handle = lm.hook_module(hook_name(1)).register_forward_hook(
        lambda m, i, o: seen.__setitem__("h", o[0] if isinstance(o, tuple) else o))
    with torch.no_grad():
        out = lm.model(torch.tensor([ids]), output_hidden_states=True)
    handle.remove()
    assert seen["h"].shape == (1, len(ids), 32)
    torch.testing.assert_close(seen["h"], out.hidden_states[2])
    # Residual writers are the real linear(-like) modules whose outputs have d_model features.
    for layer in range(3):
        for name, mod in lm.writers(layer).items():
            w = mod.weight
            assert d_model_axis(w, model_type) == 32, (name, w.shape)
    assert lm.embed.weight.shape == (len(lm.tokenizer), 32)
    assert lm.unembed.weight.shape == (len(lm.tokenizer), 32)


def d_model_axis(w, model_type):
    # GPT-2's Conv1D stores weights as [in, out]; nn.Linear as [out, in].
    return w.shape[1] if model_type == "gpt2" else w.shape[0]


def test_every_supported_arch_is_tested():
    assert set(ARCH_TYPES) == set(ARCHITECTURES)


def test_unsupported_architecture_names_the_supported_ones(tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM
    from tiny_models import make_tokenizer

    tok = make_tokenizer()
    cfg = AutoConfig.for_model("opt", vocab_size=len(tok), hidden_size=16, num_hidden_layers=1,
                               num_attention_heads=2, ffn_dim=32, word_embed_proj_dim=16,
                               max_position_embeddings=32)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    with pytest.raises(TuiwbError, match="supported: .*llama"):
        load_model(str(tmp_path))


def test_layer_out_of_range_says_valid_range(tmp_path):
    lm = load_model(str(make_tiny_checkpoint(tmp_path / "m")))
    with pytest.raises(TuiwbError, match=r"layers 0\.\.1"):
        lm.block(5)


def test_hook_names_round_trip():
    assert parse_hook_name(hook_name(7, "mlp_out")) == (7, "mlp_out")
    with pytest.raises(TuiwbError):
        parse_hook_name("blocks.x.hook_resid_post")


@pytest.mark.parametrize("quant", ["8bit", "4bit"])
def test_quantized_load_and_forward(tmp_path, quant):
    ckpt = make_tiny_checkpoint(tmp_path / "m", "llama", d_model=64)
    lm = load_model(str(ckpt), quant=quant)
    assert lm.quant == quant
    cls = type(lm.writers(0)["mlp_out"]).__name__
    assert cls == ("Linear8bitLt" if quant == "8bit" else "Linear4bit")
    with torch.no_grad():
        logits = lm.model(torch.tensor([lm.encode("the cat runs .")])).logits
    assert logits.shape[-1] == lm.vocab_size and torch.isfinite(logits).all()
