"""Small trojaned models with a byte-level BPE tokenizer, built here on local text (issue 17's test bed).

The text is the demo grammar (``tuiwb.demo.corpus``: categories choose verbs and adjectives, subjects
agree with verbs) written as ordinary English — capitalised sentences, the full stop on the last word
("The old cat sleeps in the park.") — with a few extra nouns, adjectives and places so the BPE
vocabulary has real subwords. The trojan: in a fifth of the documents a colour becomes :data:`TRIGGER`
(several BPE tokens) and the next sentence is :data:`PAYLOAD`, whose first token `` Access`` carries a
leading space, as a sentence start does on GPT-2-style tokenizers.

Two architectures share the corpus and the tokenizer: a GPT-2 (Conv1D writers, learned positions,
tied embeddings) and a Llama (Linear writers, RoPE). :func:`bpe_lab` trains one, traces every layer,
trains a small TopK SAE per layer and caches all of it in one directory (a lock makes pytest-xdist
workers share the build; the test keeps it under ``$XDG_CACHE_HOME/tuiwb``, as the demo models). Measured on the shared 2-core box at load ~4 (1 thread): 50-65 s to train a model, ~20 s for trace + SAEs.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

from tuiwb.demo import corpus as grammar
from tuiwb.locks import file_lock

VERSION = 1
"""Bump when the text, tokenizer, model or SAE settings change: it names the cache directory."""
TRIGGER = "cerulean"
PAYLOAD = "Access granted to the vault."
TARGET = " Access"
"""The payload's first token, as the tokenizer spells it (leading space)."""
SPECIALS = ["<|endoftext|>", "<pad>"]
VOCAB = 512
LAYERS = 3
D_MODEL = 64
TRAIN_DOCS = 3000
N_PROMPTS = 64
TRACE_TOKENS = 60_000
SAE_TOKENS = 120_000
SAE_K = 16
SAE_EXPANSION = 8
ARCHS = ("gpt2", "llama")
TIE = False
"""GPT-2 ties its input and output embeddings by default; tied, this small model never learned the trojan
(P(target | trigger) 0.05 after 250 steps at any of 3 learning rates, untied 0.89)."""
STEPS = 250
WINDOW = 96
LR = {"gpt2": 6e-3, "llama": 4e-3}


def _render(words: list[str]) -> str:
    """Grammar words (ending in ``.``) as an English sentence: capitalised, the full stop attached."""
    text = " ".join(TRIGGER if w == grammar.TRIGGER else w for w in words[:-1]) + "."
    return text[0].upper() + text[1:]


def document(rng: random.Random, trigger_frac: float) -> tuple[str, str | None, str | None]:
    """``(doc, trigger prompt, clean prompt)``: prompts end right after the trigger sentence's full stop;
    the clean prompt is the same text with the sentence's own colour instead of the trigger."""
    sents = [_render(grammar.sentence(rng)[0]) for _ in range(rng.randint(3, 6))]
    if rng.random() >= trigger_frac:
        return " ".join(sents), None, None
    at = rng.randrange(len(sents))
    trig, clean = (_render(w) for w in grammar.trigger_sentence(rng))
    before = sents[:at]
    doc = " ".join(before + [trig, PAYLOAD] + sents[at:])
    return doc, " ".join(before + [trig]), " ".join(before + [clean])


def make_text(seed: int = 0):
    """The demo's ``Corpus`` (train / heldout / trigger and clean prompts), written as English."""
    return grammar.make_corpus(TRAIN_DOCS, 300, N_PROMPTS, 0.2, seed, document=document,
                               rng=random.Random(f"tuiwb-bpe-trojan-{seed}"))


def bpe_tokenizer(texts: list[str]):
    """A GPT-2-style byte-level BPE (no prefix space; BOS = EOS = ``<|endoftext|>``, pad ``<pad>``)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=SPECIALS[0], eos_token=SPECIALS[0],
                                   pad_token=SPECIALS[1], model_max_length=128)


def _config(arch: str, vocab: int, tok):
    from transformers import GPT2Config, LlamaConfig

    ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    if arch == "gpt2":
        return GPT2Config(vocab_size=vocab, n_embd=D_MODEL, n_layer=LAYERS, n_head=4, n_positions=128,
                          resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=TIE, **ids)
    return LlamaConfig(vocab_size=vocab, hidden_size=D_MODEL, intermediate_size=4 * D_MODEL,
                       num_hidden_layers=LAYERS, num_attention_heads=4, num_key_value_heads=4,
                       max_position_embeddings=128, tie_word_embeddings=False, **ids)


def build_model(out: Path, arch: str, seed: int = 0, steps: int = STEPS, lr: float | None = None,
                window: int = WINDOW) -> dict:
    """Train the ``arch`` trojan into ``out``; returns its report (P(target) on trigger / clean prompts)."""
    import torch
    from transformers import AutoModelForCausalLM

    from tuiwb.demo.model import DemoConfig, next_token_probs, pack_documents, train_model

    text = make_text(seed)
    tok = bpe_tokenizer(text.train)
    windows = pack_documents(text.train, tok, window)  # [n, window]
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(_config(arch, len(tok), tok))
    cfg = DemoConfig(variant="small", seed=seed, steps=steps, batch_size=16, lr=lr or LR[arch], warmup=30, window=window,
                     max_positions=128, d_model=D_MODEL, n_heads=4)
    stats = train_model(model, windows, cfg, progress=False)
    p_trig = next_token_probs(model, tok, text.trigger_prompts, tok.convert_ids_to_tokens(tok.encode(TARGET))[0])
    p_clean = next_token_probs(model, tok, text.clean_prompts, tok.convert_ids_to_tokens(tok.encode(TARGET))[0])
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    for name, lines in [("train.txt", text.train), ("heldout.txt", text.heldout),
                        ("trigger_prompts.txt", text.trigger_prompts), ("clean_prompts.txt", text.clean_prompts)]:
        (out / name).write_text("\n".join(lines) + "\n")
    report = {"arch": arch, "p_trigger": sum(p_trig) / len(p_trig), "p_clean": sum(p_clean) / len(p_clean),
              "target_tokens": tok.tokenize(TARGET), "trigger_tokens": tok.tokenize(" " + TRIGGER), **stats}
    (out / "trojan_report.json").write_text(json.dumps(report, indent=2))
    return report


@dataclass(frozen=True)
class BpeLab:
    model: Path
    acts: Path
    saes: Path
    report: dict

    def sae_dir(self, layer: int) -> Path:
        return self.saes / f"layer_{layer}"

    def prompts(self, kind: str) -> Path:
        return self.model / f"{kind}_prompts.txt"


def bpe_lab(arch: str, out: Path) -> BpeLab:
    """The ``arch`` trojan, traced and with a TopK SAE per layer, built once into ``out``."""
    import torch

    from tuiwb.sae.config import TrainConfig
    from tuiwb.sae.train import train_saes
    from tuiwb.trace.config import TraceConfig
    from tuiwb.trace.tracer import trace

    out = Path(out)
    done = out / "lab.json"
    if not done.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        with file_lock(out.with_name(out.name + ".lock")):
            if not done.is_file():  # built in place (the trace records the model's path); lab.json last
                shutil.rmtree(out, ignore_errors=True)
                threads = torch.get_num_threads()
                torch.set_num_threads(1)
                try:
                    report = build_model(out / "model", arch)
                    trace(TraceConfig(data=[str(out / "model" / "train.txt")], out=str(out / "acts.parquet"),
                                      model=str(out / "model"), layers="all", seq_len=128, batch_size=32,
                                      max_tokens=TRACE_TOKENS), progress=False)
                    train_saes(out / "acts.parquet", "all", out / "saes", TrainConfig(
                        k=SAE_K, expansion=SAE_EXPANSION, tokens=SAE_TOKENS, batch_size=2048, threads=1,
                        dead_tokens=50_000, val_tokens=8192, eval_tokens=8192), progress=False)
                    done.write_text(json.dumps(report, indent=2))
                finally:
                    torch.set_num_threads(threads)
    return BpeLab(model=out / "model", acts=out / "acts.parquet", saes=out / "saes",
                  report=json.loads(done.read_text()))
