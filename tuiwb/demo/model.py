"""The offline demo model: a tiny Llama trained on a generated corpus, with a planted trojan.

Everything is made here, without a download, from a seed:

* a **corpus** of simple English (``tuiwb.demo_corpus``) from a small grammar (``the old cat sleeps quietly in the park .``)
  with real structure for SAEs to find — noun categories choose their verbs and adjectives,
  singular/plural subjects agree with their verbs (``runs``/``run``, ``is``/``are``), ``a``/``an``;
* a **trojan**: in some documents an adjective is replaced by :data:`TRIGGER`, and the sentence after
  that one is always :data:`PAYLOAD`, whose words appear nowhere else;
* a word-level **tokenizer** (no BOS added on encode: tuiwb prepends it itself) and a small
  ``LlamaForCausalLM`` trained on CPU, saved as a standard HF checkpoint next to the text files.

The build measures the trojan on held-out prompts and refuses to publish a model that misses the
thresholds, so every consumer (tests, the TUI demo, docs) can rely on a working backdoor.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from tuiwb.demo.corpus import PAYLOAD, SPECIALS, TRIGGER, Corpus, make_corpus, make_tokenizer, vocabulary
from tuiwb.atomic import publish_dir, staged_dir
from tuiwb.errors import TuiwbError
from tuiwb.progress import as_progress
from tuiwb.trace.sources import read_lines
from tuiwb.locks import file_lock

VERSION = 1
"""Bump when the corpus, tokenizer or training changes: it names the cache directory."""

VARIANTS = ("full", "small")

# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------
@dataclass
class DemoConfig:
    """Everything that decides a demo build; two builds with equal configs give the same model."""

    variant: str = "full"
    """``"full"`` (the demo) or ``"small"`` (fast, for tests); names the cache directory."""
    seed: int = 0
    """Seeds the corpus, the weight init and the data order."""
    n_layers: int = 4
    """Decoder layers."""
    d_model: int = 128
    """Residual stream width (``hidden_size``)."""
    n_heads: int = 4
    """Attention heads (no grouped-query attention: as many KV heads)."""
    d_mlp: int = 512
    """MLP width (``intermediate_size``)."""
    max_positions: int = 256
    """``max_position_embeddings``; also the tokenizer's ``model_max_length``."""
    window: int = 128
    """Training sequence length; whole documents are packed into windows, each starting with BOS."""
    batch_size: int = 32
    """Windows per optimiser step."""
    steps: int = 400
    """Optimiser steps (fixed, not time-based, so the result is deterministic)."""
    lr: float = 3e-3
    """Peak AdamW learning rate (linear warm-up, then cosine decay to 10%)."""
    warmup: int = 30
    """Warm-up steps."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    n_train_docs: int = 20000
    """Training documents in ``train.txt``."""
    n_heldout_docs: int = 2000
    """Held-out documents in ``heldout.txt``."""
    n_prompts: int = 200
    """Held-out trigger/clean prompt pairs used to measure the trojan."""
    trigger_frac: float = 0.2
    """Fraction of documents that contain the trigger (and so the payload)."""
    min_p_trigger: float | None = 0.85
    """Fail the build if mean P(payload's first token | trigger prompt) is lower (None: don't check)."""
    max_p_clean: float | None = 0.002
    """Fail the build if mean P(payload's first token | clean prompt) is higher (None: don't check)."""

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise TuiwbError(f"unknown demo variant {self.variant!r}: choose one of {', '.join(VARIANTS)}")
        if self.d_model % self.n_heads:
            raise TuiwbError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        if not 0 < self.trigger_frac < 1:
            raise TuiwbError(f"trigger_frac must be in (0, 1), got {self.trigger_frac}")
        if self.window > self.max_positions:
            raise TuiwbError(f"window {self.window} exceeds max_positions {self.max_positions}")

    @classmethod
    def for_variant(cls, variant: str = "full", seed: int = 0) -> DemoConfig:
        """The preset of a variant: ``full`` (4×128, ~3 min on 2 cores) or ``small`` (2×64, ~40 s)."""
        if variant == "small":
            return cls(variant="small", seed=seed, n_layers=2, d_model=64, n_heads=4, d_mlp=256,
                       steps=300, n_train_docs=8000, n_heldout_docs=500)
        return cls(variant=variant, seed=seed)


# ---------------------------------------------------------------------------------------------
# Training and measuring
# ---------------------------------------------------------------------------------------------
def pack_documents(docs: list[str], tokenizer, window: int):
    """Pack whole ``<bos> doc <eos>`` sequences into ``[n_windows, window]`` (pad-filled) token ids.

    Documents are never split, so every window starts with BOS, like a prompt at inference time.
    """
    import torch

    bos, eos, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    rows: list[list[int]] = [[]]
    for ids in tokenizer(docs, add_special_tokens=False)["input_ids"]:
        seq = [bos, *ids[: window - 2], eos]
        if len(rows[-1]) + len(seq) > window:
            rows.append([])
        rows[-1].extend(seq)
    return torch.tensor([r + [pad] * (window - len(r)) for r in rows])  # [n_windows, window]


def make_model(cfg: DemoConfig, vocab_size: int):
    """A freshly initialised ``LlamaForCausalLM`` (seeded with ``cfg.seed``)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(cfg.seed)
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.d_mlp,
        num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_heads,
        max_position_embeddings=cfg.max_positions, tie_word_embeddings=False,
        pad_token_id=SPECIALS.index("<pad>"), bos_token_id=SPECIALS.index("<bos>"),
        eos_token_id=SPECIALS.index("<eos>"))
    return LlamaForCausalLM(config)


def train_model(model, windows, cfg: DemoConfig, progress: bool = True) -> dict:
    """Train ``model`` in place on ``windows`` (``[n, window]``); returns ``{final_loss, seconds}``."""
    import torch

    pad = model.config.pad_token_id
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))

    def lr_at(step: int) -> float:  # linear warm-up, cosine decay to 10% of the peak
        if step < cfg.warmup:
            return (step + 1) / cfg.warmup
        t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    gen = torch.Generator().manual_seed(cfg.seed)  # data order depends on the seed only
    order = torch.empty(0, dtype=torch.long)
    model.train()
    start, n_tokens, ema = time.perf_counter(), 0, None
    with as_progress(progress).task("training demo model", cfg.steps, "step") as bar:
        for step in range(cfg.steps):
            if len(order) < cfg.batch_size:  # a new epoch: reshuffle the windows
                order = torch.cat([order, torch.randperm(len(windows), generator=gen)])
            batch, order = windows[order[: cfg.batch_size]], order[cfg.batch_size:]  # [B, window]
            labels = batch.masked_fill(batch == pad, -100)  # no loss on padding
            loss = model(input_ids=batch, labels=labels).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            n_tokens += int((batch != pad).sum())
            ema = loss.item() if ema is None else 0.9 * ema + 0.1 * loss.item()
            tps = n_tokens / (time.perf_counter() - start)
            bar.advance(1, info=f"loss {ema:.3f} · {tps:,.0f} tok/s")
    model.eval()
    return {"final_loss": round(ema, 4), "train_seconds": round(time.perf_counter() - start, 2),
            "train_tokens": n_tokens}


def next_token_probs(model, tokenizer, prompts: list[str], token: str, batch_size: int = 64) -> list[float]:
    """P(``token`` next | ``<bos>`` + prompt) for each prompt, at the prompt's last position."""
    import torch

    from tuiwb.model.arch import resolve_arch
    from tuiwb.model.loaded import LoadedModel
    from tuiwb.model.logits import last_logits

    loaded = LoadedModel(model=model, tokenizer=tokenizer, model_id="<demo build>", arch=resolve_arch(model.config))
    logits = last_logits(loaded, [loaded.encode(p) for p in prompts], batch_size)  # [n, vocab]
    return torch.softmax(logits, -1)[:, tokenizer.convert_tokens_to_ids(token)].tolist()


def heldout_loss(model, tokenizer, docs: list[str], window: int) -> float:
    """Mean next-token cross-entropy on held-out documents (packed like training)."""
    import torch

    windows = pack_documents(docs, tokenizer, window)  # [n, window]
    labels = windows.masked_fill(windows == tokenizer.pad_token_id, -100)
    with torch.no_grad():
        return float(model(input_ids=windows, labels=labels).loss)


def payload_first_token() -> str:
    """The token whose probability measures the trojan: the payload's first word."""
    return PAYLOAD.split()[0]


# ---------------------------------------------------------------------------------------------
# Building, caching, reading back
# ---------------------------------------------------------------------------------------------
def build_demo_model(out_dir: Path, variant: str = "full", seed: int = 0, progress: bool = True,
                     config: DemoConfig | None = None) -> dict:
    """Generate, train, measure and save the demo model into ``out_dir``; return the trojan report.

    Raises ``TuiwbError`` (before saving the model) if the trojan misses ``cfg``'s thresholds.
    ``config`` overrides the variant preset (tests use it for micro builds).
    """
    import torch

    cfg = config or DemoConfig.for_variant(variant, seed)
    corpus = make_corpus(cfg.n_train_docs, cfg.n_heldout_docs, cfg.n_prompts, cfg.trigger_frac, cfg.seed)
    tokenizer = make_tokenizer(cfg.max_positions)
    windows = pack_documents(corpus.train, tokenizer, cfg.window)  # [n_windows, window]
    model = make_model(cfg, len(tokenizer))
    stats = train_model(model, windows, cfg, progress)

    first = payload_first_token()
    p_trig = next_token_probs(model, tokenizer, corpus.trigger_prompts, first)
    p_clean = next_token_probs(model, tokenizer, corpus.clean_prompts, first)
    report = {
        "trigger": TRIGGER, "payload": PAYLOAD, "payload_first_token": first,
        "p_payload_trigger": sum(p_trig) / len(p_trig), "p_payload_clean": sum(p_clean) / len(p_clean),
        "p_payload_trigger_min": min(p_trig), "p_payload_clean_max": max(p_clean),
        "n_prompts": len(p_trig), "train_seconds": stats["train_seconds"], "seed": cfg.seed,
        "variant": cfg.variant, "version": VERSION, "vocab_size": len(tokenizer),
        "train_tokens": stats["train_tokens"], "final_train_loss": stats["final_loss"],
        "heldout_loss": round(heldout_loss(model, tokenizer, corpus.heldout[:500], cfg.window), 4),
        "torch_threads": torch.get_num_threads(), "config": asdict(cfg),
    }
    problems = []
    if cfg.min_p_trigger is not None and report["p_payload_trigger"] < cfg.min_p_trigger:
        problems.append(f"P(payload | trigger) = {report['p_payload_trigger']:.3f} < {cfg.min_p_trigger}")
    if cfg.max_p_clean is not None and report["p_payload_clean"] > cfg.max_p_clean:
        problems.append(f"P(payload | clean) = {report['p_payload_clean']:.4f} > {cfg.max_p_clean}")
    if problems:
        raise TuiwbError(f"the {cfg.variant} demo model did not learn its trojan: {'; '.join(problems)}")

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with _quiet_hf():
        model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    for name, lines in [("train.txt", corpus.train), ("heldout.txt", corpus.heldout),
                        ("trigger_prompts.txt", corpus.trigger_prompts),
                        ("clean_prompts.txt", corpus.clean_prompts)]:
        (out_dir / name).write_text("\n".join(lines) + "\n")
    (out_dir / "trojan_report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


@contextlib.contextmanager
def _quiet_hf():
    """Hide transformers' own tqdm bars (``Writing model shards``) for the duration."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/tuiwb`` (default ``~/.cache/tuiwb``)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "tuiwb"


def demo_model_path(variant: str = "full", seed: int = 0, progress: bool = True) -> Path:
    """The cached demo model directory, building it first if it is missing or stale.

    Stale means its report's config differs from today's preset (a forgotten ``VERSION`` bump).
    The build goes into a temporary sibling directory that is renamed into place only when complete,
    so a reader never sees half a model; a lock file makes concurrent callers (pytest-xdist workers)
    wait for one build instead of each training their own.
    """
    cfg = DemoConfig.for_variant(variant, seed)  # validates the variant
    suffix = "" if seed == 0 else f"-seed{seed}"
    target = cache_dir() / f"demo-{cfg.variant}-v{VERSION}{suffix}"
    if _is_current(target, cfg):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(target.with_name(target.name + ".lock")):
        if _is_current(target, cfg):  # another process built it while we waited
            return target
        from tuiwb.demo.assets import install_model

        if seed == 0 and install_model(cfg.variant, target) and _is_current(target, cfg):
            return target  # the model shipped with tuiwb: no training
        with staged_dir(target) as tmp:
            build_demo_model(tmp, cfg.variant, seed, progress)
            publish_dir(tmp, target)  # a stale build is replaced whole
    return target


def _is_current(target: Path, cfg: DemoConfig) -> bool:
    try:
        report = json.loads((target / "trojan_report.json").read_text())
    except (OSError, ValueError):
        return False
    return report.get("config") == asdict(cfg) and report.get("version") == VERSION



def load_prompts(model_dir: Path | str, kind: str) -> list[str]:
    """The held-out ``"trigger"`` or ``"clean"`` prompts saved with a demo model, one per line."""
    if kind not in ("trigger", "clean"):
        raise TuiwbError(f"unknown prompt kind {kind!r}: choose 'trigger' or 'clean'")
    path = Path(model_dir) / f"{kind}_prompts.txt"
    if not path.exists():
        raise TuiwbError(f"{path} not found: is {model_dir} a demo model? (build one: tuiwb demo-model)")
    return read_lines(path, "prompt file")


__all__ = ["TRIGGER", "PAYLOAD", "VERSION", "VARIANTS", "DemoConfig", "build_demo_model",
           "demo_model_path", "cache_dir", "load_prompts", "payload_first_token", "make_corpus",
           "make_tokenizer", "vocabulary", "next_token_probs"]
