"""Tiny random checkpoints made from configs: every architecture tuiwb supports, no download."""

from __future__ import annotations

from pathlib import Path

import torch

WORDS = ("the a cat dog sees runs red big small ball park in on . , and is was").split()


def make_tokenizer(words=WORDS):
    """A word-level fast tokenizer with <bos>/<eos>/<unk>/<pad>; no BOS added automatically."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["<pad>", "<bos>", "<eos>", "<unk>", *words])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>",
                                   unk_token="<unk>", pad_token="<pad>")


def tiny_config(model_type: str, vocab_size: int, n_layers: int = 2, d_model: int = 32):
    from transformers import AutoConfig

    common = dict(vocab_size=vocab_size, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if model_type == "gpt2":
        return AutoConfig.for_model("gpt2", n_embd=d_model, n_layer=n_layers, n_head=2, n_positions=64, **common)
    if model_type == "gpt_neox":
        return AutoConfig.for_model("gpt_neox", hidden_size=d_model, num_hidden_layers=n_layers,
                                    num_attention_heads=2, intermediate_size=4 * d_model,
                                    max_position_embeddings=64, **common)
    extra = {"head_dim": d_model // 2} if model_type in ("qwen3", "gemma2") else {}
    return AutoConfig.for_model(model_type, hidden_size=d_model, num_hidden_layers=n_layers,
                                num_attention_heads=2, num_key_value_heads=2, intermediate_size=2 * d_model,
                                max_position_embeddings=64, tie_word_embeddings=False, **extra, **common)


ARCH_TYPES = ("gpt2", "llama", "mistral", "qwen2", "qwen3", "gemma2", "gpt_neox")


def make_tiny_checkpoint(out: Path, model_type: str = "llama", n_layers: int = 2, d_model: int = 32,
                         seed: int = 0) -> Path:
    """Save a random tiny ``model_type`` causal LM + tokenizer to ``out`` and return it."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    tok = make_tokenizer()
    model = AutoModelForCausalLM.from_config(tiny_config(model_type, len(tok), n_layers, d_model))
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out
